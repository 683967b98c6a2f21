"""A console on a non-blocking stdout that fills up: whole lines or none, never half."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import REPO
from distq import console as console_module
from distq.console import Console, announce
from distq.logs import JsonConsole, TextConsole, make_console
from nonblocking import drain


def _not_json(written: bytes) -> list[str]:
    """The lines of ``written``, which ends at a line's end, that are not JSON (a line cut
    or run into another)."""
    lines = written.decode().split("\n")
    assert lines[-1] == ""  # ends at a line's end
    broken = []
    for line in lines[:-1]:
        try:
            json.loads(line)
        except ValueError:
            broken.append(line)
    return broken


@pytest.mark.parametrize("as_bytes", [False, True])  # as text; as JSON lines' bytes
@pytest.mark.parametrize("batch", [1, 150])  # a line at a time; a worker's batch of lines
def test_a_full_non_blocking_stdout_never_gets_half_a_json_line(
    full_pipe: tuple[io.TextIOWrapper, int], batch: int, as_bytes: bool
) -> None:
    """``Console.write`` dropped the text on BlockingIOError, but the pipe had taken its
    start: a JSON log reader saw half a line run into the next line's start."""
    stream, read = full_pipe
    console = JsonConsole("worker", out=stream, err=io.StringIO(), worker="w1")
    got = b""
    started = time.monotonic()
    for round_ in range(5):
        for n in range(0, 3000, batch):  # some 300 kB: far more than a pipe holds
            lines = [
                json.dumps({"round": round_, "line": m, "pad": "x" * (50 + m % 97)})
                for m in range(n, n + batch)
            ]
            if batch == 1:
                console.info(lines[0])
            else:
                text = "\n".join(lines) + "\n"
                console.write(stream, text.encode() if as_bytes else text)
        got += drain(read)
    console.info("the last line")  # the pipe is empty now: it goes whole
    got += drain(read)
    assert time.monotonic() - started < 120  # never blocked
    broken = _not_json(got)
    assert not broken, f"{len(broken)} broken lines, e.g. {broken[0][:80]!r}...{broken[0][-80:]!r}"
    assert json.loads(got.decode().split("\n")[-2])["message"] == "the last line"


@pytest.mark.parametrize("as_bytes", [False, True])  # as text; as JSON lines' bytes
def test_an_unbuffered_full_non_blocking_stdout_never_gets_half_a_json_line(
    full_pipe: tuple[io.TextIOWrapper, int], as_bytes: bool
) -> None:
    """Under PYTHONUNBUFFERED=1 (the images set it) stdout's binary layer is its
    descriptor's own FileIO: a write there takes part of the bytes, or none (None), and
    raises nothing. The rest of a line it cut is owed, and a write that said all of its
    text was on its way (True) put it all out, at every line a console writes through
    the binary layer it remembered, not only the first."""
    pipe, read = full_pipe
    stream = io.TextIOWrapper(
        io.FileIO(pipe.fileno(), "w", closefd=False), encoding="utf-8", write_through=True
    )
    console = JsonConsole("worker", out=stream, err=io.StringIO(), worker="w1")
    got, promised = b"", set[tuple[int, int]]()
    try:
        for round_ in range(5):
            for n in range(0, 3000, 10):  # some 300 kB a round: far more than a pipe holds
                text = "".join(
                    json.dumps({"round": round_, "line": m, "pad": "x" * (50 + m % 97)}) + "\n"
                    for m in range(n, n + 10)
                )
                if console.write(stream, text.encode() if as_bytes else text):
                    promised.update((round_, m) for m in range(n, n + 10))
            got += drain(read)
        console.info("the last line")  # the pipe is empty now: it goes whole
        got += drain(read)
    finally:
        console_module._OWED.pop(id(stream), None)  # a next test's stream at its id()
    broken = _not_json(got)
    assert not broken, f"{len(broken)} broken lines, e.g. {broken[0][:80]!r}...{broken[0][-80:]!r}"
    records = [json.loads(line) for line in got.decode().split("\n")[:-1]]
    assert records[-1]["message"] == "the last line"
    assert promised and 0 < len(promised) < 5 * 3000  # the pipe was full, and not always
    missing = promised - {(r["round"], r["line"]) for r in records[:-1]}
    assert not missing, f"{len(missing)} lines said to be on their way never came out"


