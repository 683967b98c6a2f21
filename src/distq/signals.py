"""The signals that stop a master or a worker, and the exit a stop signal raises while it
starts up, made sure of."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from distq.errors import SignalExit

#: How long the :class:`SignalExit` a stop signal raised while starting up may take to end
#: the process; past it, the exception was swallowed (code that catches everything) and
#: the process exits at once.
LEAVE_WITHIN = 2.0


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGINT and SIGHUP: each stops a master or worker the same way.

    SIGHUP is what a process gets when its terminal closes (an SSH session that drops):
    unhandled, it ended a worker at once, its tasks back only when their leases lapsed,
    and a master without its report. It is left alone when it is ignored, as
    ``nohup distq worker`` asks: such a process is meant to outlive its terminal.
    """
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        return (signal.SIGTERM, signal.SIGINT)
    return (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def exit_now(code: int) -> NoReturn:
    """Exit ``code`` at once, the lines said so far flushed: nothing else runs."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader gone: the exit code still says it
            stream.flush()
    os._exit(code)


def leave_surely(code: int) -> None:
    """Called by a stop signal's handler just before it raises ``SignalExit(code)``. The
    handler runs wherever the main thread is, and there Python may swallow the exception:
    in a finalizer (a ``__del__``, a weakref callback: "Exception ignored in", a traceback,
    and the process went on connecting until its --connect-timeout), or in code that
    catches everything. Such an exit is taken where :func:`leave_if_asked` is called (the
    attempts to reach the broker), as a stop's, or after :data:`LEAVE_WITHIN` s (an alarm),
    unless :func:`leave_under_way` says it is under way; a finalizer's prints nothing."""
    if not isinstance(sys.unraisablehook, _SwallowedExit):
        sys.unraisablehook = _SwallowedExit(sys.unraisablehook)
    previous = signal.signal(signal.SIGALRM, lambda _signum, _frame: exit_now(code))
    if not _ARMED:  # a second signal's: the handler found is still the first one's
        _ARMED.append(signal.SIG_DFL if previous is None else previous)
    _ASKED[:] = [code]
    signal.setitimer(signal.ITIMER_REAL, LEAVE_WITHIN)


def leave_if_asked() -> None:
    """Raise the ``SignalExit`` of a stop asked while starting up whose exception was
    swallowed, if any: called where the process would start its work, it ends there
    rather than at the alarm, in the middle of that work."""
    if _ASKED:
        raise SignalExit(_ASKED[0])


def leave_under_way() -> None:
    """The process is on its way out (the ``SignalExit``, or an error it was turned into,
    reached the code that ends it): no alarm to cut its wait, SIGALRM's handler as it was."""
    _ASKED.clear()
    if _ARMED:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, _ARMED.pop())


#: The SIGALRM handler :func:`leave_surely` replaced, while its alarm is armed.
_ARMED: list[Any] = []
#: The exit code a stop asked for while starting up, until the process is on its way out.
_ASKED: list[int] = []


class _SwallowedExit:
    """``sys.unraisablehook`` that keeps quiet about a swallowed ``SignalExit`` (its line
    is said, its exit taken by :func:`leave_if_asked` or the alarm) and hands every other
    exception to the hook it found."""

    def __init__(self, found: Callable[[Any], object]) -> None:
        self.found = found

    def __call__(self, unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not isinstance(exc, SignalExit):
            self.found(unraisable)
