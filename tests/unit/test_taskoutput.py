"""What a worker's tasks print: whole lines from every thread, a gone reader failing no task."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO
from distq.logs import TextConsole
from distq.taskoutput import WholeLines


class _Writes(io.StringIO):
    """A stream that keeps each write call's text."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_whole_lines_reach_the_stream_a_line_at_a_time_from_every_thread() -> None:
    """print() writes its text and its line end in two calls: another slot's line between
    them glued to the text (tasks10); past 64 KiB a print() was split all the same, and
    a thread's text without a line end was lost with its thread (diff13)."""
    stream = _Writes()
    lines = WholeLines(stream)

    def chatter(n: int) -> None:
        for i in range(200):
            print(f"thread {n} line {i}", file=lines)

    threads = [threading.Thread(target=chatter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(call.endswith("\n") for call in stream.calls)
    assert len(stream.getvalue().splitlines()) == 800

    long = "x" * 70_000
    print(long, file=lines)  # one write of text and line end
    assert stream.calls[-1] == long + "\n"

    left = threading.Thread(target=lambda: lines.write("no line end"))
    left.start()
    left.join()
    lines.write("after\n")  # a write of any thread takes what an ended thread left
    assert stream.calls[-1] in ("after\nno line end", "no line endafter\n")

    lines.write("held at exit")
    lines.flush_all()
    assert stream.getvalue().endswith("held at exit")
    with pytest.raises(TypeError, match=r"^write\(\) argument must be str, not bytes$"):
        lines.write(b"x")  # type: ignore[arg-type]


GC_PRINTS = """
import gc, sys, threading
sys.path[:0] = [SRC]
from distq.taskoutput import WholeLines

class PrintsWhenCollected:
    def __init__(self, stream):
        self.stream, self.me = stream, self  # a cycle: only a collection frees it

    def __del__(self):
        print("collected", file=self.stream)

lines = WholeLines(open("/dev/null", "w"))
gc.set_threshold(50)

def work(k):
    for i in range(20000):
        PrintsWhenCollected(lines)
        lines.write(f"line {k} {i}")
        lines.write("\\n")

threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("finished")
"""


def test_whole_lines_survive_a_finalizer_that_prints_during_a_write(tmp_path: Path) -> None:
    """A collection inside write()'s lock ran a finalizer that printed, which waited for
    good on the lock its own thread held: every slot of the worker hung (diff14)."""
    script = tmp_path / "gc_prints.py"
    script.write_text(GC_PRINTS.replace("[SRC]", repr([str(REPO / "src")])))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=25, check=False
    )
    assert done.stdout == "finished\n", done.stderr


class _FullForNow(io.StringIO):
    """A non-blocking stream that is full once: EAGAIN, then takes text again."""

    def __init__(self) -> None:
        super().__init__()
        self.full = True

    def write(self, text: str) -> int:
        if self.full:
            self.full = False
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().write(text)


def test_a_stream_full_for_now_is_not_taken_for_one_whose_reader_has_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EAGAIN on a non-blocking stream pointed it at /dev/null for good, as a closed pipe
    is (diff14): a task's print() now says so to the task, the console skips one line."""
    pointed: list[object] = []
    monkeypatch.setattr("distq.taskoutput.to_devnull", pointed.append)
    monkeypatch.setattr("distq.console.to_devnull", pointed.append)
    lines = WholeLines(_FullForNow())
    with pytest.raises(BlockingIOError):
        lines.write("one\n")
    lines.write("two\n")
    stream = _FullForNow()
    console = TextConsole(out=stream, err=stream)
    console.info("first")  # EAGAIN: this line only
    console.info("second")
    assert pointed == [] and stream.getvalue() == "second\n"


def test_a_forked_child_prints_only_its_own_text(tmp_path: Path) -> None:
    """A process a task forks inherits the worker's streams and the text they held
    without a line end: another slot's, and its own task's. The child's first line
    wrote them too (another slot's from a thread that is no more in the child), and the
    worker wrote them again: each such text twice, glued to the child's line."""
    path = tmp_path / "out.txt"
    with path.open("w", buffering=1) as stream:
        lines = WholeLines(stream)
        held, forked = threading.Event(), threading.Event()

        def other_slot() -> None:
            lines.write("other slot's ")
            held.set()
            forked.wait(10)
            lines.write("line\n")

        other = threading.Thread(target=other_slot)
        other.start()
        held.wait(10)
        lines.write("task's ")
        pid = os.fork()
        if pid == 0:  # the child: print a line and end
            try:
                print("child's line", file=lines)
                lines.flush()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        forked.set()
        other.join(10)
        lines.write("line\n")
        lines.flush_all()
    text = path.read_text()
    assert sorted(text.splitlines()) == ["child's line", "other slot's line", "task's line"], text


def test_a_stream_a_task_closed_fails_no_other_task(tmp_path: Path) -> None:
    """A task that wraps stdout's buffer for text of its own
    (``io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8")``) closes that buffer when
    its wrapper is collected: each later ``print()`` of every task raised ``ValueError:
    I/O operation on closed file``, which failed it for good (distq's own lines go on
    without that stream, and a task's print() to a stream whose reader has gone goes
    nowhere)."""
    with (tmp_path / "out.txt").open("wb") as raw:
        stream = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=True)
        lines = WholeLines(stream)
        own = io.TextIOWrapper(lines.buffer, encoding="utf-8")
        own.write("the task's own text\n")
        del own  # collected: it closes the buffer it wrapped
        assert stream.closed
        print("another task's line", file=lines)
        lines.write("held")
        lines.flush()
        lines.flush_all()
