"""The target contract and registry.

A target is one table line's behaviour.  The class says what it is (``name``, ``version``) and
what it can take (``limits``); ``construct`` parses the argument vector and opens the devices it
sits on, raising :class:`TableError` naming the problem exactly like a kernel constructor setting
``ti->error``.  I/O methods get *target-relative* byte ranges that the dispatcher already checked
and split (never crossing the target's end or ``io_boundary``), so targets never re-validate.
A target that maps by the *device's* sector, as some kernel targets do (log-writes, snapshot),
adds ``begin``: where its table line starts, in bytes (the kernel's ``ti->begin``), and may
read ``table_size``: the whole table's size in bytes (the kernel's ``dm_table_get_size``).

``seek_data``/``seek_hole`` tell which bytes are known holes (read as zeros) for lseek(2)
SEEK_DATA/SEEK_HOLE on the device file, which the kernel's dm has no notion of.  The default is
"every byte is data", which is always safe: a false hole loses data in a sparse copy, a false
"data" only costs reading zeros.  Targets that know better (zero, linear, striped) override them
with a bounded amount of work per call.

A write that must be durable when it returns (the kernel's REQ_FUA: an ``O_DIRECT`` write
with ``RWF_DSYNC``/``O_DSYNC`` on the device file, or a FUA write from a device stacked on top)
arrives as ``write_fua`` instead of ``write``.  The default writes, then flushes every distinct
backend the target sits on; a target that knows where the data went passes the FUA down
instead (``Backend.write_fua``, as the kernel's targets keep REQ_FUA on the bio they remap),
and one that records writes (log-writes) records it as FUA.

``status`` is the kernel's STATUSTYPE_INFO string, ``table`` its STATUSTYPE_TABLE string (which
must feed back into ``load`` unchanged).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

import attrs
import trio

from dmfuse.backends.base import Backend, write_zero_buffers
from dmfuse.errors import InvalidArgument, IOFailure, NotSupported, TableError


@attrs.frozen
class Limits:
    """What the dispatcher needs to know to split and fan out requests to a target.

    ``io_boundary`` (bytes, 0 = none) is the kernel's ``max_io_len``.  ``flush_bios`` /
    ``discard_bios`` mirror ``num_flush_bios`` / ``num_discard_bios``: 0 means the target takes
    no flush (fsync skips it) or no discard (a discard touching it fails with EOPNOTSUPP).
    ``discard_zeroes``: after a discard the range reads as zeros (a punch-hole needs this).
    ``write_zeroes``: has an efficient write-zeroes; otherwise zero buffers are written.
    ``block_size`` (bytes): the unit the target reads and writes (crypt ``sector_size``, verity
    data blocks); the device does read-modify-write around it, so the target only ever sees
    offsets and lengths that are multiples of it.
    """

    io_boundary: int = 0
    flush_bios: int = 1
    discard_bios: int = 1
    discard_zeroes: bool = True
    write_zeroes: bool = True
    block_size: int = 1


class DeviceOpener(Protocol):
    """What a constructor uses to open the devices it names (refcounted per table)."""

    readonly: bool

    async def open(self, spec: str) -> Backend: ...


class Flushed:
    """The backends flushed by one fsync: each distinct backend is synced once.

    A target asking for a backend that another target of the same flush is already syncing
    waits for that sync to finish (and fails if it failed): a target that records the flush
    (log-writes) must not log it before its device is durable.  ``suspend`` is true for the
    flush dmfuse adds when suspending (the kernel sends no flush there): targets that record
    flushes sync their devices but record nothing.  ``datasync``: an ``fdatasync``.
    """

    __slots__ = ("_syncs", "datasync", "suspend")

    def __init__(self, suspend: bool = False, datasync: bool = False) -> None:
        self._syncs: dict[int, _Sync] = {}
        self.suspend = suspend
        self.datasync = datasync

    async def flush(self, backend: Backend) -> None:
        key = id(backend)
        sync = self._syncs.get(key)
        if sync is None:
            sync = self._syncs[key] = _Sync()
            try:
                await backend.flush(self.datasync)
            except BaseException as exc:
                sync.error = exc
                raise
            finally:
                sync.done.set()
            return
        await sync.done.wait()
        if sync.error is not None:
            raise sync.error


class _Sync:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None


class Target(abc.ABC):
    """Base class: one mapped segment.  ``length`` is in bytes.

    ``begin`` is where the table line starts in the device, in bytes (the kernel's
    ``ti->begin``); the table builder sets it after ``construct``, so it is 0 inside the
    constructor and for a target built by hand.  I/O offsets are ``begin``-relative; adding
    ``begin`` gives the device offset, which is what the kernel's ``bio->bi_iter.bi_sector``
    holds when a target's ``map`` sees it.  ``table_size`` is the size of the whole table the
    target is in, in bytes (the kernel's ``dm_table_get_size(ti->table)``): the table builder
    sets it once every line is built; until then (and for a target built by hand) it is
    ``length``.
    """

    name: ClassVar[str]
    version: ClassVar[tuple[int, int, int]]
    # dm target features: ``singleton`` (DM_TARGET_SINGLETON) must be alone in its table; a live
    # ``immutable`` target (DM_TARGET_IMMUTABLE) can only be replaced by a table with the same
    # immutable type or a ``wildcard`` one (DM_TARGET_WILDCARD: error)
    singleton: ClassVar[bool] = False
    immutable: ClassVar[bool] = False
    wildcard: ClassVar[bool] = False
    limits: Limits = Limits()

    begin: int = 0

    def __init__(self, length: int) -> None:
        self.length = length
        self.table_size = length
        self.on_event: Callable[[], None] = _no_event

    def device_offset(self, backend: Backend, offset: int, length: int) -> int:
        """``begin + offset``: where I/O lands on ``backend`` for a target that keeps the
        device's sector (the kernel targets whose ``map`` only calls ``bio_set_dev``).

        Resume checked only ``[0, length)`` of ``backend``, as the kernel's ``iterate_devices``
        of those targets asks, so I/O reaching past ``length`` is checked against the
        backend's size here, like the block layer's ``bio_check_eod``: EIO.
        """
        at = self.begin + offset
        if at + length > self.length:
            size = backend.size()
            if at + length > size:
                raise IOFailure(
                    f"{backend.display}: attempt to access beyond end of device: "
                    f"sector={at // 512}, nr_sectors = {length // 512} limit={size // 512}"
                )
        return at

    def raise_event(self) -> None:
        """A dm table event (snapshot invalidated, pool low on space...): bumps ``event_nr``.

        Before the table is live there is no device to tell, so the event is dropped, as the
        kernel does for a table that is not bound."""
        self.on_event()

    @classmethod
    @abc.abstractmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Target:
        """Parse ``args``, open devices, return the target (raise :class:`TableError`)."""

    async def read(self, offset: int, buf: memoryview) -> None:
        raise IOFailure(f"{self.name}: read not supported")

    async def write(self, offset: int, data: memoryview) -> None:
        raise IOFailure(f"{self.name}: write not supported")

    async def write_fua(self, offset: int, data: memoryview) -> None:
        """A FUA write: durable on return.  By default ``write``, then a flush of each distinct
        backend in ``devices()`` (the target's own ``flush`` is not called: it may do more than
        make data durable, e.g. log a FLUSH)."""
        await self.write(offset, data)
        for backend in {id(b): b for b in self.devices()}.values():
            await backend.flush()

    async def flush(self, flushed: Flushed) -> None:
        for backend in self.devices():
            await flushed.flush(backend)

    async def discard(self, offset: int, length: int) -> None:
        raise NotSupported(f"{self.name}: discard not supported")

    async def write_zeroes(self, offset: int, length: int) -> None:
        await write_zero_buffers(self.write, offset, length)

    async def seek_data(self, offset: int) -> int:
        """The first target-relative byte at or after ``offset`` (``< length``) that may be
        data; ``length`` if the rest of the target is known to be a hole."""
        return offset

    async def seek_hole(self, offset: int) -> int:
        """The first target-relative byte at or after ``offset`` (``< length``) known to be a
        hole (reads as zeros); ``length`` if there is none."""
        return self.length

    def remap(self) -> tuple[Backend, int] | None:
        """``(backend, base)`` when byte ``o`` of the target is byte ``base + o`` of
        ``backend``, holes included, and nothing else happens to it (linear): a seek then asks
        the backend directly, and a run of such lines over files in one go."""
        return None

    def data_sources(self) -> list[tuple[Backend, int]] | None:
        """Where the target's data may come from, for the device file's ``st_blocks``:
        ``(backend, bytes of it mapped)`` pairs when the target's holes are its backends'
        holes, ``[]`` when it holds no data at all, None (the default) when every byte is
        data whatever the backends hold."""
        return None

    def status(self) -> str:
        return ""

    def table(self, showkeys: bool = False) -> str:
        return ""

    async def message(self, argv: Sequence[str]) -> str | None:
        raise InvalidArgument(f"{self.name}: target does not accept messages")

    def devices(self) -> list[Backend]:
        """Everything this target sits on (``deps``, flush fan-out, resume size checks)."""
        return []

    def check_fits(self) -> None:
        """Resume-time check that every mapped area lies inside its device (``TableError``)."""

    async def presuspend(self) -> None:
        """Before I/O is blocked: release anything held (delay), stop background work."""

    async def postsuspend(self) -> None:
        """After in-flight I/O drained: commit metadata."""

    async def preresume(self) -> None:
        """May veto a resume by raising (e.g. crypt without a key)."""

    async def resume(self) -> None:
        """After the table went live."""

    async def destroy(self) -> None:
        """Release target-private resources (devices are released by the table)."""


def check_area(backend: Backend, offset: int, length: int) -> None:
    """The kernel's ``device_area_is_invalid`` for one mapped area (all bytes): inside the
    device, and aligned to its logical block size (a stacked device's can be 4096)."""
    size = backend.size()
    if offset + length > size:
        raise TableError(
            f"{backend.display} too small for target: start={offset // 512}, "
            f"len={length // 512}, dev_size={size // 512}"
        )
    block = backend.block_size()
    if block > 512:
        if offset % block:
            raise TableError(
                f"start={offset // 512} not aligned to h/w logical block size {block} "
                f"of {backend.display}"
            )
        if length % block:
            raise TableError(
                f"len={length // 512} not aligned to h/w logical block size {block} "
                f"of {backend.display}"
            )


def _no_event() -> None:
    pass


_REGISTRY: dict[str, type[Target]] = {}


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: make a target known by its name (``dmsetup targets`` lists it)."""
    _REGISTRY[cls.name] = cls
    return cls


def lookup(name: str) -> type[Target]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TableError(f"unknown target type {name!r}") from None


def registered() -> list[type[Target]]:
    return sorted(_REGISTRY.values(), key=lambda cls: cls.name)
