"""argparse ``type=`` parsers for the role flags (``--rate``, ``--timeout``, ...).

Each one refuses what would fail later or never end, in one ``argparse`` line (exit 2):
``float()`` reads ``nan`` and ``inf``, which pass a plain ``value <= 0`` check and then
crash the master (``--rate nan``), never time out (``--timeout nan``), or put ``NaN`` on
the wire (``--task-delay nan``). Seconds stop at :data:`MAX_SECONDS`: a longer wait
overflows a socket timeout or a sleep.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from distq.addresses import host_problem, unusable_as_a_host
from distq.limits import worker_name_problem
from distq.ranges import PORT, Number, out_of_range, shown_number, too_long, whole_numbers

#: Longest time a flag may give, in seconds (about 31 years): below every platform's
#: limit for ``time.sleep``, a socket timeout and a lock's wait.
MAX_SECONDS = 1_000_000_000.0
#: A whole number's text, which ``int()`` refuses only past its digits.
_WHOLE = re.compile(r"[+-]?[0-9]+")


def count(text: str) -> int:
    """A whole number, 1 or more."""
    return _whole(text, None)


def count_up_to(high: int) -> Callable[[str], int]:
    """A whole number from 1 to ``high``."""

    def parse(text: str) -> int:
        return _whole(text, high)

    return parse


def _whole(text: str, high: int | None, *, low: int = 1) -> int:
    """``text`` as a whole number from ``low`` to ``high`` (no ceiling: None), refused in the
    words a setting's variable uses (:func:`~distq.ranges.out_of_range`): "is 0; use a
    whole number from 1 to 10000". One too long for ``int()`` (past
    ``sys.get_int_max_str_digits()``, 4300 unless set) is said by its size
    (:func:`~distq.ranges.too_long`), not all its digits on the line."""
    wanted = whole_numbers(low, high)
    try:
        value = int(text)
    except ValueError:
        if _WHOLE.fullmatch(text.strip()):
            raise argparse.ArgumentTypeError(too_long(text.strip(), wanted)) from None
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(out_of_range(shown_number(value), wanted))
    return value


def number(
    low: float, high: float, *, zero: bool = False, unit: str = ""
) -> Callable[[str], float]:
    """A finite number above ``low`` (or equal to it with ``zero``), at most ``high``,
    refused out of range as a setting's variable is (:class:`~distq.ranges.Number`): "is
    nan; use a number greater than 0, at most 1000000000 seconds"."""
    checked = Number(float, low, high, unit, above=not zero)

    def parse(text: str) -> float:
        try:
            float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        try:
            return checked(text.strip())
        except ValueError as exc:  # "is 2000000000; use ...", "is about 10**4999; use ..."
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


#: Seconds greater than 0 (a timeout, an interval); and 0 or more (a delay, a patience).
seconds = number(0.0, MAX_SECONDS, unit=" seconds")
seconds_or_zero = number(0.0, MAX_SECONDS, zero=True, unit=" seconds")
#: A rate per second, greater than 0.
rate = number(0.0, 1e12)


def port(text: str) -> int:
    """A TCP port to connect to, 1 to 65535, refused as ``DISTQ_METRICS_PORT`` is (its
    range, :data:`~distq.ranges.PORT`): "is 70000; use a whole number from 1 to 65535"."""
    return _whole(text, PORT.high, low=PORT.low)


def host(text: str) -> str:
    """A host name or address to connect to: no spaces, control characters, '/' or '@'."""
    if unusable_as_a_host(text):  # the settings' own checks
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a host; use a name or an address, e.g. 127.0.0.1 or ::1"
        )

    if problem := host_problem(text.strip("[]")):
        raise argparse.ArgumentTypeError(f"{text!r} is {problem}")
    return text


def name(text: str) -> str:
    """A name other processes see and print (``--worker-id``): UTF-8 text on one line,
    not too long (:func:`~distq.limits.worker_name_problem`, which WorkerOptions runs too)."""
    problem = worker_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
