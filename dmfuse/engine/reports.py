"""The manager's reports: ``info``, ``table``, ``status``, ``deps``, ``ls``, ``targets``,
``version`` as plain data (dicts, lists, strings) that :mod:`dmfuse.output` formats and
``--json`` prints as they are.  Reading only: nothing here awaits or changes a device.
"""

from __future__ import annotations

from typing import Any

from dmfuse import __version__
from dmfuse.backends.mapped import MAPPED_MAJOR
from dmfuse.engine.device import DISCARDS, READS, WRITES, Device
from dmfuse.errors import NoSuchDevice
from dmfuse.target import registered

DRIVER_VERSION = "4.48.0"
READ_AHEAD = 256


class Reports:
    """Mixed into :class:`dmfuse.engine.manager.Manager`, which owns ``devices``."""

    devices: dict[str, Device]
    cache: str  # the mount's backing cache policy

    def get(self, name: str) -> Device:
        device = self.devices.get(name)
        if device is None:
            raise NoSuchDevice(f"{name}: No such device or address")
        return device

    def cache_policy(self, device: Device) -> str:
        """The device's own policy (its table file's header) or else the mount's."""
        return device.cache or self.cache

    def _info(self, device: Device, *, inactive: bool = False) -> dict[str, Any]:
        table = device.inactive if inactive else device.live
        return {
            "name": device.name,
            "uuid": device.uuid,
            "major": MAPPED_MAJOR,
            "minor": device.minor,
            "suspended": device.suspended,
            "readonly": device.readonly,
            "deferred_remove": device.deferred_remove,
            "live": device.live is not None,
            "inactive": device.inactive is not None,
            "open_count": device.open_count,
            "inflight": device.inflight,  # admitted requests not done yet (held ones too)
            "event_nr": device.event_nr,
            "read_ahead": READ_AHEAD,
            "has_disk": device.ever_loaded,
            "targets": len(table.targets) if table is not None else None,
            "size": device.size,
            "logical_block_size": device.logical_block_size,
            "cache": self.cache_policy(device),
            "io": _io_totals(device),
        }

    def _selected(self, name: str | None) -> list[Device]:
        if name is not None:
            return [self.get(name)]
        return sorted(self.devices.values(), key=lambda d: d.name)  # as dmsetup lists them

    def info(self, name: str | None = None) -> list[dict[str, Any]]:
        return [self._info(d) for d in self._selected(name)]

    def stats(self, name: str | None = None) -> list[dict[str, Any]]:
        """``dmfuse stats``: every dm-stats region of the devices, area by area."""
        return [
            {"name": d.name, "regions": d.stats.summary(), "io": _io_totals(d)}
            for d in self._selected(name)
        ]

    def table(
        self,
        name: str | None = None,
        *,
        inactive: bool = False,
        showkeys: bool = False,
        target: str | None = None,
    ) -> list[dict[str, Any]]:
        out = []
        for device in self._selected(name):
            loaded = device.inactive if inactive else device.live
            lines = loaded.table_lines(showkeys) if loaded is not None else []
            out.append({"name": device.name, "lines": _only(lines, target)})
        return out

    def status(
        self, name: str | None = None, *, inactive: bool = False, target: str | None = None
    ) -> list[dict[str, Any]]:
        out = []
        for device in self._selected(name):
            loaded = device.inactive if inactive else device.live
            lines = loaded.status_lines() if loaded is not None else []
            out.append({"name": device.name, "lines": _only(lines, target)})
        return out

    def deps(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for device in self._selected(name):
            found: dict[str, Any] = {}
            if device.live is not None:
                for backend in device.live.distinct_backends():
                    found.setdefault(
                        backend.display, {"name": backend.display, "devno": backend.devno}
                    )
            out.append({"name": device.name, "deps": list(found.values())})
        return out

    def ls(self, target: str | None = None) -> list[dict[str, Any]]:
        return [
            {"name": d.name, "major": MAPPED_MAJOR, "minor": d.minor}
            for d in sorted(self.devices.values(), key=lambda d: d.name)
            if target is None
            or (d.live is not None and any(ln.target_type == target for ln in d.live.lines))
        ]

    @staticmethod
    def targets() -> list[dict[str, Any]]:
        return [{"name": cls.name, "version": list(cls.version)} for cls in registered()]

    @staticmethod
    def version() -> dict[str, str]:
        return {"library": f"dmfuse {__version__}", "driver": DRIVER_VERSION}


def _io_totals(device: Device) -> dict[str, int]:
    """The device's totals, as /sys/block/dm-N/stat counts them (no times: see dmfuse.stats)."""
    t = device.totals
    out: dict[str, int] = {}
    for kind, base in (("read", READS), ("write", WRITES), ("discard", DISCARDS)):
        out[kind + "s"] = t[base]
        out[kind + "_bytes"] = t[base + 1]
        out[kind + "_sectors"] = t[base + 1] // 512
    out["in_flight"] = device.inflight
    return out


def _only(lines: list[str], target: str | None) -> list[str]:
    if target is None:
        return lines
    return [ln for ln in lines if ln.split(" ", 3)[2] == target]
