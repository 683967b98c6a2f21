"""What a worker's tasks print: stdout and stderr a whole line at a time.

A worker's slots run tasks in threads of one process, and a task's ``print()`` shares
the streams with the other slots' tasks and with the worker's own lines (text or JSON).
:func:`whole_lines` puts :class:`WholeLines` in place of ``sys.stdout`` and
``sys.stderr`` while the worker runs, so no line is split by another's, and a stream
whose reader has gone fails no task.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from distq.console import _non_blocking, to_devnull, waiting_write


@contextlib.contextmanager
def whole_lines() -> Iterator[None]:
    """A task's ``print()`` reaches stdout and stderr a whole line at a time, not split by
    another slot's line, and without raising once their reader has gone
    (:class:`WholeLines`)."""
    streams = sys.stdout, sys.stderr
    # None: the process started with that descriptor closed; print() skips it then
    out, err = (None if stream is None else WholeLines(stream) for stream in streams)
    sys.stdout, sys.stderr = out or streams[0], err or streams[1]
    try:
        yield
    finally:
        for stream in (out, err):
            with contextlib.suppress(Exception):  # a reader gone: nothing more to say
                if stream is not None:
                    stream.flush_all()
        sys.stdout, sys.stderr = streams


class WholeLines:
    """``sys.stdout`` or ``sys.stderr`` for a worker's tasks: each thread's text reaches
    the stream a whole line at a time, and a stream that cannot be written any more
    takes it without raising.

    ``print()`` writes its text and its line end in two calls, and a JSON line another
    slot wrote between them was glued to the text (one in five, with four slots that
    printed). Text without a line end waits for one, or for a ``flush()`` (then it is
    written as it is: a progress display still glues the next line to it, as the README
    says), for more text past ``MOST_HELD`` characters, for its thread's end (written at
    the next write of any thread) or for :meth:`flush_all` at the worker's exit. A stream
    whose reader has gone (``distq worker | head -1``, a log shipper that died) raised
    ``BrokenPipeError`` in each task that printed, which failed it for good: now it
    points at /dev/null, as distq's own lines do (:func:`distq.console.to_devnull`). A
    stream a task closed takes text without raising too. A non-blocking stream that is
    full for now makes the task wait, as a blocking one would
    (:func:`distq.console.waiting_write`): it raised BlockingIOError to the task once the
    stream had taken part of its line, cut there, the worker's next line glued to it.
    """

    MOST_HELD = 65536

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        # text without its line end yet, by thread: each thread sets only its own entry,
        # so no lock (one let a finalizer that printed, run by a collection inside it,
        # wait for good on the lock its own thread held: every slot hung)
        self._held: dict[threading.Thread, str] = {}
        _streams.add(self)

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # as a text stream says it
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        me = threading.current_thread()
        end = text.rfind("\n") + 1
        held = self._held.pop(me, "")
        if end == 0 and len(held) < self.MOST_HELD:
            self._held[me] = held + text  # a long line's print() stays one piece
            return len(text)
        if end == 0:  # past the bound: what was held goes, this waits for its end
            out = held
            self._held[me] = text
        else:
            out = held + text[:end]
            if end < len(text):
                self._held[me] = text[end:]
        self._write(out + self._ended())
        return len(text)

    def _ended(self) -> str:
        """The text threads that have ended left without a line end."""
        if not self._held:
            return ""
        gone = [t for t in list(self._held) if not t.is_alive()]
        return "".join([self._held.pop(t, "") for t in gone])

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        held = self._held.pop(threading.current_thread(), "") + self._ended()
        self._write(held, flush=True)

    def flush_all(self) -> None:
        """Every thread's text, at the worker's exit: a slot's last text without a line
        end was lost with it."""
        held = "".join([self._held.pop(t, "") for t in list(self._held)])
        self._write(held, flush=True)

    def _write(self, text: str, flush: bool = False) -> None:
        try:
            if _non_blocking(self.stream):  # full for now is not gone: the task waits, as
                waiting_write(self.stream, text)  # on a blocking one (and flushes)
                return
            if text:
                self.stream.write(text)
            if flush:
                self.stream.flush()
        except BlockingIOError:  # full for now, and no descriptor to wait for: the task's
            raise
        except OSError:  # a closed pipe, a full disk: the task's output goes nowhere
            to_devnull(self.stream)
        except ValueError:  # closed (a task's own TextIOWrapper of its buffer, collected)
            if not getattr(self.stream, "closed", False):
                raise

    def __getattr__(self, name: str) -> Any:  # encoding, fileno(), isatty(), buffer, ...
        return getattr(self.stream, name)


#: Every :class:`WholeLines`, for :func:`_held_text_stays_with_the_parent`.
_streams: weakref.WeakSet[WholeLines] = weakref.WeakSet()


def _held_text_stays_with_the_parent() -> None:
    """A process a task forks inherits the text the streams held without a line end, the
    worker's to write: the child's first line wrote it too (another slot's, and the
    forking task's), so each such text reached the stream twice. The child starts with
    none."""
    for stream in list(_streams):
        stream._held.clear()


os.register_at_fork(after_in_child=_held_text_stays_with_the_parent)
