"""The merge progress display behind ``dmfuse status --watch`` (no daemon, no real sleeps)."""

from __future__ import annotations

from dmfuse.targets.snapshot.progress import Usage, parse, render, watch


def test_parse_usage_and_words() -> None:
    assert parse("1040/1024 16") == Usage(1040, 1024, 16)
    assert parse("Invalid") == "Invalid"
    assert parse("Merge failed") == "Merge failed"


def test_render_bar() -> None:
    first = Usage(1016, 2048, 16)
    assert render(first, first).startswith("[" + "-" * 40 + "]   0.0%")
    assert render(first, Usage(516, 2048, 16)) == (
        "[" + "#" * 20 + "-" * 20 + "]  50.0%  500 sectors left to merge"
    )
    assert render(first, Usage(16, 2048, 16)).startswith("[" + "#" * 40 + "] 100.0%")


def test_watch_polls_until_merged() -> None:
    states = iter(["1016/2048 16", "516/2048 16", "16/2048 16"])
    slept: list[float] = []
    out: list[str] = []
    assert watch(lambda: next(states), slept.append, out.append, interval=0.5) == 0
    assert slept == [0.5, 0.5]  # no sleep after the last poll
    assert [line.split("]")[1].split("%")[0].strip() for line in out] == ["0.0", "50.0", "100.0"]


def test_watch_reports_a_failed_merge() -> None:
    states = iter(["1016/2048 16", "Merge failed"])
    out: list[str] = []
    assert watch(lambda: next(states), lambda _: None, out.append) == 1
    assert out[-1] == "merge stopped: Merge failed"
