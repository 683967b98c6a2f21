"""A time limit is said as it was set: the worker's ``time limits:`` line and the error
line of a task past its limit."""

from __future__ import annotations

import io
import time

import pytest

from distq import cli
from distq.chunks import CHUNK_TASK
from distq.config import Settings
from distq.console import Console
from distq.ending import Endings
from distq.envelope import Task
from distq.tasks import Registry
from distq.timelimits import TimeLimits
from distq.transport import Delivery, Transport
from distq.worker import Worker, WorkerOptions
from seam import results_of


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


def _setting(text: str) -> TimeLimits:
    """The limits of ``DISTQ_TASK_TIME_LIMIT=text``, as a worker reads the variable."""
    return Settings.load(
        {"DISTQ_TRANSPORT": "redis", "DISTQ_TASK_TIME_LIMIT": text}
    ).task_time_limit


def test_each_limit_says_where_it_was_set() -> None:
    """The limit a task ran past is named as it was set, for a user with several set to
    know which to raise: the setting's own for the name, the registration's unless the
    setting overrides it, the default, ``distq:chunk``'s, or a chunk's function's."""
    limits = _setting('30,square=2,"a=b"=1').with_registered({"square": 9.0, "nap": 0.5})
    assert limits.which(Task("square", [1], "r")) == "DISTQ_TASK_TIME_LIMIT square=2"
    assert limits.which(Task("a=b", [], "r")) == 'DISTQ_TASK_TIME_LIMIT "a=b"=1'
    assert limits.which(Task("nap", [1], "r")) == (
        "time_limit=0.5 given to Registry.register for 'nap'"
    )
    assert limits.which(Task("other", [], "r")) == (
        "DISTQ_TASK_TIME_LIMIT 30: the default, for a task with no limit of its own"
    )
    chunk = Task(CHUNK_TASK, ["nap", [[1], [2], [3]]], "r")
    assert limits.which(chunk) == (
        "3 calls x time_limit=0.5 given to Registry.register for 'nap'; or give every "
        "chunk its own: distq:chunk=SECONDS"
    )
    assert limits.of(chunk) == 1.5
    chunked = _setting("30,distq:chunk=60")
    assert chunked.which(chunk) == "DISTQ_TASK_TIME_LIMIT distq:chunk=60"
    # a chunk is a task whose name has a limit in the setting: not the registration's
    assert chunked.with_registered({"nap": 1.0}).which(chunk) == (
        "DISTQ_TASK_TIME_LIMIT distq:chunk=60"
    )


def test_a_limit_with_many_digits_reads_back_from_the_time_limits_line_as_set() -> None:
    """A limit given in a program (``Registry.register(time_limit=1/3)``, a ``TimeLimits``
    it builds for ``Settings``) was said to 15 digits: the worker's line read back as
    0.333333333333333, another limit than the one it enforces. The line says each
    limit's every digit (``repr``), as do the words naming a limit past which a task
    ran; how long that was stays said without a float's noise."""
    registry = Registry()
    registry.register("nap", abs, time_limit=1 / 3)
    limits = TimeLimits(2 / 3, (("square", 0.1 + 0.2),)).with_registered(registry.time_limits())
    out, err = io.StringIO(), io.StringIO()
    cli._say_time_limits(Console(out=out, err=err), limits, registry)
    line = out.getvalue().removeprefix("time limits: ").removesuffix("\n")
    assert TimeLimits.parse(line) == limits, line
    assert TimeLimits.parse(line).for_task("nap") == 1 / 3, line
    assert line == "0.6666666666666666,nap=0.3333333333333333,square=0.30000000000000004"
    assert limits.which(Task("nap", [], "r")) == (
        "time_limit=0.3333333333333333 given to Registry.register for 'nap'"
    )
    task = Task("nap", [1], "r", max_attempts=1)
    ending = Endings("w1", "q").timed_out(Delivery(task.encode(), 1), task, 1 / 3, 0.0, 1.0)
    assert ending.note is not None and "time limit of 0.333333333333333 s" in ending.note


