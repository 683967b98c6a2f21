"""A console on a non-blocking stdout that fills up: whole lines or none, never half."""

from __future__ import annotations

import io
import json
import sys
import threading
import time

import pytest

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
