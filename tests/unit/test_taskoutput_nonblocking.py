"""A task's ``print()`` on a non-blocking stdout that fills (``WholeLines``), beside the
worker's own lines (``Console``) on the same stream."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import sys
import threading
import time

import pytest

from distq.logs import JsonConsole
from distq.taskoutput import WholeLines
from nonblocking import drain

TASK_LINES = 400
PAD = "y" * 1000


def _every_line_whole(
    console: JsonConsole, read: int, got: list[bytes], tasks: int, once: str
) -> None:
    """With ``console``'s last line written and what is left read from ``read`` into
    ``got``: asserts the stream ends at a line's end, every line is whole (a task's, with
    ``once`` in it once, or the worker's JSON), ``tasks`` of them the task's, and the
    last line last."""
    # emptied first: the writers' last lines may have filled the pipe after the reader's
    # last read, and a line on a full non-blocking pipe is cut or held (1 run in 6 at -n 3)
    got.append(drain(read))
    console.info("the last line")
    got.append(drain(read))
    lines = b"".join(got).decode().split("\n")
    assert lines[-1] == ""  # ends at a line's end
    count, broken = 0, []
    for line in lines[:-1]:
        if line.startswith("task line ") and line.endswith(f" {PAD}") and line.count(once) == 1:
            count += 1
            continue
        try:
            json.loads(line)
        except ValueError:
            broken.append(line)
    assert not broken, f"{len(broken)} broken lines, e.g. {broken[0][:80]!r}...{broken[0][-80:]!r}"
    assert count == tasks
    assert json.loads(lines[-2])["message"] == "the last line"


@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_tasks_print_on_a_full_non_blocking_stdout_waits_and_is_never_cut(
    full_pipe: tuple[io.TextIOWrapper, int], unbuffered: bool
) -> None:
    """``WholeLines`` raised BlockingIOError to the task once the pipe had taken part of
    its line: the line was cut (and the task failed), and the next text, the worker's
    own JSON line, glued to its start. The task waits as it would on a blocking stdout;
    every line reaches the reader whole. Unbuffered (PYTHONUNBUFFERED=1, as the images
    run), the text stream dropped what the full pipe did not take, without a word: lines
    lost and cut, the task's and the worker's."""
    stream, read = full_pipe
    if unbuffered:  # as Python makes sys.stdout then
        raw = io.FileIO(stream.fileno(), "w", closefd=False)
        stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    console = JsonConsole("worker", out=stream, err=io.StringIO(), worker="w1")
    task_out = WholeLines(stream)
    raised: list[BaseException] = []
    got: list[bytes] = []
    done = threading.Event()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)

    def task() -> None:
        try:
            for n in range(TASK_LINES):  # far more than the pipe holds
                print(f"task line {n} {PAD}", file=task_out)
        except BaseException as exc:  # what the task saw
            raised.append(exc)

    def slot() -> None:
        for n in range(200):
            console.info(f"worker line {n}")

    def reader() -> None:  # a slow reader: the pipe fills, then takes some, again
        while not done.wait(0.01):
            got.append(drain(read))

    threads = [threading.Thread(target=f) for f in (task, slot)]
    draining = threading.Thread(target=reader)
    try:
        for thread in threads:
            thread.start()
        done.wait(0.3)  # the pipe fills first
        draining.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        done.set()
        if draining.is_alive() or draining.ident is not None:
            draining.join(10)
        sys.setswitchinterval(interval)
    assert not raised, repr(raised[0])
    _every_line_whole(console, read, got, TASK_LINES, once="task")


def test_a_tasks_print_after_a_worker_line_the_full_stream_cut_keeps_both_whole(
    full_pipe: tuple[io.TextIOWrapper, int],
) -> None:
    """The worker's line the full stream took the start of owes its end (``Console``):
    a task's print() that came next went into the stream's buffer after that start,
    glued to it. The task's line waits for that end, then goes whole."""
    stream, read = full_pipe
    console = JsonConsole("worker", out=stream, err=io.StringIO(), worker="w1")
    task_out = WholeLines(stream)
    for n in range(200):  # far more than the pipe holds, nothing read: one is cut
        console.info(f"worker line {n} {PAD}")
    raised: list[BaseException] = []
    got: list[bytes] = []
    done = threading.Event()

    def task() -> None:
        try:
            for n in range(50):
                print(f"task line {n} {PAD}", file=task_out)
        except BaseException as exc:  # what the task saw
            raised.append(exc)

    def reader() -> None:
        while not done.wait(0.01):
            got.append(drain(read))

    printing = threading.Thread(target=task)
    draining = threading.Thread(target=reader)
    printing.start()
    done.wait(0.3)  # the task's print finds the stream full
    draining.start()
    try:
        printing.join(60)
        assert not printing.is_alive()
    finally:
        done.set()
        draining.join(10)
    assert not raised, repr(raised[0])
    _every_line_whole(console, read, got, 50, once="line")


def test_a_child_forked_while_another_thread_prints_prints_on_a_non_blocking_stdout(
    full_pipe: tuple[io.TextIOWrapper, int],
) -> None:
    """A process a task forks while another slot's task waits in its print() on a full
    non-blocking stdout inherits the stream's lock held by a thread it does not have:
    its own print() must not wait for it for good."""
    stream, read = full_pipe
    task_out = WholeLines(stream)
    waiting = threading.Event()

    def other_slot() -> None:
        waiting.set()
        for n in range(200):  # fills the pipe: it waits, holding the stream's lock
            print(f"other line {n} {PAD}", file=task_out)

    other = threading.Thread(target=other_slot)
    other.start()
    waiting.wait(10)
    for _ in range(200):  # until it waits on the full pipe
        if select.select([], [stream.fileno()], [], 0)[1] == []:
            break
        time.sleep(0.01)
    time.sleep(0.1)
    pid = os.fork()
    if pid == 0:  # the child: its own line goes to the pipe, then it ends
        try:
            signal.alarm(20)  # a child that waits for good ends (SIGALRM) instead
            print("child's line", file=task_out)
            task_out.flush()
        finally:
            os._exit(0)
    got = []
    ended, status = 0, 0
    for _ in range(3000):  # the reader reads until the child and the other slot end
        got.append(drain(read))
        if not ended:
            ended, status = os.waitpid(pid, os.WNOHANG)
        if ended and not other.is_alive():
            break
        time.sleep(0.01)
    other.join(5)
    got.append(drain(read))
    assert ended and os.WIFEXITED(status), f"the child: status {status}"
    assert b"child's line\n" in b"".join(got)
