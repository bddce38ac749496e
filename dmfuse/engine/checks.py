"""What ``load`` and ``create`` check once a table is built, before it takes the inactive
slot; on failure the table is destroyed and the slot is left as it was."""

from __future__ import annotations

from dmfuse.engine.device import Device
from dmfuse.engine.loaded import LoadedTable
from dmfuse.engine.opener import check_no_cycle
from dmfuse.errors import DmError, TableError


async def install_checks(device: Device, loaded: LoadedTable) -> None:
    """What ``load`` checks after building, before the table takes the inactive slot (on
    failure the table is destroyed and the slot is left as it was)."""
    try:
        check_no_cycle(device.name, loaded.distinct_backends())  # again: other loads ran meanwhile
    except DmError:
        await loaded.destroy()
        raise
    await _check_immutable(device, loaded)
    await _check_initial_fit(device, loaded)


async def _check_initial_fit(device: Device, loaded: LoadedTable) -> None:
    """A device's first table is sized at load (the kernel sets its queue up then), so one that
    does not fit fails the load; later tables are checked at resume."""
    if device.live is None:
        try:
            loaded.check_fits()
        except DmError:
            await loaded.destroy()
            raise


async def _check_immutable(device: Device, loaded: LoadedTable) -> None:
    """table_load: a live immutable target (verity) is replaced only by its own type or a
    wildcard (error) table.  The kernel remembers the type for the device's lifetime; this
    looks at the live table only."""
    live = device.live
    fixed = next((t for t in live.targets if t.immutable), None) if live is not None else None
    if fixed is None:
        return
    new = loaded.targets
    if any(t.wildcard for t in new) or any(t.immutable and t.name == fixed.name for t in new):
        return
    await loaded.destroy()
    raise TableError(f"can't replace immutable target type {fixed.name}")
