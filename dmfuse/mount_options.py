"""``dmfuse mount -o``: the mount options dmfuse knows.  PURE.

``allow_other`` (FUSE's: other users may open the device files) and ``cache=writeback|none``
(the backing files' page cache policy, :mod:`dmfuse.backends.direct`).  Anything else is an
error naming the option, before anything is mounted.
"""

from __future__ import annotations

import attrs

from dmfuse.errors import InvalidArgument

CACHE_POLICIES = ("writeback", "none")
DEFAULT_CACHE = "writeback"


@attrs.frozen
class MountOptions:
    allow_other: bool = False
    cache: str = DEFAULT_CACHE


def check_cache_policy(policy: str, where: str) -> str:
    """``policy`` if it is one, else a one-line error saying ``where`` it was given."""
    if policy not in CACHE_POLICIES:
        raise InvalidArgument(f"{where} cache={policy}: unknown cache policy (writeback or none)")
    return policy


def parse_mount_options(text: str) -> MountOptions:
    """``allow_other,cache=none`` -> :class:`MountOptions`; unknown or bad options raise."""
    allow_other = False
    cache = DEFAULT_CACHE
    unknown = []
    for option in filter(None, text.split(",")):
        key, eq, value = option.partition("=")
        if option == "allow_other":
            allow_other = True
        elif key == "cache" and eq:
            cache = check_cache_policy(value, "mount option")
        else:
            unknown.append(option)
    if unknown:
        raise InvalidArgument(f"unknown mount option(s): {','.join(sorted(unknown))}")
    return MountOptions(allow_other=allow_other, cache=cache)
