"""Log lines: passwords masked everywhere, and JSON lines when ``DISTQ_LOG_FORMAT=json``.

Text (the default) is what :class:`~distq.console.Console` prints, unchanged.
:class:`JsonConsole` prints the same events as one JSON object per line instead, on
the same streams (stdout; errors on stderr), each with ``timestamp``, ``level``,
``role`` and, in a worker, ``worker``. Per-task events carry ``task_id``, ``task``,
``attempt``, ``duration``, ``outcome``, so one task can be followed from the master's
``task submitted`` through the worker's ``task settled`` to the master's ``result``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import msgspec

from distq.console import Console
from distq.credentials import MASK, mask_query
from distq.errortext import cut, describe

#: JSON of a log object; what JSON cannot carry is written as its str(), as json's default=str
_encoder = msgspec.json.Encoder(enc_hook=str)
_encode, _encode_lines = _encoder.encode, _encoder.encode_lines

# scheme://user:password@ : the password is whatever runs up to the last '@' of the netloc
_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^/\s]*@")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it masked (for messages from elsewhere):
    in the user part and in a query parameter (``?password=``)."""
    return mask_query(_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASK}@", text))


def timestamp(at: float) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. ``2026-11-29T10:15:02.123Z``."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _rounded(at: float) -> tuple[float, int]:
    """``at`` in whole seconds and microseconds, rounded half to even as datetime rounds
    a timestamp (``datetime.fromtimestamp``)."""
    fraction, whole = math.modf(at)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        return whole + 1.0, micro - 1_000_000
    if micro < 0:
        return whole - 1.0, micro + 1_000_000
    return whole, micro


#: The second last formatted, by any console, and its timestamp's start (``...T10:15:02.``)
_second: tuple[float, str] = (math.nan, "")


#: A timestamp's end by its millisecond: ``"007Z"`` for 7, looked up where an f-string's
#: ``:03`` format took about 2,500 instructions a millisecond (callgrind)
_MILLIS = tuple(f"{ms:03}Z" for ms in range(1000))


