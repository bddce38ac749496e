from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Mount, can_mount, mounted


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # In CI a missing prerequisite is a failure, not a skip.
    reason = None if os.environ.get("CI") else can_mount()
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Mount]:
    with mounted(tmp_path) as m:
        yield m
