"""``dmfuse``: dmsetup's commands against a running mount, plus ``mount`` and ``umount``.  EDGE.

Every failure ends here as one line, ``dmfuse: <command> <name> failed: <reason>``, and exit
status 1 (2 for usage errors, from argparse).  ``--json`` prints the daemon's data as it is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from dmfuse import __version__, output, stats_report
from dmfuse.cli_mount import mount_command, umount_command
from dmfuse.control.client import find_socket, request
from dmfuse.errors import DmError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmfuse", description=__doc__.splitlines()[0])
    p.add_argument("-m", "--mountpoint", help="the dmfuse mount to talk to")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--version", action="version", version=f"dmfuse {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("mount", help="mount a directory of NAME.table files")
    m.add_argument("tabledir")
    m.add_argument("mountpoint_dir", metavar="mountpoint")
    m.add_argument("-f", "--foreground", action="store_true")
    m.add_argument("-d", "--debug", action="store_true", help="log every request (implies -f)")
    m.add_argument(
        "-o",
        dest="options",
        default="",
        help="mount options: allow_other, cache=writeback|none (none: backing files O_DIRECT)",
    )
    m.add_argument("--log", help="log file (background default: next to the control socket)")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    u = sub.add_parser("umount", help="unmount, flushing every device")
    u.add_argument("mountpoint_dir", metavar="mountpoint")

    for name in ("create", "load", "reload"):
        c = sub.add_parser(name)
        c.add_argument("name")
        c.add_argument("file", nargs="?", help="table file (default: --table or stdin)")
        c.add_argument("--table", help="table text; lines separated by newlines")
        c.add_argument("-r", "--readonly", action="store_true")
        if name == "create":
            c.add_argument("-u", "--uuid", default="")
            c.add_argument("-n", "--notable", action="store_true")
    for name in ("resume", "clear"):
        _by_name_or_uuid(sub.add_parser(name), required=True)
    s = sub.add_parser("suspend")
    _by_name_or_uuid(s, required=True)
    s.add_argument("--noflush", action="store_true")
    s.add_argument("--nolockfs", action="store_true", help="accepted; dmfuse never freezes")
    r = sub.add_parser("remove")
    _by_name_or_uuid(r, required=True)
    r.add_argument("-f", "--force", action="store_true")
    r.add_argument("--deferred", action="store_true")
    r.add_argument("--retry", action="store_true", help="accepted for compatibility")
    rn = sub.add_parser("rename")
    rn.add_argument("name")
    rn.add_argument("new_name", nargs="?")
    rn.add_argument("--setuuid")
    msg = sub.add_parser("message")
    msg.add_argument("name")
    msg.add_argument("sector")
    msg.add_argument("words", nargs="+")
    i = sub.add_parser("info")
    _by_name_or_uuid(i, required=False)
    i.add_argument("-c", "--columns", action="store_true")
    i.add_argument("--noheadings", action="store_true")
    for name in ("table", "status"):
        t = sub.add_parser(name)
        _by_name_or_uuid(t, required=False)
        t.add_argument("--inactive", action="store_true")
        t.add_argument("--target")
        if name == "table":
            t.add_argument("--showkeys", action="store_true")
        else:  # a progress bar for a snapshot-merge, until it is done
            t.add_argument("--watch", action="store_true")
            t.add_argument("--interval", type=float, default=1.0)
    ls = sub.add_parser("ls")
    ls.add_argument("--target")
    dp = sub.add_parser("deps")
    _by_name_or_uuid(dp, required=False)
    dp.add_argument(
        "-o",
        dest="options",
        choices=["devno", "devname", "blkdevname"],
        default="devno",
        help="how to name block devices (files print as paths)",
    )
    st = sub.add_parser("stats", help="dm-stats regions, area by area (dmstats report)")
    _by_name_or_uuid(st, required=False)
    st.add_argument("--list", action="store_true", help="one row per region (dmstats list)")
    w = sub.add_parser("wait")
    w.add_argument("name")
    w.add_argument("event_nr", nargs="?", default="0")
    sub.add_parser("targets")
    sub.add_parser("version")
    # Parsed by dmfuse.targets.log_writes.replay itself (main() hands it the words);
    # listed here for --help.
    rl = sub.add_parser("replay-log", add_help=False, help="replay a log-writes log (no daemon)")
    rl.add_argument("words", nargs=argparse.REMAINDER)
    return p


def _by_name_or_uuid(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``NAME`` or ``-u UUID``, as dmsetup accepts for commands on one device."""
    parser.add_argument("name", nargs="?")
    parser.add_argument("-u", "--uuid", dest="by_uuid", help="select the device by uuid")
    parser.set_defaults(name_required=required)


def _resolve_uuid(sock: str, args: argparse.Namespace) -> None:
    by_uuid = getattr(args, "by_uuid", None)
    if by_uuid:
        found = [i["name"] for i in request(sock, "info", {}) if i["uuid"] == by_uuid]
        if not found:
            raise DmError(f"uuid {by_uuid}: Device does not exist")
        args.name = found[0]
    elif getattr(args, "name_required", False) and args.name is None:
        raise DmError("a device name or -u UUID is required")


