"""A time limit is said as it was set: the worker's ``time limits:`` line and the error
line of a task past its limit."""

from __future__ import annotations

import pytest

from distq.ending import Endings
from distq.envelope import Task
from distq.timelimits import TimeLimits
from distq.transport import Delivery


@pytest.mark.parametrize("text", ["123456.7", "30,square=100000.5", "0.1,mod.jobs:fn=604799.9"])
def test_the_time_limits_line_says_each_limit_as_it_was_set(text: str) -> None:
    """``{:g}`` keeps 6 digits: DISTQ_TASK_TIME_LIMIT=123456.7 was said as ``123457``, a
    limit the worker does not enforce (it enforces 123456.7)."""
    limits = TimeLimits.parse(text)
    assert limits.describe() == text
    assert TimeLimits.parse(limits.describe()) == limits


def test_a_timed_out_attempt_names_the_limit_it_ran_past() -> None:
    task = Task("square", [2], "r", max_attempts=1)
    ending = Endings("w1", "q").timed_out(Delivery(task.encode(), 1), task, 123456.7, 0.0, 1.0)
    assert ending.note is not None and "time limit of 123456.7 s" in ending.note
    # a chunk's limit, its function's times its calls, is no longer said with float noise
    ending = Endings("w1", "q").timed_out(Delivery(task.encode(), 1), task, 7 * 0.3, 0.0, 1.0)
    assert ending.note is not None and "time limit of 2.1 s" in ending.note
