"""What the master and worker print: the tutorial's lines, a progress bar, errors.

Lines go to stdout in batches (one write and flush per batch, so a pipe shows them
live without a syscall per line). On a terminal, a long job shows a progress bar on
stderr instead of one line per task; off a terminal, plain lines always.

Output is never a reason to stop work: a stream that cannot be written any more (a
closed pipe, a full disk) is dropped, said once on the other stream if it still works,
and the process goes on without it, as Python's ``logging`` does. Otherwise a worker
whose stdout went away would fail each task it takes while printing its line.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

PROGRESS_THRESHOLD = 100  # tasks; shorter jobs print every line even on a terminal
#: Longest wait, in seconds, for a full non-blocking stderr to take the bar's last line.
BAR_CLOSE_WAIT = 2.0


class Progress:
    """A one-line bar redrawn at most ten times a second."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self._stream = total, stream
        self._start = self._drawn = time.monotonic()
        self.done = self._width = 0
        self._text = ""

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._drawn >= 0.1 or self.done >= self.total:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._draw_text(now)
        self._stream.write(f"\r{self._text}")
        self._stream.flush()

    def _draw_text(self, now: float) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        rate = self.done / max(now - self._start, 1e-9)
        self._text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{100 * self.done / max(self.total, 1):5.1f}% {rate:,.0f} tasks/s"
        )
        self._width = len(self._text)

    def clear(self) -> None:
        """Blank the bar's line, the cursor at its start: a line printed now takes it."""
        self._stream.write(self.clearing())
        self._stream.flush()

    def clearing(self) -> str:
        """What :meth:`clear` writes."""
        return f"\r{' ' * self._width}\r"

    def redraw(self) -> None:
        self._draw(time.monotonic())

    def close(self) -> None:
        self._draw(time.monotonic())
        self._stream.write("\n")
        self._stream.flush()

    def closing(self) -> str:
        """What :meth:`close` writes: the last drawing and the line's end."""
        self._draw_text(time.monotonic())
        return f"\r{self._text}\n"


def say(line: str) -> None:
    """A line of a command's output: on stdout as it is, whatever DISTQ_LOG_FORMAT says
    (that shapes diagnostics, which go to ``console.error``).

    A reader that left (``| head -1``, ``| grep -q``) is no failure of the command: the
    rest goes to /dev/null and its exit code still says how it went (a task ``submit``
    queued is queued; a traceback and exit 1 made a script submit it again).
    A stdout that cannot be written (a full disk, an I/O error) is said once on stderr,
    where the rest of the output then goes: a task ``submit`` queued, or the count of the
    letters ``requeue-dead`` moved, ended in a traceback and exit 1 though done.
    A non-blocking stdout that is full is waited for, as a blocking one is: its reader
    has yet to read, it has not gone."""
    stream = _OUTPUT[0] if _OUTPUT else sys.stdout
    try:
        if _non_blocking(stream):  # full for now is not gone: its reader has yet to read
            _waiting_write(stream, f"{line}\n")
        else:
            print(line, file=stream, flush=True)
    except BrokenPipeError:
        to_devnull(sys.stdout)
    except OSError as exc:
        if _OUTPUT:
            return  # stderr fails too: nowhere left to say anything
        _OUTPUT.append(sys.stderr)
        to_devnull(sys.stdout)
        with contextlib.suppress(OSError):
            print(
                f"distq: stdout cannot be written ({exc.strerror or exc}); the output goes "
                "to stderr",
                file=sys.stderr,
                flush=True,
            )
            print(line, file=sys.stderr, flush=True)


#: Where :func:`say` writes once stdout failed: stderr.
_OUTPUT: list[TextIO] = []


def _buffer(stream: TextIO) -> Any:
    """``stream``'s binary layer, if any (not a StringIO's)."""
    return getattr(stream, "buffer", None)


#: ASCII, each of its characters: what a stream's encoding must write as it is for bytes of
#: ASCII text to go straight into its buffer (not so in UTF-16, nor UTF-8 with a BOM)
_ASCII = bytes(range(128))
#: an encoding's name -> whether it writes :data:`_ASCII` as it is
_AS_IS: dict[str, bool] = {}


