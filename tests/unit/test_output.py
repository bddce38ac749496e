"""dmsetup output formats, with expectations copied from the Linux 6.12 recordings."""

from dmfuse import output


def info(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "a_live",
        "uuid": "",
        "major": 253,
        "minor": 0,
        "suspended": False,
        "readonly": False,
        "deferred_remove": False,
        "live": True,
        "inactive": False,
        "open_count": 0,
        "event_nr": 0,
        "read_ahead": 256,
        "has_disk": True,
        "targets": 1,
    }
    base.update(over)
    return base


def test_info_columns_like_dmsetup() -> None:
    rows = [
        info(),
        info(name="h_uuid_ro_susp", minor=7, suspended=True, readonly=True, uuid="UUID-H"),
    ]
    assert output.info_columns(rows) == (
        "Name             Maj Min Stat Open Targ Event  UUID                            \n"
        "a_live           253   0 L--w    0    1      0                                 \n"
        "h_uuid_ro_susp   253   7 L-sr    0    1      0 UUID-H                          \n"
    )
    assert output.info_columns(rows, headings=False) == (
        "a_live:253:0:L--w:0:1:0:\nh_uuid_ro_susp:253:7:L-sr:0:1:0:UUID-H\n"
    )


def test_info_long_without_any_table() -> None:
    text = output.info_long([info(name="nt", live=False, has_disk=False, targets=None)])
    assert text == (
        "Name:              nt\nState:             ACTIVE\nTables present:    None\n"
        "Open count:        0\nEvent number:      0\nMajor, minor:      253, 0\n"
        "Number of targets: 0\n\n"
    )


def test_table_lines_for_devices_without_a_table() -> None:
    devs = [{"name": "nt", "lines": []}, {"name": "z", "lines": ["0 8 zero "]}]
    assert output.lines_report(devs, named=False) == "nt: \nz: 0 8 zero \n"
    assert output.lines_report(devs[:1], named=True) == "\n"
    assert output.lines_report(devs, named=False, filtered=True) == "z: 0 8 zero \n"
    assert output.ls([], by_target=True) == ""
    assert output.deps([{"name": "nt", "deps": []}], named=True) == "0 dependencies\t:\n"