def _stamp_of(whole: float, micro: int) -> str:
    """:func:`timestamp` of ``whole`` seconds and ``micro`` microseconds (:func:`_rounded`),
    datetime's formatting of its second (12,800 instructions) done once a second."""
    global _second  # a tuple replaced whole: each thread sees one second's
    second = _second
    if second[0] != whole:
        second = _second = (whole, timestamp(whole)[:-4])  # without ".000Z"
    return second[1] + _MILLIS[micro // 1000]


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _u_escape(found: re.Match[str]) -> str:
    """A character outside ASCII as json writes it: ``\\u00e9``, a pair past U+FFFF."""
    code = ord(found[0])
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _ascii(lines: bytes) -> bytes:
    """msgspec's JSON ``lines`` with each character outside ASCII ``\\u``-escaped, which
    any stream carries; its numbers as msgspec wrote them (``2e-6``), as on every line."""
    return _NON_ASCII.sub(_u_escape, lines.decode()).encode()


def _escaped(value: Any) -> str:
    """``value`` as a JSON text of ASCII only (``\\u`` escapes, which any stream carries),
    as compact as msgspec writes the other lines: every line has one form."""
    return json.dumps(value, default=str, separators=(",", ":"))


#: How every JSON line starts: the key its head's value follows (:meth:`JsonConsole.head`).
_HEAD_KEY = b'{"timestamp":'
#: What a head is made of but its time: level, event, worker, outcome (:meth:`JsonConsole.head`).
_HeadKey = tuple[str, str, str | None, str | None]


def _escaped_line(line: Line) -> bytes:
    """``line`` as msgspec writes it, with a line end, a text of it that msgspec refuses
    (a lone surrogate: a non-UTF-8 byte in a task's name) as json escapes it: its
    numbers as on every other line (``2e-6``, null for an infinite time)."""
    try:
        return _encode(line) + b"\n"
    except UnicodeEncodeError:
        names = line.__struct_fields__
        escaped = {
            name: msgspec.Raw(_escaped(value).encode())
            for name, value in zip(names, msgspec.structs.astuple(line), strict=True)
            if type(value) is str and not value.isascii()
        }
        return _encode(msgspec.structs.replace(line, **escaped)) + b"\n"


class TextConsole(Console):
    """The default console, with any password in its start, summary and error lines masked."""

    def info(self, line: str) -> None:
        super().info(mask_secrets(line))

    def error(self, line: str) -> None:
        super().error(mask_secrets(line))

    def rendered(self, line: str) -> str:
        return super().rendered(mask_secrets(line))


class Line(msgspec.Struct, gc=False):
    """A per-task JSON line (:meth:`JsonConsole.write_lines`): an event's struct extends
    it with its own fields. Its ``timestamp`` carries the line's whole head, the values
    of ``timestamp``, ``level``, ``role``, a worker's ``worker``, ``event`` and a settled
    task's ``outcome`` with the keys between them (:meth:`JsonConsole.head`): the same
    for a batch's lines of one level and event, encoded once for them all, not once a
    line (670 instructions of a worker's line, 680 of a master's two). Its fields (an
    event's too) are texts and numbers, in no cycle: no garbage collector's header
    (``gc=False``), about 210 instructions less a line to make and free."""

    timestamp: msgspec.Raw


class JsonConsole(Console):
    """A :class:`Console` that prints JSON lines; per-task events come from
    :meth:`write_lines`.

    The text console's per-task lines (``put task ...``, ``Get task ...``) are dropped:
    the structured ``task submitted`` / ``task settled`` / ``result`` events replace them.
    """

    def __init__(
        self,
        role: str,
        quiet: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(quiet=quiet, out=out, err=err)
        self.task_lines = False  # the text lines are dropped (see above): none is formatted
        self.fields: dict[str, Any] = {"role": role, **fields}
        # in the head of per-task lines (:meth:`head`): a worker's name, "" in other roles
        self.role, self.worker = role, str(fields.get("worker", ""))
        # (ms, its timestamp): one per millisecond; NaN, no millisecond, till the first
        self._stamp: tuple[float, str] = (math.nan, "")
        # by level, event, worker and outcome, the last head made (:meth:`head`): its
        # timestamp, the head, and its bytes after the timestamp's value (the same every
        # millisecond, encoded once). One entry a key, replaced each millisecond: a dict
        # of the millisecond's heads made and dropped each time, and the bytes looked up
        # apart, cost about 700 instructions more a head (callgrind)
        self._heads: dict[_HeadKey, tuple[str, msgspec.Raw, bytes]] = {}

    def start_progress(self, total: int) -> None:
        """No progress bar: a log pipeline reads lines, not a redrawn terminal line."""

    def lines(self, lines: Iterable[str], count: int | None = None) -> None:
        """Dropped: see the class docstring."""

    def task_line(self, line: str) -> None:
        """Dropped: see the class docstring."""

    def info(self, line: str) -> None:
        self._write(self.out, [self.record("info", message=mask_secrets(line))])

    def error(self, line: str) -> None:
        self._write(self.err, [self.record("error", message=mask_secrets(line))])

    def rendered(self, line: str) -> str:
        record = self.record("info", message=mask_secrets(line))
        return _escaped(record) + "\n"

    def stamp(self, at: float | None = None) -> str:
        """This moment (or ``at``, a ``time.time()``) as a line's ``timestamp``,
        formatted once per millisecond: :func:`timestamp`'s, its millisecond as datetime
        rounds it (``int(at * 1000)`` gave a fresh console's first time of [0, 0.001) the
        timestamp "", and a time within 0.5 µs of the next millisecond the one before)."""
        now = time.time() if at is None else at
        # _rounded() written out, but for its edges: a call cost more than the rest
        fraction, whole = math.modf(now)
        micro = round(fraction * 1e6)
        if not 0 <= micro < 1_000_000:  # the next second's, or a time before 1970
            whole, micro = _rounded(now)
        ms, stamp = whole * 1000 + micro // 1000, self._stamp  # ms: once, not twice
        if stamp[0] != ms:
            stamp = self._stamp = (ms, _stamp_of(whole, micro))
        return stamp[1]

    def head(
        self,
        level: str,
        event: str,
        worker: str | None = None,
        at: float | None = None,
        outcome: str | None = None,
    ) -> msgspec.Raw:
        """The head of a per-task :class:`Line` at this moment (or ``at``): its
        ``timestamp``'s value, the ``level``, this console's ``role``, ``worker`` unless
        None, the ``event`` and ``outcome`` unless None, keys and values as encoded, made
        once per millisecond. A worker's ``task settled`` lines carry their outcome in
        their head (:class:`distq.telemetry.TaskSettled`): a field less to make and encode
        per line, about 120 instructions (callgrind)."""
        stamp = self.stamp(at)
        key = (level, event, worker, outcome)
        made = self._heads.get(key)
        if made is None or made[0] is not stamp:  # a new millisecond's (or another thread's)
            tail = made[2] if made is not None else self._tail(level, event, worker, outcome)
            # a timestamp is ASCII that JSON does not escape: its value is itself, quoted
            made = (stamp, msgspec.Raw(f'"{stamp}"'.encode() + tail), tail)
            self._heads[key] = made  # replaced whole: a thread reads one millisecond's
        return made[1]

    def _tail(self, level: str, event: str, worker: str | None, outcome: str | None) -> bytes:
        """A head's bytes after its timestamp's value (``,"level":"info",...,"event":...``),
        as encoding the whole head writes them: a dict built and encoded each millisecond
        was about 4,000 instructions of a batch's line (callgrind)."""
        fields = {"timestamp": "", "level": level, "role": self.role}
        if worker is not None:
            fields["worker"] = worker
        fields["event"] = event
        if outcome is not None:
            fields["outcome"] = outcome
        try:
            encoded = _encode(fields)
        except UnicodeEncodeError:  # a lone surrogate (a worker's name): json escapes it
            encoded = _escaped(fields).encode()
        return encoded[len(_HEAD_KEY) + 2 : -1]  # after the empty timestamp's two quotes

    def record(self, level: str, **fields: Any) -> dict[str, Any]:
        """One log object: timestamp, level, this process's fields, then ``fields``."""
        return {"timestamp": self.stamp(), "level": level, **self.fields, **fields}

    def write_lines(self, lines: Sequence[Line]) -> None:
        """Per-task events, each a :class:`Line` with its :meth:`head`: one JSON line
        each, all encoded in one call and written in one; skipped when quiet. A lone
        surrogate in one (a task's name with a non-UTF-8 byte) is escaped as
        :meth:`_write` does."""
        if not lines or self.quiet:
            return
        try:
            text = _encode_lines(lines)
        except UnicodeEncodeError:  # msgspec refuses a text of one: json escapes it
            text = b"".join(map(_escaped_line, lines))
        self.write(self.out, text if text.isascii() else _ascii(text))

    def _write(self, stream: TextIO, records: list[dict[str, Any]]) -> None:
        try:
            lines: bytes | None = b"".join([_encode(r) + b"\n" for r in records])
        except UnicodeEncodeError:  # a lone surrogate (a non-UTF-8 byte in a name)
            lines = None  # json escapes it, as the text console's backslashreplace does
        if lines is None:  # as json writes it: \u escapes, which any stream can carry
            self.write(stream, "".join(_escaped(r) + "\n" for r in records))
        else:
            self.write(stream, lines if lines.isascii() else _ascii(lines))


class JsonFormatter(logging.Formatter):
    """Python ``logging`` records (from distq's modules or libraries) as JSON lines."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return _escaped(
            {
                "timestamp": timestamp(record.created),
                "level": record.levelname.lower(),
                **self.fields,
                "logger": record.name,
                "message": mask_secrets(message),
            }
        )


class MaskingFormatter(logging.Formatter):
    """Text ``logging`` records as ``distq: message`` (like console errors), passwords masked."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class ConsoleHandler(logging.Handler):
    """Python ``logging``'s records written as lines of ``console`` (on its stderr, under
    its output lock: a full non-blocking stderr drops a line whole, never cuts it).

    Never Python's own "--- Logging error ---" and traceback (``Handler.handleError``),
    which is no JSON line: a record that cannot be formatted or written is dropped, and
    each of those two reasons said once, as a record of this handler's own format."""

    def __init__(self, console: Console, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.console = console
        self._unsaid: list[str] = []  # why records were dropped, to say when it can
        self._said: set[str] = set()  # the reasons said (or to say): each once

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception as exc:  # a library's bad call (a %d given a str): its own record
            try:
                message = cut(repr(record.msg))
            except Exception:  # an object whose repr() raises
                message = f"a {type(record.msg).__name__}"
            self._dropped(
                "formatted",
                f"a log record of {record.name!r} could not be formatted ({describe(exc)}; "
                f"its message {message}); it was dropped, as any other that cannot be "
                "(said once)",
            )
            return
        unwritten = self._write(line)
        if unwritten == "reentrant":
            self._dropped(
                "reentrant",
                "a log record written from a signal handler while stderr was being written "
                "to was dropped, as any other then would be (said once)",
            )
        elif unwritten == "full":
            self._dropped(
                "full",
                "stderr was full (a non-blocking descriptor, as a parent process may leave "
                "it): log records written meanwhile may be dropped, each whole (said once)",
            )
        elif self._unsaid:
            self._say()

    def handleError(self, record: logging.LogRecord) -> None:
        """Not Python's traceback on stderr: said once, as the handler's own line."""
        self._dropped("error", "a log record could not be written; it was dropped (said once)")

    def _dropped(self, reason: str, line: str) -> None:
        if reason not in self._said:
            self._said.add(reason)
            self._unsaid.append(line)
            self._say()

    def _say(self) -> None:
        """The reasons not said yet, while stderr takes them; the rest at its next line."""
        while self._unsaid:
            note = logging.LogRecord("distq", logging.WARNING, __file__, 0, "%s", None, None)
            note.args = (f"warning: {self._unsaid[0]}",)
            if self._write(self.format(note)) is not None:
                return
            self._unsaid.pop(0)

    def _write(self, line: str) -> Literal["full", "reentrant"] | None:
        """Why ``line`` was not written; None once it is."""
        try:
            return None if self.console.logged(line) else "full"
        except RuntimeError:  # "reentrant call": a signal handler's record amid a write
            return "reentrant"


def _logged(args: threading.ExceptHookArgs) -> None:
    """An exception that ended a thread, logged (as a JSON line) rather than printed."""
    if args.exc_type is SystemExit:
        return  # as threading's own hook: a thread's sys.exit() says nothing
    name = args.thread.name if args.thread is not None else "?"
    exc = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("distq").error("exception in thread %s", name, exc_info=exc)  # type: ignore[arg-type]


def make_console(
    log_format: str, role: str, quiet: bool = False, **fields: Any
) -> Console | JsonConsole:
    """The console for ``DISTQ_LOG_FORMAT``, and Python logging routed the same way."""
    console: Console | JsonConsole
    if log_format == "json":
        console = JsonConsole(role, quiet=quiet, **fields)
        handler = ConsoleHandler(console, JsonFormatter(console.fields))
        threading.excepthook = _logged  # a task's own thread's traceback: a JSON line too
    else:
        console = TextConsole(quiet=quiet)
        handler = ConsoleHandler(console, MaskingFormatter("distq: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_distq", False)]:
        root.removeHandler(old)
    handler._distq = True  # type: ignore[attr-defined]  # replaced, not stacked, on a second call
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    return console