def _ascii_as_is(stream: TextIO) -> bool:
    """Whether ``stream``'s encoding writes ASCII text as its bytes, unchanged."""
    encoding = getattr(stream, "encoding", None) or ""
    known = _AS_IS.get(encoding)
    if known is None:
        try:
            known = _ASCII.decode("ascii").encode(encoding) == _ASCII
        except (LookupError, UnicodeError):  # no such encoding (a stand-in's "")
            known = False
        _AS_IS[encoding] = known
    return known


def _non_blocking(stream: TextIO) -> bool:
    """Whether ``stream``'s descriptor is O_NONBLOCK (a parent may leave a shared stdout
    so): a write may then take part of the text, or none, and raise BlockingIOError."""
    try:
        return hasattr(stream, "buffer") and not os.get_blocking(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO), closed
        return False


def _waiting_write(stream: TextIO, text: str, owed: bytes = b"") -> None:
    """``text`` to a non-blocking ``stream``, whole, waiting while it is full, as a write
    to a blocking one does: what its buffer took of each try is counted, and the rest
    written when the descriptor takes more. ``owed``, the end of a line whose start its
    buffer holds (:meth:`Console._blocked`), goes first."""
    buffer, fd = stream.buffer, stream.fileno()
    if owed:
        _waiting_put(buffer, fd, owed)
    with contextlib.suppress(BlockingIOError):  # what was written before goes first:
        stream.flush()  # into the buffer, if the descriptor is full (flushed below)
    _waiting_put(buffer, fd, text.encode(stream.encoding, stream.errors or "strict"))


def _waiting_put(buffer: Any, fd: int, data: bytes, until: float | None = None) -> bytes:
    """``data`` into ``buffer`` and out to its descriptor ``fd``, waiting while it is full
    (until ``until``, a ``time.monotonic()``, if given): what it did not take then."""
    while True:
        try:
            if data:  # what it took: all, in a buffer; part or None, unbuffered and full
                data = data[buffer.write(data) or 0 :]
            if not data:
                buffer.flush()
                return b""
        except BlockingIOError as exc:
            if data:  # the buffer took part: the rest is to come
                data = data[max(getattr(exc, "characters_written", 0), 0) :]
        wait = 1.0 if until is None else min(1.0, until - time.monotonic())
        if wait <= 0:
            return data
        select.select([], [fd], [], wait)


def waiting_write(stream: TextIO, text: str) -> None:
    """``text`` to a non-blocking ``stream``, whole, after the end of a line a
    :class:`Console` owes it, waiting while it is full (as on a blocking stream), under
    the output lock: a task's ``print()`` (:class:`distq.taskoutput.WholeLines`). It
    raised BlockingIOError to the task once the stream had taken part of its line: the
    line was cut there, and the worker's next line glued to it."""
    with _OUTPUT_LOCK[0]:
        _waiting_write(stream, text, _OWED.pop(id(stream), b""))


#: The lock of every write of a line to stdout or stderr in this process: the consoles'
#: and the tasks' own on a non-blocking stream (:func:`waiting_write`). Reentrant: a
#: signal handler's line, a finalizer's ``print()``, while its thread holds it. One lock,
#: not one per stream: a console whose two streams fail at once in two threads says so
#: on the other (:meth:`Console._lost`), and two stream locks taken in turn would
#: deadlock; and a second lock per line cost about 170 ns, 3 lines a task in JSON logs.
#: In a list, so that a forked child gets a free one (:func:`_fresh_lock_in_a_forked_child`).
_OUTPUT_LOCK = [threading.RLock()]
#: id() of a non-blocking stream that took the start of a line and not its end -> that
#: end, the first bytes it must take next (:meth:`Console._blocked`), whoever writes next.
_OWED: dict[int, bytes] = {}


def _fresh_lock_in_a_forked_child() -> None:
    """A process a task forks inherits the output lock, held by a thread it does not have
    (another slot's task waiting in its print() on a full non-blocking stdout): its own
    print() waited for it for good. It starts with a free one, and owes no line end (the
    worker's to write)."""
    _OUTPUT_LOCK[0] = threading.RLock()
    _OWED.clear()


os.register_at_fork(after_in_child=_fresh_lock_in_a_forked_child)


