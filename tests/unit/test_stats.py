"""dm-stats: the @stats_* messages (dmfuse.stats_messages) and the accounting (dmfuse.stats),
pure, then through the manager on a zero device."""

from __future__ import annotations

import errno
from time import monotonic_ns as now

import pytest

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from dmfuse.stats import READ, WRITE, Stats
from dmfuse.stats_messages import message


def send(stats: Stats, text: str, sectors: int = 8192) -> str | None:
    return message(stats, text.split(), sectors)


def errno_of(stats: Stats, text: str, sectors: int = 8192) -> int:
    with pytest.raises(DmError) as exc:
        send(stats, text, sectors)
    return exc.value.errno


def counts(line: str) -> list[str]:
    """A @stats_print line without its time columns."""
    words = line.split()
    return [w for i, w in enumerate(words) if i not in (4, 8, 10, 11, 12, 13)]


def test_create_list_and_lowest_free_id() -> None:
    s = Stats()
    assert send(s, "@stats_list") == ""
    assert send(s, "@stats_create - /1") == "0"
    assert send(s, "@stats_create 0+8192 /3 prog aux") == "1"
    assert send(s, "@stats_create 10+5 2 2 precise_timestamps histogram:5,10 p") == "2"
    assert send(s, "@Stats_List") == (
        "0: 0+8192 8192 - -\n"
        "1: 0+8192 2731 prog aux\n"
        "2: 10+5 2 p - precise_timestamps histogram:5,10\n"
    )
    assert send(s, "@stats_list prog") == "1: 0+8192 2731 prog aux\n"
    assert send(s, "@stats_delete 1") is None
    assert send(s, "@stats_create 1+1 1") == "1"
    assert send(s, "@stats_set_aux 1 x") is None
    assert send(s, "@stats_list")  # still listable
    assert "1: 1+1 1 - x\n" in (send(s, "@stats_list") or "")
    # the whole of a device without a table is one sector
    assert send(s, "@stats_create - /4", 0) == "3"
    assert "3: 0+1 1 - -" in (send(s, "@stats_list") or "")


@pytest.mark.parametrize(
    "text",
    [
        "@stats_create",
        "@stats_create -",
        "@stats_create - 0",
        "@stats_create 0+0 1",
        "@stats_create 5 1",
        "@stats_create 5+ 1",
        "@stats_create -1+5 1",
        "@stats_create 1+2x 1",
        "@stats_create - /0",
        "@stats_create - 1x",
        "@stats_create - 1 2 precise_timestamps",
        "@stats_create - 1 1 histogram:5,3",
        "@stats_create - 1 1 histogram:0",
        "@stats_create - 1 1 histogram:",
        "@stats_create - 1 1 bogus",
        "@stats_create - 1 2 histogram:1 histogram:2",
        "@stats_create - 1 p a extra",
        "@stats_create 18446744073709551615+1 1",
        "@stats_delete",
        "@stats_delete -1",
        "@stats_print 0 1",
        "@stats_print 0 x 1",
        "@stats_set_aux 0",
        "@stats_list a b",
        "@stats_bogus",
    ],
)
def test_bad_messages_are_einval_and_change_nothing(text: str) -> None:
    s = Stats()
    send(s, "@stats_create - /1")
    assert errno_of(s, text) == errno.EINVAL
    assert send(s, "@stats_list") == "0: 0+8192 8192 - -\n"


def test_missing_region_is_enoent() -> None:
    s = Stats()
    for text in ("@stats_delete 3", "@stats_clear 3", "@stats_print 3", "@stats_set_aux 3 a"):
        assert errno_of(s, text) == errno.ENOENT


def test_too_many_areas_is_enomem() -> None:
    assert errno_of(Stats(), "@stats_create 0+4194305 1") == errno.ENOMEM


def test_accounting_splits_requests_over_areas() -> None:
    s = Stats()
    send(s, "@stats_create 0+100 30 1 histogram:10000")
    # a read of sectors 25..65 touches areas 0 (5), 1 (30) and 2 (5)
    token = s.begin(READ, 25, 65, now())
    during = (send(s, "@stats_print 0") or "").splitlines()
    assert [counts(line)[-2] for line in during] == ["1", "1", "1", "0"]  # in progress
    s.end(token, now())
    s.end(s.begin(READ, 65, 66, now()), now())  # right after the previous read: merged
    s.end(s.begin(WRITE, 66, 67, now()), now())  # another direction: not merged
    s.end(s.begin(WRITE, 95, 200, now()), now())  # past the region's end: its part inside only
    lines = (send(s, "@stats_print 0") or "").splitlines()
    assert [counts(line) for line in lines] == [
        ["0+30", "1", "0", "5", "0", "0", "0", "0", "1:0"],
        ["30+30", "1", "0", "30", "0", "0", "0", "0", "1:0"],
        ["60+30", "2", "1", "6", "1", "0", "1", "0", "3:0"],  # histogram: 3 requests
        ["90+30", "0", "0", "0", "1", "0", "5", "0", "1:0"],
    ]


