"""dm-ioctl lifecycle rules as data.  PURE: no I/O, no trio.

A device's observable state is a :class:`DeviceState`.  :func:`check` answers, for a command and
a state, whether the kernel would refuse it (an error to raise) or what it would do
(:class:`Plan`).  The engine carries the plan out; tests cover the whole command × state matrix.

Invariants (dm-spec §2):
* ``load`` only fills the inactive slot; ``clear`` only empties it; neither touches I/O or size.
* ``resume`` with an inactive table swaps it in (suspending first if needed); without one it only
  un-suspends; with neither it is a successful no-op, unless the device is suspended with no
  table at all (EINVAL, stays suspended).  A staged table that does not fit its devices fails
  the resume after the suspend: the old table stays live and the device stays suspended, as in
  the kernel (``dmsetup resume`` again lets I/O through).
* ``suspend`` of a suspended device is a no-op.
* ``remove`` of an open device is EBUSY unless deferred, which marks it for removal at last close.
* ``message`` needs a live table and a sector inside it.
* names are 1..127 bytes without ``/`` and not ``.``, ``..`` or ``control``; uuids < 129 bytes.
"""

from __future__ import annotations

import enum

import attrs

from dmfuse.errors import DeviceBusy, DmError, InvalidArgument

DM_NAME_LEN = 128
DM_UUID_LEN = 129


@attrs.frozen
class DeviceState:
    has_live: bool = False
    has_inactive: bool = False
    suspended: bool = False
    open_count: int = 0
    has_uuid: bool = False


class Plan(enum.Enum):
    NOOP = "noop"
    SWAP = "swap"  # resume: suspend if needed, swap inactive in, resume
    UNSUSPEND = "unsuspend"  # resume: nothing staged, just let I/O through
    SUSPEND = "suspend"
    REMOVE = "remove"
    DEFER_REMOVE = "defer-remove"
    PROCEED = "proceed"


def check_name(name: str) -> None:
    if not name:
        raise InvalidArgument("device name must not be empty")
    if len(name.encode()) >= DM_NAME_LEN:
        raise InvalidArgument(f"device name too long (max {DM_NAME_LEN - 1} bytes)")
    if "/" in name or name in (".", "..", "control"):
        raise InvalidArgument(f"invalid device name {name!r}")


def check_uuid(uuid: str) -> None:
    if len(uuid.encode()) >= DM_UUID_LEN:
        raise InvalidArgument(f"uuid too long (max {DM_UUID_LEN - 1} bytes)")


def plan_resume(state: DeviceState) -> Plan:
    if state.has_inactive:
        return Plan.SWAP
    if state.suspended and not state.has_live:
        raise InvalidArgument("no table to resume")  # and the device stays suspended
    return Plan.UNSUSPEND if state.suspended else Plan.NOOP


def plan_suspend(state: DeviceState) -> Plan:
    return Plan.NOOP if state.suspended or not state.has_live else Plan.SUSPEND


def plan_remove(state: DeviceState, *, deferred: bool) -> Plan:
    if state.open_count > 0:
        if deferred:
            return Plan.DEFER_REMOVE
        raise DeviceBusy("Device or resource busy (device is open)")
    return Plan.REMOVE


def plan_set_uuid(state: DeviceState) -> Plan:
    if state.has_uuid:
        raise InvalidArgument("device already has a uuid")
    return Plan.PROCEED


def plan_message(state: DeviceState, target_index: int) -> Plan:
    if not state.has_live:
        raise InvalidArgument("no live table")
    if target_index < 0:
        raise InvalidArgument("Target message sector outside device")
    return Plan.PROCEED


__all__ = [
    "DeviceState",
    "DmError",
    "Plan",
    "check_name",
    "check_uuid",
    "plan_message",
    "plan_remove",
    "plan_resume",
    "plan_set_uuid",
    "plan_suspend",
]
