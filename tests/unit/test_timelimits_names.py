"""DISTQ_TASK_TIME_LIMIT's ``NAME=SECONDS`` items hold one ``=`` each."""

from __future__ import annotations

import pytest

from distq.config import Settings
from distq.errors import ConfigError
from distq.timelimits import TimeLimits


@pytest.mark.parametrize("text", ["a=b=3", "square=1=2", "30,square==2"])
def test_an_item_with_two_equals_signs_is_refused_not_read_as_a_task_name(text: str) -> None:
    """``square=1=2`` set a limit of 2 s for a task named ``square=1`` (the item was split
    at its last ``=``), so square ran without one, unsaid where the worker is not the CLI
    (which warns only of a name it does not run). No task distq registers by its path
    has ``=`` in its name: the item is refused, naming the setting."""
    with pytest.raises(ConfigError, match="DISTQ_TASK_TIME_LIMIT") as caught:
        Settings.load({"DISTQ_AUTHKEY": "secret", "DISTQ_TASK_TIME_LIMIT": text})
    assert "one '=' per item" in str(caught.value)
    with pytest.raises(ValueError, match="one '=' per item"):
        TimeLimits.parse(text)


def test_one_equals_sign_per_item_still_reads_as_before() -> None:
    assert TimeLimits.parse("30, square=2,mod.jobs:fn=0.5") == TimeLimits(
        30.0, (("mod.jobs:fn", 0.5), ("square", 2.0))
    )
