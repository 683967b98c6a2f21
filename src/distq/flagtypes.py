"""argparse ``type=`` parsers for the role flags (``--rate``, ``--timeout``, ...).

Each one refuses what would fail later or never end, in one ``argparse`` line (exit 2):
``float()`` reads ``nan`` and ``inf``, which pass a plain ``value <= 0`` check and then
crash the master (``--rate nan``), never time out (``--timeout nan``), or put ``NaN`` on
the wire (``--task-delay nan``). Seconds stop at :data:`MAX_SECONDS`: a longer wait
overflows a socket timeout or a sleep.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from distq.addresses import host_problem, unusable_as_a_host
from distq.limits import worker_name_problem
from distq.ranges import (
    PORT,
    SHOWN_LINE,
    Number,
    cut,
    out_of_range,
    shown_number,
    whole,
    whole_numbers,
)

#: Longest time a flag may give, in seconds (about 31 years): below every platform's
#: limit for ``time.sleep``, a socket timeout and a lock's wait.
MAX_SECONDS = 1_000_000_000.0


_T = TypeVar("_T")


def _flag(read: Callable[[str], _T]) -> Callable[[str], _T]:
    """``read`` as a flag's ``type=``: the text stripped, as a setting's variable is
    (:meth:`~distq.config.Setting.read`), and its ``ValueError``, said in the variable's
    words ("is 0; use a whole number from 1 to 10000"), argparse's one line (exit 2)."""

    def parse(text: str) -> _T:
        try:
            return read(text.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _one_or_more(text: str) -> int:
    """A whole number with no ceiling, read by the one rule of every variable and flag
    (:func:`~distq.ranges.whole`: ASCII digits, where ``int()`` took "+5", "9_100" and
    fullwidth digits): "is 0; use a whole number, 1 or more"."""
    wanted = whole_numbers(1)
    value = whole(text, wanted)
    if value < 1:
        raise ValueError(out_of_range(shown_number(value), wanted))
    return value


def _any_whole(text: str) -> int:
    """Any whole number (``--seed``), read as a count is: one past ``int()``'s digits is
    said by its size, not as argparse's "invalid int value" with every digit on the line."""
    most = sys.get_int_max_str_digits()
    return whole(text, f"a whole number of at most {most} digits (Python's limit for its text)")


#: A whole number, 1 or more.
count = _flag(_one_or_more)
#: Any whole number (``--seed``).
seed = _flag(_any_whole)


def count_up_to(high: int) -> Callable[[str], int]:
    """A whole number from 1 to ``high``, refused as a variable of that range is."""
    return _flag(Number(int, 1, high))


def number(
    low: float, high: float, *, zero: bool = False, unit: str = ""
) -> Callable[[str], float]:
    """A finite number above ``low`` (or equal to it with ``zero``), at most ``high``,
    refused out of range as a setting's variable is (:class:`~distq.ranges.Number`): "is
    nan; use a number greater than 0, at most 1000000000 seconds"."""
    return _flag(Number(float, low, high, unit, above=not zero))


#: Seconds greater than 0 (a timeout, an interval); and 0 or more (a delay, a patience).
seconds = number(0.0, MAX_SECONDS, unit=" seconds")
seconds_or_zero = number(0.0, MAX_SECONDS, zero=True, unit=" seconds")
#: A rate per second, greater than 0.
rate = number(0.0, 1e12)
#: A TCP port to connect to, 1 to 65535, refused as ``DISTQ_METRICS_PORT`` is (its range,
#: :data:`~distq.ranges.PORT`): "is 70000; use a whole number from 1 to 65535".
port = _flag(PORT)


def host(text: str) -> str:
    """A host name or address to connect to: no spaces, control characters, '/' or '@'."""
    if unusable_as_a_host(text):  # the settings' own checks
        raise argparse.ArgumentTypeError(
            f"{cut(text, SHOWN_LINE)} is not a host; use a name or an address, e.g. 127.0.0.1 "
            "or ::1"
        )

    if problem := host_problem(text.strip("[]")):
        raise argparse.ArgumentTypeError(f"{cut(text, SHOWN_LINE)} is {problem}")
    return text


def name(text: str) -> str:
    """A name other processes see and print (``--worker-id``): UTF-8 text on one line,
    not too long (:func:`~distq.limits.worker_name_problem`, which WorkerOptions runs too)."""
    problem = worker_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
