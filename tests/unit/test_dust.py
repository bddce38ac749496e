"""dust: constructor checks, messages with dm-dust.c's reply texts, and bad-block I/O."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from tests.conftest import pattern

MiB = 1 << 20


async def _dust(
    make_file: Callable[..., str], args: str = "0 4096", sectors: int = 2048
) -> tuple[Manager, str]:
    a = make_file("a", MiB)  # 2048 sectors: 256 blocks of 4096
    m = Manager()
    await m.create("d", f"0 {sectors} dust {a} {args}")
    return m, a


async def test_table_and_status_strings(make_file: Callable[..., str]) -> None:
    m, a = await _dust(make_file, "0 512")
    assert m.table("d")[0]["lines"] == [f"0 2048 dust {a} 0 512"]
    assert m.status("d")[0]["lines"] == [f"0 2048 dust {a} bypass verbose"]
    await m.message("d", 0, "enable")
    await m.message("d", 0, "quiet")
    assert m.status("d")[0]["lines"] == [f"0 2048 dust {a} fail_read_on_bad_block quiet"]
    await m.message("d", 0, "quiet")
    await m.message("d", 0, "disable")
    assert m.status("d")[0]["lines"] == [f"0 2048 dust {a} bypass verbose"]


async def test_message_replies(make_file: Callable[..., str]) -> None:
    m, _ = await _dust(make_file)

    async def msg(text: str) -> str | None:
        return await m.message("d", 0, text)

    assert await msg("countbadblocks") == "countbadblocks: 0 badblock(s) found"
    assert await msg("listbadblocks") == "No blocks in badblocklist"
    assert await msg("clearbadblocks") == "dust_clear_badblocks: no badblocks found"
    assert await msg("addbadblock 60") is None
    assert await msg("AddBadBlock 7 3") is None  # names are case-insensitive
    assert await msg("addbadblock 256") is None  # size / blksz itself passes (kernel's check)
    assert await msg("queryblock 60") == "dust_query_block: block 60 found in badblocklist"
    assert await msg("queryblock 61") == "dust_query_block: block 61 not found in badblocklist"
    assert await msg("countbadblocks") == "countbadblocks: 3 badblock(s) found"
    assert await msg("listbadblocks") == "7\n60\n256\n"
    assert await msg("removebadblock 60") is None
    assert await msg("listbadblocks") == "7\n256\n"
    assert await msg("clearbadblocks") == "dust_clear_badblocks: badblocks cleared"
    assert await msg("countbadblocks") == "countbadblocks: 0 badblock(s) found"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("addbadblock", "addbadblock requires an additional argument"),
        ("queryblock", "queryblock requires an additional argument"),
        ("removebadblock 5", "dust_remove_block: block 5 not found in badblocklist"),
        ("addbadblock 257", "selected block value out of range"),
        ("queryblock 99999", "selected block value out of range"),
        ("addbadblock 1 256", "selected write fail count out of range"),
        ("addbadblock x", "invalid block number 'x'"),
        ("addbadblock 1 x", "invalid write fail count 'x'"),
        ("removebadblock 1 2", "unrecognized message 'removebadblock' received"),
        ("frobnicate", "unrecognized message 'frobnicate' received"),
        ("frobnicate 1", "unrecognized message 'frobnicate' received"),
        ("addbadblock 1 2 3", "invalid number of arguments '4'"),
    ],
)
async def test_message_errors_are_einval(
    make_file: Callable[..., str], text: str, reason: str
) -> None:
    m, _ = await _dust(make_file)
    with pytest.raises(DmError) as exc:
        await m.message("d", 0, text)
    assert exc.value.errno == errno.EINVAL
    assert exc.value.message == reason
    assert await m.message("d", 0, "countbadblocks") == "countbadblocks: 0 badblock(s) found"


async def test_adding_a_listed_block_fails(make_file: Callable[..., str]) -> None:
    m, _ = await _dust(make_file)
    await m.message("d", 0, "addbadblock 3")
    with pytest.raises(DmError, match="dust_add_block: block 3 already in badblocklist"):
        await m.message("d", 0, "addbadblock 3 5")


async def test_bad_blocks_fail_reads_only_when_enabled(make_file: Callable[..., str]) -> None:
    m, _ = await _dust(make_file)
    dev = m.get("d")
    await m.message("d", 0, "addbadblock 2")
    assert bytes(await dev.read(2 * 4096, 4096)) == pattern(2 * 4096, 4096)  # bypass
    await m.message("d", 0, "enable")
    with pytest.raises(DmError) as exc:
        await dev.read(2 * 4096 + 100, 10)
    assert exc.value.errno == errno.EIO
    # a read spanning blocks 1..3 is split per block: the whole request fails
    with pytest.raises(DmError):
        await dev.read(4096, 3 * 4096)
    assert bytes(await dev.read(4096, 4096)) == pattern(4096, 4096)
    assert bytes(await dev.read(3 * 4096, 4096)) == pattern(3 * 4096, 4096)
    await m.message("d", 0, "disable")
    assert bytes(await dev.read(2 * 4096, 4096)) == pattern(2 * 4096, 4096)


async def test_write_clears_a_bad_block_after_its_fail_count(
    make_file: Callable[..., str],
) -> None:
    m, a = await _dust(make_file)
    dev = m.get("d")
    await m.message("d", 0, "addbadblock 5 2")
    await m.message("d", 0, "enable")
    for _ in range(2):
        with pytest.raises(DmError) as exc:
            await dev.write(5 * 4096, memoryview(b"\x11" * 4096))
        assert exc.value.errno == errno.EIO
    with open(a, "rb") as fh:
        fh.seek(5 * 4096)
        assert fh.read(4096) == pattern(5 * 4096, 4096)  # failed writes changed nothing
    with pytest.raises(DmError):
        await dev.read(5 * 4096, 4096)  # still bad
    await dev.write(5 * 4096, memoryview(b"\x22" * 4096))  # third write succeeds and clears
    assert await m.message("d", 0, "queryblock 5") == (
        "dust_query_block: block 5 not found in badblocklist"
    )
    assert bytes(await dev.read(5 * 4096, 4096)) == b"\x22" * 4096


async def test_write_while_disabled_leaves_the_list_alone(make_file: Callable[..., str]) -> None:
    m, _ = await _dust(make_file)
    await m.message("d", 0, "addbadblock 1")
    await m.get("d").write(4096, memoryview(b"x" * 4096))
    assert await m.message("d", 0, "countbadblocks") == "countbadblocks: 1 badblock(s) found"


async def test_blocks_count_from_the_start_of_the_device(make_file: Callable[..., str]) -> None:
    # offset 8 sectors = one 4096-byte block: target block 0 is device block 1 (dm-dust.c)
    m, _ = await _dust(make_file, "8 4096", sectors=1024)
    dev = m.get("d")
    await m.message("d", 0, "addbadblock 1")
    await m.message("d", 0, "enable")
    with pytest.raises(DmError):
        await dev.read(0, 512)
    assert bytes(await dev.read(4096, 512)) == pattern(8 * 512 + 4096, 512)


async def test_flush_and_discard_are_writes(make_file: Callable[..., str]) -> None:
    m, _ = await _dust(make_file)
    dev = m.get("d")
    await m.message("d", 0, "addbadblock 0 1")
    await m.message("d", 0, "addbadblock 4 1")
    await m.message("d", 0, "enable")
    with pytest.raises(DmError):
        await dev.flush()  # an empty flush bio maps to the target's first block
    await dev.flush()  # count used up: the flush clears block 0
    with pytest.raises(DmError):
        await dev.discard(4 * 4096, 4096)
    await dev.discard(4 * 4096, 4096)
    assert bytes(await dev.read(4 * 4096, 4096)) == bytes(4096)
    assert await m.message("d", 0, "listbadblocks") == "No blocks in badblocklist"
    await m.suspend("d")  # dmfuse's suspend-time sync is no flush bio: no bad-block check
    await m.resume("d")


async def test_write_zeroes_checks_every_block(make_file: Callable[..., str]) -> None:
    m, _ = await _dust(make_file)
    dev = m.get("d")
    await m.message("d", 0, "addbadblock 3")
    await m.message("d", 0, "enable")
    await dev.discard(0, 4 * 4096, zero_fill=True)
    assert await m.message("d", 0, "countbadblocks") == "countbadblocks: 0 badblock(s) found"
    assert bytes(await dev.read(0, 4 * 4096)) == bytes(4 * 4096)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{a} 0", "Invalid argument count"),
        ("{a} 0 512 1", "Invalid argument count"),
        ("{a} 0 x", "Invalid block size parameter"),
        ("{a} 0 0", "Invalid block size parameter"),
        ("{a} 0 256", "Block size must be at least 512"),
        ("{a} 0 1536", "Block size must be a power of 2"),
        ("{a} 0 2097152", "Block size is too large"),  # 4096 sectors > the 2048-sector target
        ("{a} x 512", "Invalid device offset sector"),
        ("/nonexistent 0 512", "Device lookup failed"),
    ],
)
async def test_bad_arguments(make_file: Callable[..., str], args: str, message: str) -> None:
    a = make_file("a", MiB)
    m = Manager()
    with pytest.raises(DmError, match=f"line 1: dust: {message}") as exc:
        await m.create("d", f"0 2048 dust {args.format(a=a)}")
    # a missing device is ENOENT, as the kernel's dm_get_device; everything else EINVAL
    assert exc.value.errno == (errno.ENOENT if "lookup failed" in message else errno.EINVAL)
    assert "d" not in m.devices