@pytest.mark.parametrize("as_bytes", [False, True])  # as text; as JSON lines' bytes
def test_slots_writing_at_once_to_a_full_non_blocking_stdout_never_cut_a_line(
    full_pipe: tuple[io.TextIOWrapper, int], as_bytes: bool
) -> None:
    """A worker's slots write their lines from their own threads: what one thread's
    write finds the stream took may be another's text, unless the writes take turns."""
    stream, read = full_pipe
    console = JsonConsole("worker", out=stream, err=io.StringIO(), worker="w1")
    got: list[bytes] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)

    done = threading.Event()

    def slot(index: int) -> None:
        for n in range(0, 3000, 20):
            lines = [
                json.dumps({"slot": index, "line": m, "pad": "x" * (40 + m % 61)})
                for m in range(n, n + 20)
            ]
            text = "\n".join(lines) + "\n"
            console.write(stream, text.encode() if as_bytes else text)

    def reader() -> None:  # a slow reader: the pipe fills, then takes some, again
        while not done.wait(0.005):
            got.append(drain(read))

    threads = [threading.Thread(target=slot, args=(i,)) for i in range(4)]
    draining = threading.Thread(target=reader)
    draining.start()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        done.set()
        draining.join(10)
        sys.setswitchinterval(interval)
    console.info("the last line")
    got.append(drain(read))
    broken = _not_json(b"".join(got))
    assert not broken, f"{len(broken)} broken lines, e.g. {broken[0][:160]!r}"


