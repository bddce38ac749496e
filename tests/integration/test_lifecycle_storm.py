"""Lifecycle commands from several clients at once, racing readers and fio, on a real mount.

Two suspends issued together used to install two gates: the resume opened only the second, and
readers held by the first waited forever while ``info`` said ACTIVE (seen on snapshot-merge,
whose presuspend yields while it stops the merge).  Suspend/resume of a device are serialised
now, as the kernel does under ``md->suspend_lock``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dmfuse.control.client import request
from dmfuse.control.protocol import socket_path
from dmfuse.errors import DmError
from tests.integration.harness import Mount

MiB = 1 << 20
SECTORS = 32 * MiB // 512


def _fio_verify(loop: str, size: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "fio", "--name=v", f"--filename={loop}", "--direct=1", "--ioengine=libaio",
            "--iodepth=8", "--rw=randwrite", "--bs=4k", f"--size={size}", "--verify=crc32c",
            "--verify_fatal=1", "--do_verify=1", "--output-format=json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_suspend_resume_storms_from_several_clients_strand_nothing(mnt: Mount) -> None:
    mnt.image("a.img", SECTORS * 512)
    mnt.image("b.img", SECTORS * 512)
    mnt.image("o.img", SECTORS * 512, data=os.urandom(MiB))
    mnt.image("cow.img", 48 * MiB)
    mnt.table("lin", f"0 {SECTORS} linear a.img 0")
    mnt.table("dly", f"0 {SECTORS} delay b.img 0 1")
    mnt.table("base-real", f"0 {SECTORS} linear o.img 0")
    mnt.table("snap", f"0 {SECTORS} snapshot /dev/mapper/base-real cow.img P 8")
    mnt.mount()
    with open(mnt.dev("snap"), "r+b", buffering=0) as fh:  # chunks for the merge to copy
        for i in range(0, SECTORS * 512, MiB):  # every chunk: a merge of seconds
            os.pwrite(fh.fileno(), os.urandom(MiB), i)
        os.fsync(fh.fileno())
    mnt.cli("suspend", "snap")
    mnt.cli("create", "mrg", "--notable")
    mnt.cli("load", "mrg", "--table", f"0 {SECTORS} snapshot-merge /dev/mapper/base-real "
            f"{mnt.tables}/cow.img P 8")  # fmt: skip
    mnt.cli("remove", "snap")
    mnt.cli("resume", "mrg")  # the merge runs in the background during the storm
    loops = {name: mnt.losetup(name, "--direct-io=on") for name in ("lin", "dly")}
    fios = [_fio_verify(loops["lin"], "16M"), _fio_verify(loops["dly"], "4M")]

    sock = socket_path(str(mnt.mnt))
    stop = threading.Event()
    reads = {name: 0 for name in ("lin", "dly", "mrg")}
    reader_errors: list[str] = []
    command_errors: list[str] = []

    def reader(name: str) -> None:
        fd = os.open(mnt.dev(name), os.O_RDONLY)
        try:
            while not stop.is_set():
                os.pread(fd, 4096, (reads[name] * 4096) % (SECTORS * 512))
                reads[name] += 1
        except OSError as exc:
            reader_errors.append(f"{name}: {exc}")
        finally:
            os.close(fd)

    def client(name: str, rounds: int) -> None:
        for _ in range(rounds):
            for command in ("suspend", "resume"):
                try:
                    request(sock, command, {"name": name, "noflush": False})
                except DmError as exc:
                    command_errors.append(f"{command} {name}: {exc}")

    readers = [
        threading.Thread(target=reader, args=(n,), daemon=True) for n in reads for _ in range(2)
    ]
    clients = [
        threading.Thread(target=client, args=(n, 15), daemon=True) for n in reads for _ in range(3)
    ]
    for thread in readers + clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in clients), "a suspend or resume never returned"
    for name in reads:  # the last command of the storm: every device is live again
        request(sock, "resume", {"name": name})
    before = dict(reads)
    stop.set()
    for thread in readers:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in readers), f"readers stranded: {before} -> {reads}"
    assert reader_errors == [] and command_errors == []
    for proc in fios:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out + err
        assert json.loads(out)["jobs"][0]["error"] == 0
    info = json.loads(mnt.cli("--json", "info").stdout)
    assert not any(d["suspended"] for d in info), info
    for loop in loops.values():
        mnt.detach(loop)
    assert Path(mnt.dev("mrg")).stat().st_size == SECTORS * 512


def test_resume_during_a_draining_suspend_waits_for_it(mnt: Mount) -> None:
    """I/O held below: ``suspend top`` waits for it to drain; a ``load`` + ``resume top``
    issued meanwhile used to swap tables under the in-flight request, and the pending suspend
    then reported success on an ACTIVE device.  Now the load goes ahead (it only fills the
    inactive slot, as in the kernel) and the resume waits for the suspend."""
    mnt.image("old.img", MiB, data=b"o" * 4096)
    mnt.image("new.img", MiB, data=b"n" * 4096)
    mnt.table("low", "0 2048 linear old.img 0")
    mnt.table("top", "0 2048 linear /dev/mapper/low 0")
    mnt.mount()
    sock = socket_path(str(mnt.mnt))
    events: list[str] = []
    got: list[bytes] = []

    def read_top() -> None:
        with open(mnt.dev("top"), "rb", buffering=0) as fh:
            got.append(os.pread(fh.fileno(), 4096, 0))
        events.append("read")

    def suspend_top() -> None:
        request(sock, "suspend", {"name": "top"})
        events.append("suspend")

    def reload_top() -> None:
        request(sock, "load", {"name": "top", "table": f"0 2048 linear {mnt.tables}/new.img 0"})
        events.append("load")
        request(sock, "resume", {"name": "top"})
        events.append("resume")

    request(sock, "suspend", {"name": "low"})
    threads = [threading.Thread(target=fn, daemon=True) for fn in (read_top, suspend_top)]
    threads[0].start()
    _wait_until(lambda: _info(sock, "top")["inflight"] == 1)  # held on low's gate
    threads[1].start()
    _wait_until(lambda: _info(sock, "top")["suspended"])  # gate installed, draining
    reloader = threading.Thread(target=reload_top, daemon=True)
    reloader.start()
    _wait_until(lambda: "load" in events)
    assert events == ["load"]  # the resume waits for the draining suspend; the read is held
    assert request(sock, "table", {"name": "top"})[0]["lines"] == [
        "0 2048 linear /dev/mapper/low 0"
    ]
    request(sock, "resume", {"name": "low"})
    for thread in [*threads, reloader]:
        thread.join(timeout=30)
    assert sorted(events) == ["load", "read", "resume", "suspend"]
    assert got == [b"o" * 4096]  # read through the old table, not swapped under it
    with open(mnt.dev("top"), "rb") as fh:
        assert fh.read(4096) == b"n" * 4096  # and then the new one is live
    assert not request(sock, "info", {"name": "top"})[0]["suspended"]


def _info(sock: str, name: str) -> dict[str, Any]:
    info: dict[str, Any] = request(sock, "info", {"name": name})[0]
    return info


def _wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)
