"""DISTQ_TASK_TIME_LIMIT's ``NAME=SECONDS`` items hold one ``=`` each."""

from __future__ import annotations

import io

import pytest

from distq import cli
from distq.chunks import CHUNK_TASK
from distq.config import Settings
from distq.console import Console
from distq.envelope import Task
from distq.errors import ConfigError
from distq.tasks import Registry
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


def test_a_limit_named_for_chunks_is_each_chunks_limit() -> None:
    """``distq:chunk=60`` (a limit for ``Executor.map(chunksize=N)``'s chunks) was
    ignored for every well-formed chunk, which took N times its function's limit, or
    none; the worker warned that it "does not run" ``distq:chunk``, which it does. A
    chunk is a task named ``distq:chunk``: as for any task, its name's limit wins."""
    chunk = Task(CHUNK_TASK, ["square", [[1], [2], [3]]], "r")
    assert TimeLimits.parse("distq:chunk=60").of(chunk) == 60.0
    assert TimeLimits.parse("5,square=2,distq:chunk=60").of(chunk) == 60.0
    assert TimeLimits.parse("5,square=2").of(chunk) == 6.0  # unset: 3 calls x square's 2 s
    assert TimeLimits.parse("distq:chunk=60").of(Task("square", [1], "r")) is None
    assert TimeLimits.parse("distq:chunk=60").with_registered({"square": 2}).of(chunk) == 60.0


def test_a_worker_does_not_warn_that_it_does_not_run_chunks() -> None:
    out, err = io.StringIO(), io.StringIO()
    cli._say_time_limits(Console(out=out, err=err), TimeLimits.parse("distq:chunk=60"), Registry())
    assert out.getvalue() == "time limits: distq:chunk=60\n" and err.getvalue() == ""


@pytest.mark.parametrize(
    "name", ["a=b", "x,y", "a,b=c", ' "quoted"', "tab\tand\nline", "trailing ", "ünï"]
)
def test_the_time_limits_line_reads_back_as_the_setting_whatever_the_names(name: str) -> None:
    """The worker's ``time limits:`` line is the setting as it would be written; a name
    given at registration with ``,`` or ``=`` in it (``Registry.register`` takes any
    name) wrote ``a=b=5`` or ``x,y=5``, which the setting refuses or reads as other
    names. Such a name is written in double quotes, as a JSON string, which the
    setting reads."""
    limits = TimeLimits.parse("30,square=2").with_registered({name: 5.0})
    line = limits.describe()
    assert TimeLimits.parse(line) == limits, line
    assert line.isprintable()
    assert TimeLimits.parse(line).for_task(name) == 5.0


def test_a_quoted_name_in_the_setting_is_the_name_it_quotes() -> None:
    assert TimeLimits.parse('"a=b"=2, "x,y" = 3,square=1') == TimeLimits(
        None, (("a=b", 2.0), ("square", 1.0), ("x,y", 3.0))
    )
    assert TimeLimits.parse('"square"=2') == TimeLimits.parse("square=2")
    for text in ('"a=b=2', '"a"b=2', '"a"', '"a"=2=3'):
        with pytest.raises(ValueError, match="is '"):
            TimeLimits.parse(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('"mod\\jobs"=2', r"Invalid \\escape at character 5"),
        ('"a\tb"=2', "Invalid control character at character 3"),
        ('30, "x"=2,"abc=2', "Unterminated string starting at character 11"),
    ],
)
def test_a_quoted_name_that_is_no_json_string_says_why(text: str, why: str) -> None:
    """A quoted name that ends but is no JSON string (a backslash that starts no escape,
    as in a path; a tab typed in it) was refused as one that "does not end", which sent
    its writer looking for a missing quote: the refusal says what JSON found, and where."""
    with pytest.raises(ValueError, match=why):
        TimeLimits.parse(text)
