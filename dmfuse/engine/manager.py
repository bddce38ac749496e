"""The dm-ioctl command set over a mount's devices.

Each public coroutine is one dmsetup command and either completes or raises a :class:`DmError`
having changed nothing (a failed ``create`` leaves no device, a failed ``load`` leaves the
inactive slot as it was, a failed ``resume`` leaves the old table live).  Results are plain data
(dicts, lists, strings) that :mod:`dmfuse.output` formats and ``--json`` prints as they are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from dmfuse import __version__, targets  # noqa: F401  (registers the targets)
from dmfuse.engine.checks import install_checks
from dmfuse.engine.device import Device
from dmfuse.engine.graph import top_down
from dmfuse.engine.loaded import LoadedTable
from dmfuse.engine.opener import BackendPool, TableOpener
from dmfuse.engine.reports import Reports
from dmfuse.errors import DeviceBusy, DmError, InvalidArgument, NoSuchDevice, TableError
from dmfuse.lifecycle import (
    Plan,
    check_name,
    check_uuid,
    plan_message,
    plan_remove,
    plan_set_uuid,
)
from dmfuse.mount_options import DEFAULT_CACHE, check_cache_policy
from dmfuse.stats_messages import message as stats_message
from dmfuse.table import SECTOR_SIZE, has_targets, parse_table, split_args
from dmfuse.target import Target, lookup

log = logging.getLogger(__name__)


class Listener(Protocol):
    """What the FUSE layer and the table directory want to hear about."""

    def device_added(self, device: Device) -> None: ...
    def device_removed(self, device: Device) -> None: ...
    def device_renamed(self, device: Device, old_name: str) -> None: ...
    def device_resized(self, device: Device) -> None: ...


class Store(Protocol):
    """Where live tables are written back (the table directory)."""

    def save(
        self,
        name: str,
        uuid: str,
        readonly: bool,
        lines: Sequence[str] | None,
        cache: str | None = None,
    ) -> None: ...
    def delete(self, name: str) -> None: ...


class NullListener:
    def device_added(self, device: Device) -> None: ...
    def device_removed(self, device: Device) -> None: ...
    def device_renamed(self, device: Device, old_name: str) -> None: ...
    def device_resized(self, device: Device) -> None: ...


class Manager(Reports):
    def __init__(
        self,
        *,
        mountpoint: str = "",
        store: Store | None = None,
        listener: Listener | None = None,
        cache: str = DEFAULT_CACHE,
    ) -> None:
        self.mountpoint = mountpoint
        self.cache = check_cache_policy(cache, "mount option")  # the mount's backing cache policy
        self.store = store
        self.listener: Listener = listener or NullListener()
        self.devices: dict[str, Device] = {}
        self.pool = BackendPool()
        # names and uuids of devices being created (not yet in ``devices``): a create, rename
        # or set_uuid racing one that is still building its table sees them as taken
        self._creating: set[str] = set()
        self._creating_uuids: set[str] = set()

    # -- lookup (get: in Reports) -------------------------------------------------------------
    def by_uuid(self, uuid: str) -> Device:
        for device in self.devices.values():
            if device.uuid == uuid:
                return device
        raise NoSuchDevice(f"uuid {uuid}: No such device or address")

    def _by_minor(self, minor: int) -> Device | None:
        return next((d for d in self.devices.values() if d.minor == minor), None)

    def _free_minor(self) -> int:
        used = {d.minor for d in self.devices.values()}
        return next(m for m in range(len(used) + 1) if m not in used)

    # -- building tables ---------------------------------------------------------------------
    async def build(
        self, owner: str, text: str, *, readonly: bool, cwd: str, cache: str | None = None
    ) -> LoadedTable:
        """Parse and construct a whole table; on any error release everything and raise."""
        lines = parse_table(text)
        opener = TableOpener(
            self.pool,
            owner=owner,
            readonly=readonly,
            cache=cache or self.cache,
            cwd=cwd,
            mountpoint=self.mountpoint,
            lookup=self.devices.get,
            by_minor=self._by_minor,
        )
        built: list[Target] = []
        try:
            for line in lines:
                cls = lookup(line.target_type)
                # dm_table_add_target: a singleton type must be alone in its table
                if built and built[0].singleton:
                    raise TableError(
                        f"line {line.lineno}: target type {built[0].name} must appear alone "
                        "in table"
                    )
                if built and cls.singleton:
                    raise TableError(
                        f"line {line.lineno}: {line.target_type}: singleton target type must "
                        "appear alone in table"
                    )
                try:
                    target = await cls.construct(opener, line.length * SECTOR_SIZE, line.args)
                except DmError as exc:
                    # keep the constructor's errno (the kernel returns the ctr's error code)
                    raise TableError(
                        f"line {line.lineno}: {line.target_type}: {exc}", exc.errno
                    ) from None
                target.begin = line.start * SECTOR_SIZE
                built.append(target)
            # dm_table_get_size: the device's size, for targets that look past their own line
            table_size = (lines[-1].start + lines[-1].length) * SECTOR_SIZE if lines else 0
            for target in built:
                target.table_size = table_size
        except BaseException:
            for target in built:
                await target.destroy()
            await opener.abandon()
            raise
        return LoadedTable(lines, built, opener.opened, readonly, self.pool.release)

    # -- commands ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _locked(self, name: str, which: str = "suspend") -> AsyncIterator[Device]:
        """The device ``name`` with its ``suspend_lock`` (or ``table_lock``) held; ENXIO if it
        was removed while this command waited for the lock."""
        device = self.get(name)
        lock = device.suspend_lock if which == "suspend" else device.table_lock
        async with lock:
            if device.removed:
                raise NoSuchDevice(f"{name}: No such device or address")
            yield device

    def _claim_name(self, name: str, uuid: str) -> None:
        """Refuse a name or uuid in use or being created, then reserve both until
        :meth:`_release_name` (checked and reserved without an ``await``: atomic)."""
        if name in self.devices or name in self._creating:
            raise DeviceBusy(f"{name}: device already exists")
        if uuid and (
            any(d.uuid == uuid for d in self.devices.values()) or uuid in self._creating_uuids
        ):
            raise DeviceBusy(f"uuid {uuid} already in use")
        self._creating.add(name)
        if uuid:
            self._creating_uuids.add(uuid)

    def _release_name(self, name: str, uuid: str) -> None:
        self._creating.discard(name)
        self._creating_uuids.discard(uuid)

    async def create(
        self,
        name: str,
        table: str | None,
        *,
        readonly: bool = False,
        uuid: str = "",
        cwd: str = "/",
        cache: str | None = None,
    ) -> dict[str, Any]:
        """``cache`` overrides the mount's backing cache policy for this device's tables."""
        check_name(name)
        check_uuid(uuid)
        if cache is not None:
            check_cache_policy(cache, "table header")
        self._claim_name(name, uuid)
        try:
            device = Device(name, uuid, self._free_minor())
            device.cache = cache
            device.on_resize = self.listener.device_resized
            if table is not None and has_targets(table):  # empty: no table, like dmsetup
                loaded = await self.build(
                    name, table, readonly=readonly, cwd=cwd, cache=self.cache_policy(device)
                )
                await install_checks(device, loaded)
                await device.load(loaded)
                try:
                    await device.resume()
                except BaseException:
                    await device.destroy()
                    raise
            self.devices[name] = device
        finally:
            self._release_name(name, uuid)
        self.listener.device_added(device)
        self._save(device)
        return self._info(device)

    async def load(self, name: str, table: str, *, readonly: bool = False, cwd: str = "/") -> None:
        async with self._locked(name, "table") as device:
            loaded = await self.build(
                device.name, table, readonly=readonly, cwd=cwd, cache=self.cache_policy(device)
            )
            if device.removed:  # removed while the table was built (remove takes no table_lock)
                await loaded.destroy()
                raise NoSuchDevice(f"{name}: No such device or address")
            await install_checks(device, loaded)
            await device.load(loaded)

    async def resume(self, name: str) -> None:
        async with self._locked(name) as device:
            swapping = device.inactive is not None
            await device.resume()
            if swapping:
                self._save(device)

    async def suspend(self, name: str, *, noflush: bool = False) -> None:
        # Under the device's own lock only: a suspend waiting long for in-flight I/O holds up
        # commands on this device (a resume waits for it, as in the kernel), nothing else.
        async with self._locked(name) as device:
            await device.suspend(noflush=noflush)

    async def clear(self, name: str) -> None:
        async with self._locked(name, "table") as device:
            await device.clear()

    async def remove(self, name: str, *, force: bool = False, deferred: bool = False) -> str:
        """Returns ``removed`` or ``deferred``."""
        async with self._locked(name) as device:
            if force and device.open_count and not deferred:
                await self._wipe(device)
            plan = plan_remove(device.state(), deferred=deferred)
            if plan is Plan.DEFER_REMOVE:
                device.deferred_remove = True
                return "deferred"
            await self._remove(device)
            return "removed"

    async def _wipe(self, device: Device) -> None:
        """``dmsetup wipe_table``: an error target over the whole size, resumed without flush."""
        size = device.size // SECTOR_SIZE
        if size:
            async with device.table_lock:
                await device.load(
                    await self.build(device.name, f"0 {size} error", readonly=False, cwd="/")
                )
        await device.suspend(noflush=True)
        await device.resume()
        self._save(device)

    async def _remove(self, device: Device) -> None:
        # A table stacked on this device holds it open (MappedBackend counts in open_count),
        # so plan_remove has already refused a device that is still in use.  Unlisting and
        # marking happen before the first await, so no new table can stack on it meanwhile.
        # The table file goes with the name, before the awaits of tearing the tables down:
        # whoever sees the name gone (readdir, ls) finds the table directory agreeing.
        del self.devices[device.name]
        device.removed = True
        self.listener.device_removed(device)
        if self.store is not None:
            self.store.delete(device.name)
        await device.destroy()

    async def closed(self, device: Device) -> None:
        """Last opener went away: carry out a deferred remove."""
        if not device.deferred_remove or device.open_count or device.removed:
            return
        async with device.suspend_lock:
            if (
                device.deferred_remove
                and device.open_count == 0
                and not device.removed
                and self.devices.get(device.name) is device
            ):
                await self._remove(device)

    async def rename(self, name: str, new_name: str) -> None:
        async with self._locked(name) as device:
            check_name(new_name)
            if new_name in self.devices or new_name in self._creating:
                raise DeviceBusy(f"{new_name}: device already exists")
            old_name = device.name
            del self.devices[old_name]
            device.name = new_name
            self.devices[new_name] = device
            if device.live is not None:
                device.raise_event()
            self.listener.device_renamed(device, old_name)
            if self.store is not None:
                self.store.delete(old_name)
            self._save(device)

    async def set_uuid(self, name: str, uuid: str) -> None:
        async with self._locked(name) as device:
            plan_set_uuid(device.state())
            check_uuid(uuid)
            if any(d.uuid == uuid for d in self.devices.values()) or uuid in self._creating_uuids:
                raise DeviceBusy(f"uuid {uuid} already in use")
            device.uuid = uuid
            if device.live is not None:
                device.raise_event()  # as rename: the kernel signals a uuid change too
            self._save(device)

    async def message(self, name: str, sector: int, text: str) -> str | None:
        argv = split_args(text)
        if not argv:
            self.get(name)
            raise InvalidArgument("empty message")
        if argv[0][:1] == "@" and argv[0].lower() != "@cancel_deferred_remove":
            # dm core's (message_for_md): a device with or without a table, no lock taken
            return stats_message(self.get(name).stats, argv, self.get(name).size // SECTOR_SIZE)
        async with self._locked(name) as device:
            if argv[0].lower() == "@cancel_deferred_remove":  # dm core's too
                if len(argv) != 1:
                    raise InvalidArgument("Invalid arguments for @cancel_deferred_remove")
                device.deferred_remove = False
                return None
            live = device.live
            index = live.layout.index_of_sector(sector) if live is not None else -1
            plan_message(device.state(), index)
            assert live is not None
            return await live.targets[index].message(argv)

    async def wait(self, name: str, event_nr: int) -> dict[str, Any]:
        device = self.get(name)
        await device.wait_event(event_nr)
        return self._info(device)

    # -- shutdown and persistence ------------------------------------------------------------
    async def shutdown(self) -> None:
        """Unmount: let in-flight I/O finish, flush every live table, close every backend."""
        for device in top_down(self.devices):
            try:
                if device.live is not None and not device.suspended:
                    await device.suspend()
            except Exception:
                log.exception("flushing %s at shutdown failed", device.name)
        for device in top_down(self.devices):
            await device.destroy()
        self.devices.clear()

    def _save(self, device: Device) -> None:
        if self.store is None:
            return
        lines = device.live.table_lines(showkeys=True) if device.live is not None else None
        self.store.save(device.name, device.uuid, device.readonly, lines, device.cache)
