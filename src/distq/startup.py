"""The ``distq`` command's entry point, and ``python -m distq``'s: its stop signals held
from its first line.

:mod:`distq.cli` and what it imports take 0.2 s (more on a loaded machine) before its
``main()`` puts in the handlers of SIGTERM, SIGINT and SIGHUP. A signal in that window
(a scale-in right after a scale-out, ``make down`` right after ``up``) met Python's
default: exit 143 and no line, where a worker says "SIGTERM while connecting: worker
exit" and exits 0. Here, stdlib only, each is held until the command's own handlers take
over (:func:`taken`), which act on it as on one that arrives then; a command that puts
in none gets the handlers found back (:func:`hand_back`), and the signal with them.

Only these entry points hold signals: importing :mod:`distq` (an :class:`~distq.Executor`
in a program) leaves the program's handlers alone.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's own: its import is 0.02 s of the window held here
if TYPE_CHECKING:
    import signal  # the same functions, typed: _signal has no stubs
    from collections.abc import Sequence
    from types import FrameType
    from typing import Any
else:  # signal's C half: signal.py's enums import 0.01 s more (enum, functools, collections)
    import _signal as signal

#: The first stop signal that came while held, until it is taken or handed back.
_HELD: list[int] = []
#: Each signal held, and the handler it had before.
_FOUND: dict[int, Any] = {}


def _hold(signum: int, _frame: FrameType | None) -> None:
    if not _HELD:
        _HELD.append(signum)


def hold() -> None:
    """Hold SIGTERM, SIGINT and SIGHUP (not an ignored SIGHUP: ``nohup``'s, as
    :func:`distq.signals.stop_signals` leaves it) until :func:`taken` or :func:`hand_back`."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        found = signal.getsignal(sig)
        if sig == signal.SIGHUP and found == signal.SIG_IGN:
            continue
        _FOUND[sig] = found
        signal.signal(sig, _hold)


def taken() -> int | None:
    """Called once the command's own handlers are in place: the signal held, if any, for
    them to act on; from now on nothing is held, nor handed back."""
    _FOUND.clear()
    return _HELD.pop() if _HELD else None


def found(sig: int) -> Any:
    """The handler ``sig`` had before it was held (its handler now if it is not): the one
    to put back after replacing a held signal's, not the holding one, which would hold
    for good what comes after."""
    return _FOUND.get(sig, signal.getsignal(sig))


def hand_back() -> None:
    """Put back the handlers found where the signals are still held, then raise the
    signal held, if any: the command goes on (or ends) as if it came now."""
    for sig, found in _FOUND.items():
        if signal.getsignal(sig) is _hold:
            signal.signal(sig, found)
    _FOUND.clear()
    if _HELD:
        signal.raise_signal(_HELD.pop())


def main(argv: Sequence[str] | None = None) -> int:
    """``distq ARGV``: :func:`distq.cli.main`, its stop signals held while it imports
    (the containers' entrypoints too: a pod's SIGTERM may come as it starts)."""
    hold()
    try:
        if _probe(argv):  # a healthcheck, run every few seconds: none of the rest imported
            from distq.probe import main as probe_main

            return probe_main(argv)
        from distq.cli import main as cli_main  # the imports held signals wait out

        return cli_main(argv)
    finally:
        hand_back()  # a command that put in no handlers: as it would have gone


def _probe(argv: Sequence[str] | None) -> bool:
    """Whether the command is ``distq probe``: what a compose healthcheck runs in each
    container every 5 s, which took 0.25 s of CPU to import all of distq (a fifth of a
    core for a master and three workers), 0.06 to 0.10 s with only what a probe uses."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    return bool(args) and args[0] == "probe"