def test_limits_a_program_built_are_named_as_it_gave_them_not_as_the_variable() -> None:
    """A worker given ``TimeLimits(30, ...)`` (``WorkerOptions``, ``Settings``) named a
    limit "DISTQ_TASK_TIME_LIMIT 30", a variable nobody set; the variable's own limits
    still name it, and both are the same limits."""
    built = TimeLimits(30, (("square", 2),))
    assert built.which(Task("square", [1], "r")) == "('square', 2) in TimeLimits(per_name=...)"
    assert built.which(Task("other", [], "r")) == (
        "TimeLimits(default=30): the default, for a task with no limit of its own"
    )
    registered = built.with_registered({"nap": 0.5})
    assert registered.which(Task("nap", [], "r")) == (
        "time_limit=0.5 given to Registry.register for 'nap'"
    )
    assert registered.which(Task("square", [1], "r")) == built.which(Task("square", [1], "r"))
    chunk = Task(CHUNK_TASK, ["square", [[1], [2]]], "r")
    assert built.which(chunk) == (
        "2 calls x ('square', 2) in TimeLimits(per_name=...); or give every chunk its own: "
        "distq:chunk=SECONDS"
    )
    parsed = _setting("30,square=2")
    assert parsed == built
    assert parsed.which(Task("square", [1], "r")) == "DISTQ_TASK_TIME_LIMIT square=2"
    assert parsed.with_registered({"nap": 0.5}).which(Task("other", [], "r")) == (
        "DISTQ_TASK_TIME_LIMIT 30: the default, for a task with no limit of its own"
    )


def test_a_worker_given_built_limits_names_them_in_the_error_of_a_late_task(
    transport: Transport,
) -> None:
    """The error result of a task past a limit a program gave its worker
    (``WorkerOptions(time_limits=TimeLimits(0.3))``) said "(DISTQ_TASK_TIME_LIMIT 0.3:
    the default, ...)", a variable nobody had set."""
    producer = transport.producer("replies")
    late = Task(name="sleepy", args=[1.0], reply_to="replies", id="t-late", max_attempts=1)
    producer.submit([late.encode()])
    registry = Registry()
    registry.register("sleepy", time.sleep)
    out = io.StringIO()
    options = WorkerOptions(worker_id="w", exit_when_idle=2.0, time_limits=TimeLimits(0.3))
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    (result,) = results_of(producer, 1, within=5)
    assert (result.status, result.error_type) == ("error", "TimeLimitExceeded"), result
    assert result.error_message == (
        "failed 1 of 1 attempts; last error: TimeLimitExceeded: ran past its time limit of "
        "0.3 s (TimeLimits(default=0.3): the default, for a task with no limit of its own)"
    ), out.getvalue()
    producer.close()


def test_limits_a_program_reads_from_text_are_its_own_not_the_variables() -> None:
    """distq's own errors tell a program to build its limits with
    ``TimeLimits.parse('30,square=2')`` (a Settings field, TimeLimits's own refusals);
    a worker given those named them "DISTQ_TASK_TIME_LIMIT square=2", the variable
    nobody set. The variable's text (and the flag's), read by Settings.load, still
    names the variable."""
    parsed = TimeLimits.parse("30,square=2")
    assert parsed.which(Task("square", [1], "r")) == "('square', 2) in TimeLimits(per_name=...)"
    assert parsed.with_registered({"nap": 0.5}).which(Task("other", [], "r")) == (
        "TimeLimits(default=30): the default, for a task with no limit of its own"
    )
    read = Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_TASK_TIME_LIMIT": "30,square=2"})
    flag = Settings.load({"DISTQ_TRANSPORT": "redis"}, {"DISTQ_TASK_TIME_LIMIT": "30,square=2"})
    for limits in (read.task_time_limit, flag.task_time_limit):
        assert limits == parsed
        assert limits.which(Task("square", [1], "r")) == "DISTQ_TASK_TIME_LIMIT square=2"
        assert limits.with_registered({"nap": 0.5}).which(Task("other", [], "r")) == (
            "DISTQ_TASK_TIME_LIMIT 30: the default, for a task with no limit of its own"
        )


def test_the_limit_of_a_chunk_of_one_call_says_1_call() -> None:
    """It said "1 calls x DISTQ_TASK_TIME_LIMIT square=2"."""
    limits = _setting("30,square=2")
    chunk = Task(CHUNK_TASK, ["square", [[3]]], "r")
    assert limits.which(chunk) == (
        "1 call x DISTQ_TASK_TIME_LIMIT square=2; or give every chunk its own: distq:chunk=SECONDS"
    )
    pair = Task(CHUNK_TASK, ["square", [[3], [4]]], "r")
    assert limits.which(pair).startswith("2 calls x DISTQ_TASK_TIME_LIMIT square=2; ")
