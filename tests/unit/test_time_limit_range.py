"""The ends of a time limit's documented range, 0.1 to 604800 s, are accepted (mut17b)."""

from __future__ import annotations

import pytest

from distq.config import Settings, secured
from distq.errors import ConfigError
from distq.tasks import Registry
from distq.timelimits import MAX_SECONDS, MIN_SECONDS, TimeLimits


def test_the_shortest_and_longest_limits_are_accepted_and_no_further() -> None:
    """The refusal says "use 0.1 to 604800": DISTQ_TASK_TIME_LIMIT=0.1 must not be
    refused with that very message (mut17b)."""
    assert (MIN_SECONDS, MAX_SECONDS) == (0.1, 604800.0)
    assert TimeLimits.parse("0.1,square=604800") == TimeLimits(0.1, (("square", 604800.0),))
    for outside in ("0.09", "604800.5"):
        with pytest.raises(ValueError, match=r"; use a number from 0\.1 to 604800 seconds$"):
            TimeLimits.parse(outside)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("default", "per_name", "says"),
    [
        (0.0, (), r"default=0\.0 cannot be enforced; give seconds from 0\.1 to 604800"),
        (-1, (), r"default=-1 cannot be enforced"),
        (NAN, (), r"default=nan cannot be enforced"),
        (INF, (), r"default=inf cannot be enforced"),
        (10**400, (), r"default=about 10\*\*400 cannot be enforced"),
        (None, (("a", -(10**5000)),), r"'a'=about 10\*\*5000 cannot be enforced"),
        (True, (), r"default=True cannot be enforced"),
        ("30", (), r"default='30' cannot be enforced.*TimeLimits\.parse\('30,square=2'\)"),
        (None, (("a", 0.05),), r"'a'=0\.05 cannot be enforced"),
        (None, (("a", NAN),), r"'a'=nan cannot be enforced"),
        (None, (("a", "1"),), r"'a'='1' cannot be enforced"),
        (None, (("a", 1.0), ("a", 2.0)), r"names 'a' twice \(1 and 2\); give each name one"),
        (None, (("a", 1.0, 2.0),), r"per_name holds \('a', 1\.0, 2\.0\); give \(name, sec"),
        (None, ((1, 1.0),), r"per_name holds \(1, 1\.0\); give \(name, seconds\) pairs"),
        (None, [("a", 1.0)], r"per_name is a list; give a tuple of \(name, seconds\) pairs"),
    ],
)
def test_limits_a_program_builds_are_held_to_the_settings_range(
    default: object, per_name: object, says: str
) -> None:
    """``TimeLimits`` built in a program (for ``Settings(task_time_limit=...)`` or a
    ``WorkerOptions``) went unchecked, though ``Registry.register`` and the setting refuse
    the same values: 0 or less failed every task at its keeper's first tick, NaN
    enforced no limit while the worker's line said ``time limits: nan``, a name given
    twice was enforced at its second limit and said as ``a=1,a=2`` (which the setting
    refuses), a str broke the line with "Unknown format code 'g'"."""
    with pytest.raises(ValueError, match=says):
        TimeLimits(default, per_name)  # type: ignore[arg-type]


def test_a_settings_time_limit_that_is_not_time_limits_is_refused() -> None:
    """``Settings(task_time_limit="30")`` was taken (the numbers alone are checked): the
    worker then failed with "'str' object has no attribute 'with_registered'"."""
    with pytest.raises(ConfigError, match=r"task_time_limit \(DISTQ_TASK_TIME_LIMIT\) is '30'"):
        secured(Settings(task_time_limit="30"))  # type: ignore[arg-type]
    limits = TimeLimits.parse("30,square=2")
    assert secured(Settings(task_time_limit=limits)).task_time_limit == limits


def test_a_registered_limit_too_long_to_show_is_refused_for_what_it_is() -> None:
    """``Registry.register(time_limit=10**5000)`` raised Python's "Exceeds the limit
    (4300 digits) for integer string conversion" as the refusal showed the value: not
    a word of the time limit, nor of what to give instead."""
    with pytest.raises(ValueError, match=r"time_limit=about 10\*\*5000 cannot be enforced"):
        Registry().register("nap", abs, time_limit=10**5000)


def test_a_name_given_twice_in_the_setting_is_refused_saying_what_to_do() -> None:
    """It said only "'a' has two limits", not what to do about it."""
    for text in ("a=1,a=2", 'a=1,"a"=2'):
        with pytest.raises(ValueError, match=r"'a' has two limits; give each name one"):
            TimeLimits.parse(text)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "9" * 5000,
            "is '...': the default limit is about 10**4999; use a number from 0.1 to 604800 "
            "seconds",
        ),
        (
            f"30,x=-{'9' * 400}",
            "is '30,x=...': the limit of 'x' is about -10**399; use a number from 0.1 to "
            "604800 seconds",
        ),
    ],
    ids=["5000-digits", "named-400-digits"],
)
def test_a_limit_of_hundreds_of_digits_is_said_by_its_size_not_twice(text: str, said: str) -> None:
    """DISTQ_TASK_TIME_LIMIT of 5,000 digits (a float's inf) put all of them on the line
    twice, the setting's text and its item's ("is '999...': 999... s is out of range"),
    where every other number is said "about 10**4999" (distq.ranges)."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_AUTHKEY": "k", "DISTQ_TASK_TIME_LIMIT": text})
    assert str(caught.value) == f"DISTQ_TASK_TIME_LIMIT {said}"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("0", "is '0': the default limit is 0"),
        ("30,x=604800.5", "is '30,x=604800.5': the limit of 'x' is 604800.5"),
        ("x=1e6", "is 'x=1e6': the limit of 'x' is 1000000"),
        ("nan,x=1", "is 'nan,x=1': the default limit is nan"),
        ("x=1,-inf", "is 'x=1,-inf': the default limit is -inf"),
    ],
)
def test_a_limit_out_of_range_is_said_as_a_variables_number_is(text: str, said: str) -> None:
    """DISTQ_TASK_TIME_LIMIT=0 (and its flag, ``--task-time-limit 0``) said "is '0': 0 s
    is out of range; use 0.1 to 604800", where every other number out of range says "is
    0; use a number from 0.3 to 3600 seconds" (distq.ranges): now its item says so too,
    naming which limit."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"DISTQ_AUTHKEY": "k", "DISTQ_TASK_TIME_LIMIT": text})
    expected = f"DISTQ_TASK_TIME_LIMIT {said}; use a number from 0.1 to 604800 seconds"
    assert str(caught.value) == expected


def test_a_long_name_is_not_said_twice_in_its_limits_refusal() -> None:
    """``NAME=0`` with a name of 3,000 characters put it on the line twice, in the
    setting's text and again in "the limit of 'nnn...'" (6,070 characters): now the
    second time is its first 40 characters and "...", as a worker name too long is (and
    the setting's text, past 300 characters, its start and its length)."""
    name = "n" * 3000
    with pytest.raises(ValueError) as caught:
        TimeLimits.parse(f"30,{name}=0")
    said = str(caught.value)
    assert name not in said and len(said) < 500, len(said)
    assert said.startswith(f"is {f'30,{name}'[:300]!r}... (3,005 characters): "), said
    assert f": the limit of {name[:40]!r}... is 0; use a number from 0.1 to 604800" in said
    with pytest.raises(ValueError, match=r": the limit of 'short' is 0; use "):
        TimeLimits.parse("30,short=0")  # a name of 40 characters or fewer: all of it
