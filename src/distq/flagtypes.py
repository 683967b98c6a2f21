"""argparse ``type=`` parsers for the role flags (``--rate``, ``--timeout``, ...).

Each one refuses what would fail later or never end, in one ``argparse`` line (exit 2):
``float()`` reads ``nan`` and ``inf``, which pass a plain ``value <= 0`` check and then
crash the master (``--rate nan``), never time out (``--timeout nan``), or put ``NaN`` on
the wire (``--task-delay nan``). Seconds stop at :data:`MAX_SECONDS`: a longer wait
overflows a socket timeout or a sleep.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from distq.addresses import host_problem, unusable_as_a_host
from distq.limits import worker_name_problem

#: Longest time a flag may give, in seconds (about 31 years): below every platform's
#: limit for ``time.sleep``, a socket timeout and a lock's wait.
MAX_SECONDS = 1_000_000_000.0


def count(text: str) -> int:
    """A whole number, 1 or more."""
    return _whole(text, "1 or more")


def count_up_to(high: int) -> Callable[[str], int]:
    """A whole number from 1 to ``high``."""

    def parse(text: str) -> int:
        value = _whole(text, f"1 to {high}")
        if value > high:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; use 1 to {high}")
        return value

    return parse


def _whole(text: str, wanted: str) -> int:
    """``text`` as a whole number of 1 or more; ``wanted`` says the range of one too long
    for ``int()`` (past ``sys.get_int_max_str_digits()``, 4300 unless set), by its size:
    it was "not a whole number", all its digits on the line."""
    try:
        value = int(text)
    except ValueError:
        digits = text.strip().lstrip("+-")
        if digits.isascii() and digits.isdigit():
            raise argparse.ArgumentTypeError(
                f"a number of {len(digits):,} digits is out of range; use {wanted}"
            ) from None
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def number(low: float, high: float, *, zero: bool = False) -> Callable[[str], float]:
    """A finite number above ``low`` (or equal to it with ``zero``), at most ``high``."""
    wanted = f"from {low:g} to {high:.0f}" if zero else f"greater than {low:g}, at most {high:.0f}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = low <= value if zero else low < value
        if not (above and value <= high):  # NaN fails both
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; use a number {wanted}")
        return value

    return parse


#: Seconds greater than 0 (a timeout, an interval); and 0 or more (a delay, a patience).
seconds = number(0.0, MAX_SECONDS)
seconds_or_zero = number(0.0, MAX_SECONDS, zero=True)
#: A rate per second, greater than 0.
rate = number(0.0, 1e12)


def port(text: str) -> int:
    """A TCP port to connect to, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; use a port from 1 to 65535")
    return value


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
