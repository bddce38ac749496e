import pytest

from dmfuse.errors import DeviceBusy, InvalidArgument
from dmfuse.lifecycle import (
    DeviceState,
    Plan,
    check_name,
    plan_message,
    plan_remove,
    plan_resume,
    plan_set_uuid,
    plan_suspend,
)


@pytest.mark.parametrize(
    ("state", "plan"),
    [
        (DeviceState(), Plan.NOOP),
        (DeviceState(has_live=True), Plan.NOOP),
        (DeviceState(has_live=True, suspended=True), Plan.UNSUSPEND),
        (DeviceState(has_inactive=True), Plan.SWAP),
        (DeviceState(has_live=True, has_inactive=True, suspended=True), Plan.SWAP),
    ],
)
def test_resume_plans(state: DeviceState, plan: Plan) -> None:
    assert plan_resume(state) is plan


def test_resume_of_suspended_device_without_any_table_fails() -> None:
    with pytest.raises(InvalidArgument):
        plan_resume(DeviceState(suspended=True))


def test_suspend_of_suspended_or_tableless_device_is_a_noop() -> None:
    assert plan_suspend(DeviceState(has_live=True)) is Plan.SUSPEND
    assert plan_suspend(DeviceState(has_live=True, suspended=True)) is Plan.NOOP
    assert plan_suspend(DeviceState()) is Plan.NOOP


def test_remove_rules() -> None:
    assert plan_remove(DeviceState(), deferred=False) is Plan.REMOVE
    assert plan_remove(DeviceState(), deferred=True) is Plan.REMOVE
    assert plan_remove(DeviceState(open_count=1), deferred=True) is Plan.DEFER_REMOVE
    with pytest.raises(DeviceBusy):
        plan_remove(DeviceState(open_count=2), deferred=False)


def test_message_needs_live_table_and_sector_inside() -> None:
    with pytest.raises(InvalidArgument, match="no live table"):
        plan_message(DeviceState(), 0)
    with pytest.raises(InvalidArgument, match="outside device"):
        plan_message(DeviceState(has_live=True), -1)
    assert plan_message(DeviceState(has_live=True), 0) is Plan.PROCEED


def test_uuid_settable_once() -> None:
    assert plan_set_uuid(DeviceState()) is Plan.PROCEED
    with pytest.raises(InvalidArgument):
        plan_set_uuid(DeviceState(has_uuid=True))


@pytest.mark.parametrize("name", ["", "a/b", ".", "..", "control", "x" * 128])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_name(name)
