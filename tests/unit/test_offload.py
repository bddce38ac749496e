"""dmfuse.openssl.offload: when a big request goes to the worker thread."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from dmfuse.fuse import waiting_requests_probe
from dmfuse.openssl import offload
from dmfuse.openssl.loops import UnitCipher
from dmfuse.openssl.offload import MIN_BYTES, Overlap


async def test_without_a_probe_a_big_request_yields_to_see_others_arrive() -> None:
    overlap = Overlap()
    assert not await overlap.use_worker(MIN_BYTES)  # alone
    assert not await overlap.use_worker(MIN_BYTES - 512)  # small: never
    decided: list[bool] = []
    cipher = UnitCipher("AES-128-ECB", bytes(16))
    data = bytes(MIN_BYTES)

    async def request() -> None:
        use = await overlap.use_worker(MIN_BYTES)
        decided.append(use)
        if use:  # at the worker: later big requests see it there
            await overlap.wait(cipher.start(data, bytearray(MIN_BYTES), b"", 512, True))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        nursery.start_soon(request)
    assert decided == [True, True]


async def test_a_probe_for_waiting_requests_decides_without_yielding() -> None:
    overlap = Overlap()
    waiting = [True]
    offload.watch_waiting_requests(lambda: waiting[0])
    try:
        with trio.testing.assert_no_checkpoints():
            assert await overlap.use_worker(MIN_BYTES)
            waiting[0] = False
            assert not await overlap.use_worker(MIN_BYTES)
            waiting[0] = True
            assert not await overlap.use_worker(MIN_BYTES - 512)
    finally:
        offload.watch_waiting_requests(None)


def test_the_fuse_probe_polls_the_one_open_dev_fuse() -> None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        pytest.skip(f"/dev/fuse: {exc}")
    try:
        probe = waiting_requests_probe()
        assert probe is not None
        assert probe() is False  # not mounted: nothing to receive
        second = os.open("/dev/fuse", os.O_RDWR)
        try:
            assert waiting_requests_probe() is None  # which one is the session's? unknown
        finally:
            os.close(second)
    finally:
        os.close(fd)