def test_busy_time_and_time_in_queue_as_dm_stat_round() -> None:
    s = Stats()
    send(s, "@stats_create - /1 1 precise_timestamps")  # times printed in ns as counted
    first = s.begin(READ, 0, 8, 1000)
    second = s.begin(WRITE, 8, 16, 1010)
    s.end(first, 1020)
    s.end(second, 1030)
    words = (send(s, "@stats_print 0") or "").split()
    # read ticks 20, write ticks 20, busy 1000..1030, queue 20 + 20, read busy 20, write 20
    assert [words[i] for i in (4, 8, 10, 11, 12, 13)] == ["20", "20", "30", "40", "20", "20"]


def test_print_ranges_and_print_clear() -> None:
    s = Stats()
    send(s, "@stats_create 0+40 10")
    for sector in (0, 10, 20, 30):
        s.end(s.begin(WRITE, sector, sector + 1, now()), now())
    assert [ln.split()[0] for ln in (send(s, "@stats_print 0 1 2") or "").splitlines()] == [
        "10+10",
        "20+10",
    ]
    assert (send(s, "@stats_print 0 - 1") or "").startswith("0+10 ")
    assert (send(s, "@stats_print 0 3 -") or "").startswith("30+10 ")
    assert send(s, "@stats_print 0 9 1") == ""
    send(s, "@stats_print_clear 0 1 2")
    writes = [ln.split()[5] for ln in (send(s, "@stats_print 0") or "").splitlines()]
    assert writes == ["1", "0", "0", "1"]
    assert send(s, "@stats_clear 0") == ""
    writes = [ln.split()[5] for ln in (send(s, "@stats_print 0") or "").splitlines()]
    assert writes == ["0", "0", "0", "0"]


def test_regions_created_or_deleted_mid_request() -> None:
    s = Stats()
    send(s, "@stats_create - /1")
    token = s.begin(READ, 0, 8, now())
    send(s, "@stats_create - /1")  # region 1 did not see the request begin
    send(s, "@stats_clear 0")  # clearing keeps the request in progress
    assert counts(send(s, "@stats_print 0") or "")[7] == "1"
    s.end(token, now())
    assert counts(send(s, "@stats_print 0") or "")[1:] == ["1", "0", "8", "0", "0", "0", "0"]
    assert counts(send(s, "@stats_print 1") or "")[1:] == ["0"] * 7
    token = s.begin(READ, 0, 8, now())
    send(s, "@stats_delete 0")
    s.end(token, now())  # into a deleted region: harmless
    assert counts(send(s, "@stats_print 1") or "")[1:3] == ["1", "0"]


async def test_manager_routes_stats_messages_and_counts_io() -> None:
    m = Manager()
    await m.create("z", "0 64 zero")
    await m.create("n", None)
    assert await m.message("z", 0, "@stats_create - /2") == "0"
    assert await m.message("n", 0, "@stats_create - /1") == "0"  # no table needed
    assert await m.message("n", 0, "@stats_list") == "0: 0+1 1 - -\n"
    dev = m.get("z")
    await dev.read(0, 4096)
    await dev.write(16384, memoryview(bytes(4096)))
    await dev.discard(20480, 4096)  # right after the write: merged (a discard writes)
    lines = (await m.message("z", 0, "@stats_print 0") or "").splitlines()
    assert [counts(line)[:7] for line in lines] == [
        ["0+32", "1", "0", "8", "0", "0", "0"],
        ["32+32", "0", "0", "0", "2", "1", "16"],
    ]
    io = m.info("z")[0]["io"]
    assert (io["reads"], io["read_sectors"], io["writes"], io["discards"]) == (1, 8, 1, 1)
    with pytest.raises(DmError) as exc:
        await m.message("z", 0, "@nothing")
    assert exc.value.errno == errno.EINVAL
    # the regions belong to the device: a table swap keeps them
    await m.load("z", "0 128 zero")
    await m.resume("z")
    assert await m.message("z", 0, "@stats_list") == "0: 0+64 32 - -\n"
    assert m.stats("z")[0]["regions"][0]["areas"][1]["writes"] == 2


def test_area_limits() -> None:
    s = Stats()
    assert send(s, "@stats_create 0+65536 1", 65536) == "0"  # the most areas a region has
    assert errno_of(s, "@stats_create 0+65537 1") == errno.ENOMEM
    for _ in range(3):
        send(s, "@stats_create 0+65536 1", 65536)
    assert errno_of(s, "@stats_create 0+1 1") == errno.ENOMEM  # 262,144 on the device
    assert send(s, "@stats_delete 0") is None
    assert send(s, "@stats_create 0+1 1") == "0"