def test_a_commands_output_waits_for_a_full_non_blocking_stdout(
    full_pipe: tuple[io.TextIOWrapper, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``say`` took EAGAIN for a stdout that cannot be written: every later line of the
    command (``dead-letters``' listing) went to stderr, stdout to /dev/null. A full
    pipe is one its reader has not read yet: the command waits for it, as on a blocking
    stdout, and every line arrives once, in order."""
    stream, read = full_pipe
    pointed: list[object] = []
    err = io.StringIO()
    monkeypatch.setattr(console_module, "to_devnull", pointed.append)
    monkeypatch.setattr(console_module, "_OUTPUT", [])
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(sys, "stderr", err)
    got: list[bytes] = []
    done = threading.Event()

    def reader() -> None:  # a slow reader: the pipe fills, then takes some, again
        while not done.wait(0.01):
            got.append(drain(read))

    draining = threading.Thread(target=reader)
    draining.start()
    try:
        for n in range(3000):  # some 300 kB: far more than a pipe holds
            console_module.say(f"letter {n} " + "x" * 100)
    finally:
        done.set()
        draining.join(10)
    got.append(drain(read))
    assert pointed == [] and err.getvalue() == ""
    lines = b"".join(got).decode().split("\n")
    assert lines == [f"letter {n} " + "x" * 100 for n in range(3000)] + [""]


#: A process whose stderr is a non-blocking pipe its parent reads only between rounds:
#: each round of library log records fills it, then waits for the parent to drain it.
_LOGS_ON_A_FULL_STDERR = """
import logging, os, sys
from distq.logs import make_console
os.set_blocking(2, False)
make_console(sys.argv[1], "worker", worker="w1")
library = logging.getLogger("library")
for round_ in range(3):
    for n in range(1500):  # some 200 kB: far more than a pipe holds
        library.warning("record %d of round %d %s", n, round_, "x" * (60 + n % 97))
    library.warning("a record %d that cannot be formatted", "not a number")
    print("round", flush=True)
    sys.stdin.readline()  # the parent drained the pipe
library.warning("the last record")  # the pipe is empty now: it goes whole
"""


@pytest.mark.parametrize("log_format", ["json", "text"])
@pytest.mark.parametrize("unbuffered", ["1", ""])  # PYTHONUNBUFFERED, as the images set it
def test_log_records_a_full_non_blocking_stderr_cannot_take_leave_no_logging_error_text(
    log_format: str, unbuffered: str
) -> None:
    """A library's log record met a full non-blocking stderr (EAGAIN), or could not be
    formatted: Python's ``Handler.handleError`` wrote "--- Logging error ---" and a
    traceback to stderr, among the JSON lines (which a JSON-logs reader then could not
    read). Unbuffered, stderr's text stream dropped what its descriptor did not take
    without a word, the console's lines too. Now such a record is dropped, whole, and
    that is said once, as a line of the log's own format."""
    child = subprocess.Popen(
        [sys.executable, "-c", _LOGS_ON_A_FULL_STDERR, log_format],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": unbuffered},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin and child.stdout and child.stderr
    os.set_blocking(child.stderr.fileno(), False)
    got = b""
    try:
        for _ in range(3):
            assert child.stdout.readline() == b"round\n"
            got += drain(child.stderr.fileno())
            child.stdin.write(b"\n")
            child.stdin.flush()
        assert child.wait(30) == 0
        os.set_blocking(child.stderr.fileno(), True)
        got += child.stderr.read()
    finally:
        child.kill()
        child.wait(10)
        for pipe in (child.stdin, child.stdout, child.stderr):
            pipe.close()
    text = got.decode()
    assert "Logging error" not in text and "Traceback" not in text, text[:3000]
    lines = text.split("\n")
    assert lines[-1] == ""  # ends at a line's end
    if log_format == "json":
        records = [json.loads(line) for line in lines[:-1]]  # every line reads
        messages = [record["message"] for record in records]
    else:
        assert all(line.startswith("distq: ") for line in lines[:-1]), lines[:3]
        messages = [line.removeprefix("distq: ") for line in lines[:-1]]
    assert messages[-1] == "the last record"
    said = [m for m in messages if "may be dropped" in m or "could not be formatted" in m]
    assert len(said) == 2, said  # each reason once: the full stream, the bad record
    assert any("'a record %d that cannot be formatted'" in m for m in said), said


def test_the_summary_after_a_bar_whose_close_met_a_full_stderr_starts_its_own_line(
    full_pipe: tuple[io.TextIOWrapper, int],
) -> None:
    """The bar's last drawing and its line end met a full non-blocking stderr (EAGAIN)
    and were skipped: the summary that followed on stdout, the same terminal, went on
    the line of the bar's earlier drawing (``[####] 99/100 ... tasks/sdone: ...``), or
    was dropped. Now the close waits a moment for the terminal to take it."""
    err, read = full_pipe
    out = open(os.dup(err.fileno()), "w", encoding="utf-8")  # noqa: SIM115  # one terminal
    console = console_module.Console(out=out, err=err)
    console.bar = console_module.Progress(100, err)
    console.bar.done = 99
    for _ in range(10_000):  # the bar's earlier drawings fill the terminal
        try:
            os.write(err.fileno(), b"\r[" + b"#" * 29 + b".] 99/100  99.0% 1,000 tasks/s")
        except BlockingIOError:
            break
    got: list[bytes] = []
    stop = threading.Event()

    def terminal() -> None:  # catches up a moment later
        time.sleep(0.3)
        while not stop.wait(0.01):
            got.append(drain(read))

    reading = threading.Thread(target=terminal)
    reading.start()
    try:
        console.lines(["the 100th task"], count=1)  # its drawing: EAGAIN
        console.info("done: 100 tasks")  # the bar's close, then the summary
        time.sleep(0.3)
    finally:
        stop.set()
        reading.join(10)
        with contextlib.suppress(BlockingIOError):  # what it still holds cannot go
            out.close()
    lines = (b"".join(got) + drain(read)).split(b"\n")
    assert lines[-1] == b"" and lines[-2] == b"done: 100 tasks", lines[-3:]
    assert lines[-3].endswith(b"100/100 100.0%") or b"] 100/100 " in lines[-3], lines[-3][-80:]


@pytest.fixture
def text_logging_on(
    full_pipe: tuple[io.TextIOWrapper, int], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Console]:
    """A worker's text console and Python logging, as ``distq worker`` sets them up, on a
    full non-blocking stderr; the root logger's handler is put back afterwards."""
    stream, _ = full_pipe
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield make_console("text", "worker")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_logged_warning_never_runs_into_a_console_line_a_full_stderr_cut(
    full_pipe: tuple[io.TextIOWrapper, int], text_logging_on: Console
) -> None:
    """A compose log read "after 66.2 sdistq: Redis ...": the console's line cut by a
    full non-blocking stderr owes its end, which only the console's own writes paid;
    Python logging (the Redis transport's warnings) wrote straight to sys.stderr, onto
    the line's start."""
    stream, read = full_pipe
    console = text_logging_on
    got = b""
    for n in range(5000):  # bounded: a pipe holds some 64 kB, a line is ~60 bytes
        console.error(f"Redis at redis:6379 answered again after {n}.2 s")
        if id(stream) in console_module._OWED:
            break
    assert id(stream) in console_module._OWED, "no line was cut: the pipe never filled"
    got += drain(read)  # the reader reads; the next write goes through
    logging.getLogger("distq.transport.redis").warning("Redis at redis:6379 evicts keys")
    got += drain(read)
    console.error("the last line")
    got += drain(read)
    lines = got.decode().split("\n")
    assert lines[-1] == ""
    glued = [line for line in lines[:-1] if line.count("distq: ") != 1]
    assert not glued, f"{len(glued)} lines run together, e.g. {glued[0][-120:]!r}"
    assert lines[-3:] == ["distq: Redis at redis:6379 evicts keys", "distq: the last line", ""]


def test_a_logged_warning_goes_above_the_progress_bar_not_onto_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A master on a terminal draws its bar on stderr without a newline; a warning of
    Python logging (a transport's) was written after it, on the bar's line."""
    import pty

    parent, child = pty.openpty()
    terminal = open(child, "w", encoding="utf-8")  # noqa: SIM115  # closed below
    monkeypatch.setattr(sys, "stderr", terminal)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        console = make_console("text", "master")
        console.start_progress(200)
        time.sleep(0.15)  # the bar redraws at most ten times a second
        console.lines(["put task 1"], count=1)  # the bar, drawn
        assert "tasks/s" in os.read(parent, 1 << 16).decode()
        logging.getLogger("distq.transport.redis").warning("Redis at redis:6379 evicts keys")
        terminal.flush()
        shown = os.read(parent, 1 << 16).decode()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        terminal.close()
        os.close(parent)
    assert shown.startswith("\r"), f"the warning ran onto the bar's line: {shown!r}"
    assert "\rdistq: Redis at redis:6379 evicts keys\r\n" in shown, shown  # then the bar


def test_the_bar_drawn_again_after_a_log_line_a_full_stderr_cut_goes_after_its_end(
    full_pipe: tuple[io.TextIOWrapper, int],
) -> None:
    """A line above the bar that a full non-blocking stderr cut owes its end; the bar's
    drawing after it went into the stream before that end, into the middle of the line
    ("distq: Redis at re\\r[####...] 12/200 ...dis:6379 answered ...")."""
    err, read = full_pipe
    console = Console(out=io.StringIO(), err=err)
    console.bar = console_module.Progress(200, err)
    os.write(err.fileno(), b"distq: Redis at re")  # the start the full stderr took
    console_module._OWED[id(err)] = b"dis:6379 answered again after 2.5 s\n"
    console.bar.done = 12
    console._drawing(console.bar.redraw)  # as lines() draws it, the reader caught up
    console.error("the last line")
    got = drain(read)
    assert got.startswith(b"distq: Redis at redis:6379 answered again after 2.5 s\n"), got
    assert re.findall(rb"distq: [^\r\n]*\n", got)[-1] == b"distq: the last line\n", got


@pytest.mark.parametrize("after", ["the bar's close", "a signal's line"])
def test_the_end_a_cut_line_owes_goes_before_the_bar_whatever_draws_it(
    full_pipe: tuple[io.TextIOWrapper, int], after: str
) -> None:
    """Every writer pays a cut line's end by one rule (console._owed_first): the bar's
    close (a bounded wait) and the blanking of its line for a signal handler's line
    (a buffer write) as a log line's; the fallback's fd write: test_console.py."""
    err, read = full_pipe
    out = io.StringIO()
    console = Console(out=out, err=err)
    console.bar = console_module.Progress(200, err)
    os.write(err.fileno(), b"distq: Redis at re")  # the start the full stderr took
    console_module._OWED[id(err)] = b"dis:6379 answered again after 2.5 s\n"
    console.bar.done = 12
    if after == "the bar's close":
        console.end_progress()
    else:
        announce(console, "SIGTERM: the master is stopping")
        assert out.getvalue() == "SIGTERM: the master is stopping\n"
    got = drain(read)
    assert got.startswith(b"distq: Redis at redis:6379 answered again after 2.5 s\n\r"), got
    assert id(err) not in console_module._OWED


def test_stdout_and_stderr_on_one_full_pipe_never_run_two_lines_together(
    full_pipe: tuple[io.TextIOWrapper, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started with ``2>&1`` (a TTY, a parent's pipe): stdout and stderr are two
    streams onto one pipe. The end of a stdout line the full pipe cut was owed to stdout
    alone, and the next error line went out on stderr before it: the two ran together."""
    monkeypatch.setattr(console_module, "_OWED", {})  # none left by the tests before
    out, read = full_pipe
    err = open(os.dup(out.fileno()), "w", encoding="utf-8")  # noqa: SIM115  # closed below
    console = TextConsole(out=out, err=err)
    got = b""
    try:
        for n in range(0, 5000, 150):  # a worker's batch of task lines, ~9 kB a write
            console.lines(
                f"Get result {m}: {m}*{m} = {m * m}, took 0.1 s" for m in range(n, n + 150)
            )
            if console_module._OWED:
                break
        assert console_module._OWED, "no line was cut: the pipe never filled"
        got += os.read(read, 6000)  # the reader takes a page: stdout's buffer goes in part
        console.info("the middle line")
        got += drain(read)
        console.error("Redis at redis:6379 does not answer; reconnecting")
        got += drain(read)
        console.info("the last line")
        got += drain(read)
    finally:
        with contextlib.suppress(BlockingIOError):
            err.close()
    lines = got.decode().split("\n")
    assert lines[-1] == ""
    glued = [line for line in lines[:-1] if not re.fullmatch(LINE_ON_ONE_PIPE, line)]
    assert not glued, f"{len(glued)} lines run together, e.g. {glued[0][-120:]!r}"
    assert lines[-3:] == [
        "distq: Redis at redis:6379 does not answer; reconnecting",
        "the last line",
        "",
    ]


LINE_ON_ONE_PIPE = (
    r"Get result \d+: \d+\*\d+ = \d+, took 0.1 s"
    r"|distq: Redis at redis:6379 does not answer; reconnecting|the (middle|last) line"
)