def _read_table(args: argparse.Namespace) -> str | None:
    if getattr(args, "notable", False):
        if args.table is not None or args.file is not None:
            raise DmError("--table and --notable are incompatible")
        return None
    if args.table is not None:
        return str(args.table)
    if args.file is not None:
        with open(args.file, encoding="utf-8") as fh:
            return fh.read()
    text = sys.stdin.read() if sys.stdin is not None and not sys.stdin.isatty() else ""
    return text if text.strip() or args.command != "create" else None


def _emit(args: argparse.Namespace, result: Any, text: str) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(text)


def _device_command(args: argparse.Namespace) -> None:
    sock = find_socket(args.mountpoint)
    cmd = args.command
    _resolve_uuid(sock, args)
    cwd = os.getcwd()
    named = getattr(args, "name", None) is not None
    if cmd == "create":
        table = _read_table(args)
        result = request(
            sock,
            "create",
            {
                "name": args.name,
                "table": table,
                "cwd": cwd,
                "readonly": args.readonly,
                "uuid": args.uuid,
            },
        )
        _emit(args, result, "")
    elif cmd in ("load", "reload"):
        table = _read_table(args)
        if table is None:
            raise DmError("no table given")
        _emit(
            args,
            request(
                sock,
                "load",
                {"name": args.name, "table": table, "cwd": cwd, "readonly": args.readonly},
            ),
            "",
        )
    elif cmd in ("resume", "clear"):
        _emit(args, request(sock, cmd, {"name": args.name}), "")
    elif cmd == "suspend":
        _emit(args, request(sock, "suspend", {"name": args.name, "noflush": args.noflush}), "")
    elif cmd == "remove":
        result = request(
            sock, "remove", {"name": args.name, "force": args.force, "deferred": args.deferred}
        )
        _emit(args, result, "")
    elif cmd == "rename":
        if args.setuuid is None and args.new_name is None:
            raise DmError("rename needs a new name or --setuuid")
        _emit(
            args,
            request(
                sock,
                "rename",
                {"name": args.name, "new_name": args.new_name, "setuuid": args.setuuid},
            ),
            "",
        )
    elif cmd == "message":
        reply = request(
            sock,
            "message",
            {"name": args.name, "sector": int(args.sector), "message": " ".join(args.words)},
        )
        text = "" if not reply else reply if reply.endswith("\n") else reply + "\n"
        _emit(args, reply, text)
    elif cmd == "info":
        infos = request(sock, "info", {"name": args.name})
        text = (
            output.info_columns(infos, headings=not args.noheadings)
            if args.columns
            else output.info_long(infos)
        )
        _emit(args, infos, text)
    elif cmd == "table":
        res = request(
            sock,
            "table",
            {
                "name": args.name,
                "inactive": args.inactive,
                "showkeys": args.showkeys,
                "target": args.target,
            },
        )
        _emit(args, res, output.lines_report(res, named=named, filtered=bool(args.target)))
    elif cmd == "status" and args.watch:
        _watch_merge(sock, args)
    elif cmd == "status":
        res = request(
            sock, "status", {"name": args.name, "inactive": args.inactive, "target": args.target}
        )
        _emit(args, res, output.lines_report(res, named=named, filtered=bool(args.target)))
    elif cmd == "ls":
        res = request(sock, "ls", {"target": args.target})
        _emit(args, res, output.ls(res, by_target=args.target is not None))
    elif cmd == "deps":
        res = request(sock, "deps", {"name": args.name})
        _emit(args, res, output.deps(res, named=named, style=args.options))
    elif cmd == "wait":
        _emit(args, request(sock, "wait", {"name": args.name, "event_nr": int(args.event_nr)}), "")
    elif cmd == "targets":
        res = request(sock, "targets", {})
        _emit(args, res, output.targets(res))
    elif cmd == "stats":
        res = request(sock, "stats", {"name": args.name})
        _emit(args, res, (stats_report.region_list if args.list else stats_report.report)(res))
    elif cmd == "version":
        res = request(sock, "version", {})
        _emit(args, res, output.version(res))


def _watch_merge(sock: str, args: argparse.Namespace) -> None:
    from dmfuse.targets.snapshot import progress

    if args.name is None:
        raise DmError("--watch needs a device name")

    def fetch() -> str:
        res = request(sock, "status", {"name": args.name, "inactive": False, "target": None})
        for line in res[0]["lines"]:
            words = line.split(" ", 3)
            if len(words) > 2 and words[2] == "snapshot-merge":
                return words[3] if len(words) > 3 else ""
        raise DmError(f"{args.name}: no snapshot-merge target")

    tty = sys.stdout.isatty()

    def emit(text: str) -> None:
        sys.stdout.write(("\r" + text) if tty else text + "\n")
        sys.stdout.flush()

    status = progress.watch(fetch, time.sleep, emit, max(args.interval, 0.05))
    if tty:
        sys.stdout.write("\n")
    if status:
        raise DmError("the merge did not complete")


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["replay-log"]:  # an offline tool: no mount, its own options
        from dmfuse.targets.log_writes.replay import main as replay_log

        return replay_log(words[1:])
    args = _parser().parse_args(argv)
    name = getattr(args, "name", None) or getattr(args, "mountpoint_dir", None)
    what = f"{args.command} {name}" if name else args.command
    try:
        if args.command == "mount":
            return mount_command(args)
        if args.command == "umount":
            return umount_command(args)
        _device_command(args)
        return 0
    except DmError as exc:
        print(f"dmfuse: {what} failed: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dmfuse: {what} failed: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