def _same_file(one: TextIO | None, other: TextIO | None) -> bool:
    """Whether two streams write to the same file, pipe or terminal (``2>&1``)."""
    try:
        a, b = os.fstat(one.fileno()), os.fstat(other.fileno())  # type: ignore[union-attr]
    except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO), closed, None
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def escaping(*streams: TextIO | None) -> None:
    """Write the characters a stream's encoding lacks as backslash escapes (``caf\\xe9``),
    as Python's own stderr does, instead of raising: under an ASCII or Latin-1 locale one
    task argument, worker name or error message outside it raised UnicodeEncodeError,
    which stopped `dead-letters` with a traceback, failed a task that printed it, and sent
    a worker's every later line to /dev/null as if stdout had gone."""
    for stream in streams:  # only "strict": surrogateescape passes a file name's bytes
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            with contextlib.suppress(Exception):  # a stream that cannot: as it was
                stream.reconfigure(errors="backslashreplace")


def to_devnull(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null, once its reader has gone (or its
    disk is full): what the process still writes there, a task's ``print()`` too, goes
    nowhere instead of raising, and the exit's flush is quiet."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no descriptor: nothing
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def announce(console: Console, line: str) -> None:
    """``console.info(line)`` from a signal handler. The handler may run while this
    thread is inside a write to the same stream (a write to a pipe interrupted by the
    signal): the buffered stream then raises ``RuntimeError: reentrant call``, which
    made a SIGTERM'd worker exit 1 with a traceback. Then the line goes straight to
    stderr's file descriptor instead, in the console's own format (a JSON line too),
    after the end of a line a full stderr cut, which it ran into otherwise, and on the
    bar's line blanked first (:func:`_straight_to_stderr`)."""
    try:
        console.info(line)
    except RuntimeError:
        _straight_to_stderr(console, console.rendered(line).encode(errors="backslashreplace"))


def _straight_to_stderr(console: Console, data: bytes) -> None:
    """``data``, whole lines, on file descriptor 2 (:func:`_owed_first`), on the bar's
    line blanked first if a bar is drawn (it went on at the bar's end); a descriptor
    gone drops it."""
    with _OUTPUT_LOCK[0]:
        if console.bar is not None:
            data = console.bar.clearing().encode() + data
        with contextlib.suppress(OSError):  # stderr gone: nothing to owe it
            _owed_first(console.err, data, _fd_took)


def _owed_first(stream: TextIO, data: bytes, put: Callable[[bytes], int]) -> bool:
    """The one rule of every write that may follow a line a full non-blocking ``stream``
    cut (:func:`_cut`): the end of that line goes first, then ``data``, handed to ``put``
    as one (it says how many bytes it took). What it did not take of the line's end is
    still owed, and ``data`` dropped; a line of ``data`` it cut owes its own end, and the
    lines after it are dropped. Whether it took all. Under the output lock."""
    owed = _OWED.pop(id(stream), b"")
    whole = owed + data
    taken = put(whole) if whole else 0
    if taken >= len(whole):
        return True
    if taken < len(owed):  # the line's end still first, whoever writes next
        _OWED[id(stream)] = owed[taken:]
        return False
    return _cut(id(stream), whole, taken)


def _cut(key: int, data: bytes, taken: int) -> bool:
    """A non-blocking stream (``id()`` ``key``) took only ``taken`` bytes of ``data`` (its
    buffer keeps them, to go out in order): the rest of a line it took the start of is
    owed, to go before anything else, lest a reader see half a line run into the next
    one. The lines after it are dropped. Whether all of ``data`` is to go out."""
    if taken <= 0 or data[taken - 1 : taken] == b"\n":  # no line cut: the rest dropped
        return False
    end = data.find(b"\n", taken)
    _OWED[key] = data[taken:] if end < 0 else data[taken : end + 1]
    return end < 0 or end + 1 == len(data)


def _fd_took(data: bytes) -> int:
    """What file descriptor 2 took of ``data`` (a full non-blocking one: none)."""
    try:
        return os.write(2, data)
    except BlockingIOError:
        return 0


def _buffer_took(buffer: Any, data: bytes) -> int:
    """What a stream's binary layer ``buffer`` took of ``data``: all, into its buffer;
    part or none, full and non-blocking (unbuffered: what its descriptor took)."""
    try:
        return buffer.write(data) or 0
    except BlockingIOError as exc:
        return max(getattr(exc, "characters_written", 0), 0)


class Console:
    """Output for one process; ``quiet`` keeps only summaries and errors."""

    def __init__(
        self, quiet: bool = False, out: TextIO | None = None, err: TextIO | None = None
    ) -> None:
        self.quiet = quiet
        #: Whether :meth:`lines` prints per-task lines: callers skip formatting them if not.
        #: An attribute, set once (``quiet`` is fixed at construction), not a property: a
        #: worker reads it for each task and a master for each result, and a property's
        #: call cost 670 instructions a read (callgrind), an attribute's read about 40.
        self.task_lines = not quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.bar: Progress | None = None
        self._gone: set[int] = set()  # id() of streams that failed: written no more
        # id() of a stream -> whether its text goes as bytes (:meth:`write`)
        self._precise: dict[int, bool] = {}
        # id() of a stream -> the stream, its encoding, and its binary layer if bytes of
        # ASCII go into it as they are, else None (:meth:`_binary`)
        self._binaries: dict[int, tuple[TextIO, Any, Any]] = {}
        # stdout and stderr onto one pipe or terminal (2>&1, a TTY): each waits for the other
        self._one_file = _same_file(self.out, self.err)

    def start_progress(self, total: int) -> None:
        """Show a bar instead of per-task lines when stderr is a terminal and the job is long."""
        if not self.quiet and total >= PROGRESS_THRESHOLD and self._terminal(self.err):
            self.bar = Progress(total, self.err)

    def _terminal(self, stream: TextIO | None) -> bool:
        """Whether ``stream`` is a terminal this console still writes: not one that
        failed, is closed, or is None (the process started with it closed: ``2>&-``)."""
        if stream is None or id(stream) in self._gone:
            return False
        try:
            return stream.isatty()
        except (OSError, ValueError, AttributeError):
            return False

    def lines(self, lines: Iterable[str], count: int | None = None) -> None:
        """Per-task lines: printed as one write, or counted on the progress bar."""
        if self.quiet:
            return
        if self.bar is not None:
            counted = count if count is not None else sum(1 for _ in lines)
            self._drawing(self.bar.advance, counted)
            return
        text = "\n".join(lines)
        if text:
            self.write(self.out, text + "\n")

    def task_line(self, line: str) -> None:
        """One per-task line, as ``lines([line])`` prints it, without a list made and
        joined (about 640 instructions a line, callgrind): a worker's ``Get task ...``,
        written alone before its task runs, so that the last one of a worker a task
        killed names that task."""
        if self.quiet:
            return
        if self.bar is not None:
            self._drawing(self.bar.advance, 1)
            return
        self.write(self.out, line + "\n")

    def end_progress(self) -> None:
        """Close the bar, if any (the job is over): its last state stays on its line."""
        if self.bar is not None:
            bar = self.bar
            if _non_blocking(self.err):
                self._close_waiting(bar)
            else:
                self._drawing(bar.close)
            self.bar = None

    def _close_waiting(self, bar: Progress) -> None:
        """Close ``bar`` on a non-blocking stderr, waiting at most :data:`BAR_CLOSE_WAIT`
        while it is full: a close skipped left the line open, and the summary printed
        next on stdout, the same terminal, went on it (or was dropped, stdout full too)."""
        err = self.err
        with _OUTPUT_LOCK[0]:
            try:
                with contextlib.suppress(BlockingIOError):  # what it holds goes first
                    err.flush()
                until = time.monotonic() + BAR_CLOSE_WAIT
                buffer, fd = err.buffer, err.fileno()
                closing = bar.closing().encode(err.encoding, err.errors or "strict")
                took = _owed_first(
                    err,
                    closing,
                    lambda data: len(data) - len(_waiting_put(buffer, fd, data, until)),
                )
                if not took and id(err) not in _OWED:  # none of it: the bar's line is
                    _OWED[id(err)] = closing  # open, the close is its end, owed
            except (OSError, ValueError, AttributeError):
                self._lost(err)

    def info(self, line: str) -> None:
        """A line that always prints: start, summary, exit. One during a job (a status
        line, "reconnected ...") goes above the bar, which goes on below it: it ended
        the bar, and each task after it printed its own lines (master17)."""
        if self.bar is not None and self.bar.done < self.bar.total:
            self._above_bar(self.out, line + "\n")
            return
        self.end_progress()
        self.write(self.out, line + "\n")

    def error(self, line: str) -> None:
        self.logged(f"distq: {line}")

    def logged(self, text: str) -> bool:
        """``text``, a line already formatted (a Python logging record's), on stderr as
        :meth:`error` writes one: under the output lock, after the end of a line a full
        stderr cut, never onto the bar's line. Whether it was all taken (:meth:`write`)."""
        if self.bar is not None:  # not written onto the end of the bar's line
            return self._above_bar(self.err, f"{text}\n")
        return self.write(self.err, f"{text}\n")

    def _above_bar(self, stream: TextIO, text: str) -> bool:
        assert self.bar is not None
        self._drawing(self.bar.clear)
        taken = self.write(stream, text)
        if self.bar is not None:
            self._drawing(self.bar.redraw)
        return taken

    def _drawing(self, draw: Callable[..., None], *args: int) -> None:
        """Draw the bar on stderr. A non-blocking stderr full for now (EAGAIN) skips this
        drawing only: the next one draws the whole bar again. One that cannot be written
        any more (closed, an I/O error) is dropped, and the bar with it. A drawing goes
        after the end of a line stderr owes (:func:`_owed_first`): it went into the
        middle of that line; still owed, this drawing is skipped."""
        with _OUTPUT_LOCK[0]:
            try:
                if _OWED and not self._pay(self.err):
                    return
                draw(*args)
            except BlockingIOError:
                pass
            except (OSError, ValueError):
                self.bar = None  # stderr is gone, and the bar with it
                self._lost(self.err)

    def rendered(self, line: str) -> str:
        """``line`` as :meth:`info` writes it, for a write that cannot go through the
        stream (:func:`announce`)."""
        return f"{line}\n"

    def write(self, stream: TextIO, text: str | bytes) -> bool:
        """Write ``text`` to ``stream`` and flush; a stream that fails is dropped.
        False when a non-blocking ``stream`` was full (EAGAIN): ``text`` may be dropped,
        whole lines of it (:meth:`_blocked`). ``text`` as bytes is ASCII (JSON lines): it
        goes straight into the stream's buffer where its encoding writes ASCII as it is,
        with no decoding and encoding again (:func:`_ascii_as_is`).

        One thread at a time (a worker's slots write their lines from their own, its
        tasks' print() too: :func:`waiting_write`), under the output lock: what a full
        non-blocking stream took of the text is then this text's (:meth:`_blocked`).
        Reentrant, for a signal handler's line (:func:`announce`) and :meth:`_lost`'s.
        Its steps are in its own body, not in a method it calls under the lock: that call
        cost about 400 instructions a line, text or JSON (callgrind)."""
        if id(stream) in self._gone:
            return True
        lock = _OUTPUT_LOCK[0]
        lock.acquire()  # not ``with``: 80 ns more a line
        try:
            if self._one_file and not self._other_out(stream):
                return False  # still full: this text only, the other stream's line goes first
            if _OWED and not self._pay(stream):
                return False  # still full: this text only, the line it owes goes first
            try:  # noqa: SIM105  # (suppress() costs 0.3 µs a line) what others left
                stream.flush()  # unflushed (a task's print()): the stream then holds only ``text``
            except BlockingIOError:
                pass
            if isinstance(text, bytes):  # ASCII: as it is into the buffer, after the flush above
                binary = self._binaries.get(id(stream))
                if binary is None or (binary[2] is not None and binary[1] != stream.encoding):
                    binary = self._binary(stream)  # new, or its encoding reconfigured since
                if binary[2] is not None:
                    return self._put_bytes(stream, binary[2], text)
                text = text.decode("ascii")
            precise = self._precise.get(id(stream))
            if precise is None:  # unbuffered (PYTHONUNBUFFERED=1): see below
                precise = self._precise[id(stream)] = type(_buffer(stream)) is io.FileIO
            if not precise:  # the fast way (a worker writes a line a task), till it is full
                try:
                    stream.write(text)
                    stream.flush()
                    return True
                except BlockingIOError as exc:  # its bytes from now on (below)
                    if _buffer(stream) is None:
                        return False
                    self._precise[id(stream)] = True
                    taken = getattr(exc, "characters_written", 0)  # 0: whole in its buffer,
                    if taken <= 0:  # or none of it: said as may be dropped
                        return False
                    data = text.encode(stream.encoding, stream.errors or "strict")
                    return self._blocked(stream, data, taken)
            # its bytes, to know what a full non-blocking descriptor took: a text stream's
            # write says nothing of it (unbuffered, it drops the rest without a word)
            buffer = _buffer(stream)
            if buffer is None:  # another stream now under the id() of one that had it
                stream.write(text)
                stream.flush()
                return True
            return self._put_bytes(
                stream, buffer, text.encode(stream.encoding, stream.errors or "strict")
            )
        except BlockingIOError:  # a non-blocking stream, full for now: this text only
            return False
        except UnicodeEncodeError:  # not a stream gone: a character it cannot take
            if isinstance(text, str):  # (bytes are ASCII, which any encoding here takes)
                encoding = getattr(stream, "encoding", None) or "ascii"
                escaped = text.encode(encoding, "backslashreplace").decode(encoding)
                if escaped != text:  # else it was no character of the text's: gone after all
                    return self.write(stream, escaped)
            self._lost(stream)
        except (OSError, ValueError, AttributeError):  # a closed pipe or file, a full disk;
            self._lost(stream)  # None: the process started with that descriptor closed
        finally:
            lock.release()
        return True

    def _binary(self, stream: TextIO) -> tuple[TextIO, Any, Any]:
        """``stream``, its encoding, and its binary layer where bytes of ASCII go into it as
        they are (:func:`_ascii_as_is`), else None; remembered for its next bytes: looked
        up on each write, the two cost about 570 instructions a JSON line (callgrind).
        Looked up again once its encoding changed (``reconfigure()``). The stream is held,
        so that its ``id()`` is no other stream's while remembered (a console writes its
        own two, which it holds anyway)."""
        buffer = _buffer(stream)
        if buffer is not None and not _ascii_as_is(stream):
            buffer = None
        binary = self._binaries[id(stream)] = (stream, getattr(stream, "encoding", None), buffer)
        return binary

    def _put_bytes(self, stream: TextIO, buffer: Any, data: bytes) -> bool:
        """``data``, ``stream``'s text as bytes, into its binary layer ``buffer`` (:meth:`write`
        handles what it raises), so that what a full non-blocking descriptor took of it is
        known: a text stream's write says nothing of it (unbuffered, it drops the rest
        without a word). The bytes of JSON lines go the same way."""
        try:  # all of it, into a buffer; unbuffered, what the descriptor took (None: none)
            taken = buffer.write(data)
        except BlockingIOError as exc:  # a full buffer took part of it, or none
            taken = max(getattr(exc, "characters_written", 0), 0)
        if taken is None or taken < len(data):
            return self._blocked(stream, data, taken or 0)
        try:  # noqa: SIM105
            buffer.flush()
        except BlockingIOError:
            pass  # whole in its buffer: it goes out in order, ahead of the next write
        return True

    def _blocked(self, stream: TextIO, data: bytes, taken: int) -> bool:
        """A non-blocking ``stream`` took only ``taken`` bytes of a text, ``data`` (its
        buffer keeps them, to go out in order): the rest of a line it took the start of is
        owed, to go before anything else, lest a reader see half a line run into the next
        one. The lines after it are dropped. Whether all of the text is to go out."""
        return _cut(id(stream), data, taken)

    def _other_out(self, stream: TextIO) -> bool:
        """Whether the other of stdout and stderr, onto the same file as ``stream``, has
        put out all it holds (the end of a line it owes, its buffer), so that ``stream``'s
        text goes after it, not into the middle of its line."""
        if stream is self.out:
            other = self.err
        elif stream is self.err:
            other = self.out
        else:
            return True
        if other is stream or id(other) in self._gone:
            return True
        if _OWED and not self._pay(other):
            return False
        try:
            other.flush()
        except BlockingIOError:
            return False  # its buffer still holds the rest of a line
        except (OSError, ValueError):
            pass  # gone: its own next write finds out and drops it
        except RuntimeError:
            pass  # a signal handler's line, this thread inside the other's write: no waiting
        return True

    def _pay(self, stream: TextIO) -> bool:
        """Hand ``stream`` the end of the line it owes (:meth:`_blocked`), if any, ahead
        of anything else (:func:`_owed_first`), into its buffer, after the line's start:
        whether it took it all, else it owes what is left of it."""
        if id(stream) not in _OWED:
            return True
        return _owed_first(stream, b"", lambda data: _buffer_took(stream.buffer, data))

    def _lost(self, stream: TextIO) -> None:
        """``stream`` failed: drop it, and say so once on the other one (in this
        console's own format), if that still works."""
        self._gone.add(id(stream))
        if stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            to_devnull(stream)  # the process's own: a task's print() there raised too
        if stream is self.out:
            self.error("stdout cannot be written any more; going on without it")
        else:
            self.info("distq: stderr cannot be written any more; going on without it")
