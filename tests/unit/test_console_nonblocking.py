"""A console on a non-blocking stdout that fills up: whole lines or none, never half."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from distq import console as console_module
from distq.logs import JsonConsole
from nonblocking import drain


@pytest.mark.parametrize("batch", [1, 150])  # a line at a time; a worker's batch of lines
def test_a_full_non_blocking_stdout_never_gets_half_a_json_line(
    full_pipe: tuple[io.TextIOWrapper, int], batch: int
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
                console.write(stream, "\n".join(lines) + "\n")
        got += drain(read)
    console.info("the last line")  # the pipe is empty now: it goes whole
    got += drain(read)
    assert time.monotonic() - started < 120  # never blocked
    lines = got.decode().split("\n")
    assert lines[-1] == ""  # ends at a line's end
    broken = []
    for line in lines[:-1]:
        try:
            json.loads(line)
        except ValueError:
            broken.append(line)
    assert not broken, f"{len(broken)} broken lines, e.g. {broken[0][:80]!r}...{broken[0][-80:]!r}"
    assert json.loads(lines[-2])["message"] == "the last line"


def test_slots_writing_at_once_to_a_full_non_blocking_stdout_never_cut_a_line(
    full_pipe: tuple[io.TextIOWrapper, int],
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
            console.write(stream, "\n".join(lines) + "\n")

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
    lines = b"".join(got).decode().split("\n")
    assert lines[-1] == ""
    broken = []
    for line in lines[:-1]:
        try:
            json.loads(line)
        except ValueError:
            broken.append(line)
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
