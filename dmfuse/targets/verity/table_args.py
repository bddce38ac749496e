"""The verity table's arguments: numbers, block sizes and hex strings as the kernel reads them,
the devices, and the optional parameters (error and corruption modes, ignored FEC/signature)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from dmfuse.args import ArgReader
from dmfuse.backends.base import Backend
from dmfuse.errors import TableError
from dmfuse.target import DeviceOpener

OPTS_MAX = 15  # DM_VERITY_OPTS_MAX = 5 + FEC (8) + signature (2)
INT_MAX = 2**31 - 1
_HEX = re.compile(r"[0-9a-fA-F]*\Z")

MODE_EIO, MODE_LOGGING, MODE_RESTART, MODE_PANIC = "eio", "logging", "restart", "panic"
_MODES = {
    "ignore_corruption": MODE_LOGGING,
    "restart_on_corruption": MODE_RESTART,
    "panic_on_corruption": MODE_PANIC,
}
_ERROR_MODES = {"restart_on_error": MODE_RESTART, "panic_on_error": MODE_PANIC}
MODE_NAMES = {v: k for k, v in _MODES.items()}
ERROR_MODE_NAMES = {v: k for k, v in _ERROR_MODES.items()}
_FEC = ("use_fec_from_device", "fec_start", "fec_blocks", "fec_roots")
_SIG = "root_hash_sig_key_desc"


class Options:
    """The optional parameters (verity_parse_opt_args, second pass)."""

    def __init__(self) -> None:
        self.mode = MODE_EIO
        self.error_mode = MODE_EIO
        self.ignore_zero_blocks = False
        self.at_most_once = False
        self.tasklet = False

    @classmethod
    def parse(cls, rest: Sequence[str], data_blocks: int) -> Options:
        opts = cls()
        if not rest:
            return opts
        for word in feature_words(rest):
            name = word.lower()
            if name in _MODES:
                if opts.mode != MODE_EIO:
                    raise TableError("Conflicting error handling parameters")
                opts.mode = _MODES[name]
            elif name in _ERROR_MODES:
                if opts.error_mode != MODE_EIO:
                    raise TableError("Conflicting error handling parameters")
                opts.error_mode = _ERROR_MODES[name]
            elif name == "ignore_zero_blocks":
                opts.ignore_zero_blocks = True
            elif name == "check_at_most_once":
                if data_blocks > INT_MAX:
                    raise TableError("device too large to use check_at_most_once")
                opts.at_most_once = True
            elif name == "try_verify_in_tasklet":
                opts.tasklet = True
            elif name in _FEC:
                raise TableError(
                    f"{name}: forward error correction (FEC) is not supported by dmfuse"
                )
            elif name == _SIG:
                raise TableError(
                    f"{name}: root hash signatures are not supported by dmfuse "
                    "(they need the kernel keyring)"
                )
            else:
                raise TableError("Unrecognized verity feature request")
        return opts

    def words(self) -> list[str]:
        words = []
        if self.mode != MODE_EIO:
            words.append(MODE_NAMES[self.mode])
        if self.error_mode != MODE_EIO:
            words.append(ERROR_MODE_NAMES[self.error_mode])
        if self.ignore_zero_blocks:
            words.append("ignore_zero_blocks")
        if self.at_most_once:
            words.append("check_at_most_once")
        if self.tasklet:
            words.append("try_verify_in_tasklet")
        return words


def feature_words(rest: Sequence[str]) -> list[str]:
    """``<#opt_params> <words>``; words after the counted ones are ignored, as by the kernel."""
    reader = ArgReader(rest)
    try:
        count = reader.unsigned("feature args", maximum=OPTS_MAX)
    except TableError:
        raise TableError("Invalid number of feature args") from None
    if count > reader.remaining:
        raise TableError("Invalid number of feature args")
    return list(rest[1 : 1 + count])


def parse_uint(text: str, maximum: int, error: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise TableError(error)
    value = int(text)
    if value > maximum:
        raise TableError(error)
    return value


def parse_block_size(text: str, maximum: int, error: str) -> int:
    value = parse_uint(text, 2**32 - 1, error)
    if value < 512 or value & (value - 1) or value > maximum:
        raise TableError(error)
    return value


def parse_hex(text: str, error: str) -> bytes | None:
    if len(text) % 2 or not _HEX.match(text):
        raise TableError(error)
    return bytes.fromhex(text)


async def open_device(opener: DeviceOpener, spec: str, error: str) -> Backend:
    try:
        return await opener.open(spec)
    except TableError as exc:
        detail = exc.message.removeprefix("Device lookup failed: ")
        raise TableError(f"{error}: {detail}") from None
