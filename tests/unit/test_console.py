from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from conftest import REPO
from distq import console as console_module
from distq.console import PROGRESS_THRESHOLD, Console, announce, escaping
from launch import free_port


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_even_for_long_jobs() -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err)
    console.start_progress(10_000)
    console.lines(["Get result 2 * 2 = 4 from result_queue."])
    assert out.getvalue() == "Get result 2 * 2 = 4 from result_queue.\n"
    assert err.getvalue() == ""


def test_progress_bar_replaces_lines_on_a_terminal() -> None:
    out, err = io.StringIO(), Terminal()
    console = Console(out=out, err=err)
    console.start_progress(PROGRESS_THRESHOLD)
    console.lines(["line"] * PROGRESS_THRESHOLD)
    console.info("done")
    assert out.getvalue() == "done\n"
    assert f"{PROGRESS_THRESHOLD}/{PROGRESS_THRESHOLD}" in err.getvalue()
    assert "100.0%" in err.getvalue()


def test_a_line_during_the_job_goes_above_the_bar_which_goes_on() -> None:
    """A status line (--status-every) or "reconnected ..." mid-job closed the bar for
    good: every task after it printed its own put/Get lines (master17)."""
    out, err = io.StringIO(), Terminal()
    console = Console(out=out, err=err)
    console.start_progress(PROGRESS_THRESHOLD)
    console.lines(["line"] * 10)
    console.info("submitted 10, results 10")
    console.error("reconnected")
    assert console.bar is not None
    console.lines(["line"] * (PROGRESS_THRESHOLD - 10))
    assert out.getvalue() == "submitted 10, results 10\n"
    console.end_progress()
    console.info("all in")
    assert out.getvalue() == "submitted 10, results 10\nall in\n"
    screen = err.getvalue()
    # each line printed on a blanked bar line, the bar drawn again below it
    assert "\r\rdistq:reconnected\n\r[###" in screen.replace(" ", "")
    last = screen.rsplit("\r", 1)[-1]  # the bar as it was left, on a line of its own
    assert last.startswith(f"[{'#' * 30}] {PROGRESS_THRESHOLD}/{PROGRESS_THRESHOLD}")
    assert last.endswith("\n") and screen.count("\n") == 2


def test_short_jobs_print_lines_on_a_terminal_and_quiet_prints_summaries_only() -> None:
    out, err = io.StringIO(), Terminal()
    console = Console(out=out, err=err)
    console.start_progress(6)
    console.lines(["a", "b"])
    assert out.getvalue() == "a\nb\n"
    quiet_out = io.StringIO()
    quiet = Console(quiet=True, out=quiet_out, err=err)
    quiet.lines(["a"])
    quiet.info("summary")
    assert quiet_out.getvalue() == "summary\n"


class Gone(io.StringIO):
    """A stream whose reader went away: every write fails as a closed pipe does."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stream_that_cannot_be_written_is_dropped_said_once_and_work_goes_on() -> None:
    out, err = Gone(), io.StringIO()
    console = Console(out=out, err=err)
    console.lines(["Get task square(3) from task_queue."])  # raised BrokenPipeError before
    console.lines(["Get task square(4) from task_queue."])
    console.info("worker exit.")
    assert out.writes == 1  # dropped after the first failure
    assert err.getvalue() == "distq: stdout cannot be written any more; going on without it\n"
    console.error("an error line still shows")
    assert err.getvalue().endswith("distq: an error line still shows\n")


def test_a_json_console_drops_a_failed_stream_the_same_way() -> None:
    from distq.logs import JsonConsole

    out, err = io.StringIO(), Gone()
    console = JsonConsole("worker", out=out, err=err, worker="w1")
    console.error("first")
    console.error("second")
    assert err.writes == 1
    assert '"message":"distq: stderr cannot be written any more' in out.getvalue()
    assert out.getvalue().count("\n") == 1


class _MidWrite(io.StringIO):
    """A stream a signal interrupted in the middle of a write: writing again is refused,
    as a BufferedWriter refuses a reentrant call."""

    def write(self, text: str) -> int:
        raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stdout>'>")


def test_a_signal_handlers_line_survives_a_stream_caught_mid_write(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A SIGTERM that landed while the worker flushed stdout to a pipe made it exit 1
    with a RuntimeError traceback (9 of 12 runs of a test without PYTHONUNBUFFERED)."""
    announce(Console(out=_MidWrite(), err=_MidWrite()), "SIGTERM while connecting: worker exit")
    assert capfd.readouterr().err == "SIGTERM while connecting: worker exit\n"


def test_a_signal_handlers_line_goes_after_the_end_a_cut_line_owes(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A full non-blocking stderr took the start of a line and owes its end; a signal
    handler's line, written straight to the descriptor, skipped it: it ran onto that
    line's start ("...answered again afterSIGTERM ...") and the end followed it."""
    err = _MidWrite()
    console_module._OWED[id(err)] = b" 2.5 s\n"
    try:
        announce(Console(out=_MidWrite(), err=err), "SIGTERM while connecting: worker exit")
    finally:
        owed = console_module._OWED.pop(id(err), None)
    assert capfd.readouterr().err == " 2.5 s\nSIGTERM while connecting: worker exit\n"
    assert owed is None


def test_a_signal_handlers_line_written_straight_to_stderr_clears_the_bar_first(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The fallback's line went onto the end of the bar's line, where the bar was
    drawn without a line end ("[###...] 12/200 ... tasks/sSIGTERM: ..."): it blanks
    the bar's line first, as a line above the bar does."""
    err = _MidWrite()
    console = Console(out=_MidWrite(), err=err)
    console.bar = console_module.Progress(200, err)
    console.bar.done = 12
    width = len(console.bar.closing()) - 2  # the bar's text, as last drawn
    announce(console, "SIGTERM: the master is stopping")
    said = capfd.readouterr().err
    assert said == f"\r{' ' * width}\rSIGTERM: the master is stopping\n", repr(said)


def test_a_json_console_caught_mid_write_still_writes_a_json_line(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """In JSON log mode the fallback line is a JSON line too: a log pipeline that parses
    every line would choke on a plain one."""
    from distq.logs import JsonConsole

    console = JsonConsole("worker", out=_MidWrite(), err=_MidWrite(), worker="w1")
    announce(console, "SIGTERM: the worker is stopping (é)")
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].isascii()
    record = json.loads(lines[0])
    assert record["message"] == "SIGTERM: the worker is stopping (é)"
    assert (record["level"], record["role"], record["worker"]) == ("info", "worker", "w1")


def test_a_character_the_stream_cannot_encode_is_escaped_not_taken_for_a_stream_gone() -> None:
    """Under an ASCII locale one task argument outside it (``café``) raised
    UnicodeEncodeError, a ValueError: the console took stdout for gone, said "stdout
    cannot be written any more" and sent every later line to /dev/null (env11)."""
    raw, err = io.BytesIO(), io.StringIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    console = Console(out=out, err=err)
    console.info("Get task echo['café'] from task_queue.")
    console.info("Get task echo['plain'] from task_queue.")
    assert raw.getvalue() == (
        b"Get task echo['caf\\xe9'] from task_queue.\nGet task echo['plain'] from task_queue.\n"
    )
    assert err.getvalue() == ""


def test_escaping_makes_a_stream_write_what_its_encoding_lacks_as_escapes() -> None:
    """So a task's own print() and a command's output under an ASCII locale: `dead-letters`
    stopped with a traceback at a worker named ``wörker-1`` (env11)."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    escaping(stream, None)
    print("worker wörker-1 日本", file=stream, flush=True)
    assert raw.getvalue() == b"worker w\\xf6rker-1 \\u65e5\\u672c\n"


def test_escaping_leaves_a_stream_that_already_passes_bytes_through() -> None:
    """Under the C.UTF-8 or POSIX locale stdout uses surrogateescape: a task printing a
    file name that is not UTF-8 wrote its bytes, and wrote ``caf\\udce9`` once escaping()
    made every stream backslashreplace (regress11). Only "strict" streams change."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape")
    escaping(stream)
    print("caf\udce9.txt", file=stream, flush=True)
    assert raw.getvalue() == b"caf\xe9.txt\n"


class FullOnce(Terminal):
    """A terminal on a non-blocking stderr that is full once (EAGAIN), then takes text
    again, as a slow terminal does."""

    full = False

    def write(self, text: str) -> int:
        if self.full:
            self.full = False
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().write(text)


def test_a_bar_on_a_stderr_full_once_goes_on_and_so_does_stderr() -> None:
    """One EAGAIN while the bar was drawn dropped stderr for good, as a closed one: its
    later lines (errors too) never showed, and stdout said it "cannot be written"."""
    out, err = io.StringIO(), FullOnce()
    console = Console(out=out, err=err)
    console.start_progress(PROGRESS_THRESHOLD)
    console.lines(["line"] * 10)
    err.full = True
    console.error("reconnected")  # the bar's clearing meets the full stderr
    assert console.bar is not None
    err.full = True
    console.lines(["line"] * (PROGRESS_THRESHOLD - 10))  # its last drawing does
    err.full = True
    console.end_progress()  # and so does its close
    console.error("a later error")
    assert out.getvalue() == ""
    assert err.getvalue().endswith("distq: a later error\n")


def test_a_bar_on_a_stderr_that_went_away_is_no_reason_to_stop() -> None:
    """A task's lines counted on the bar raised the closed stderr's BrokenPipeError into
    the master's loop."""
    out, err = io.StringIO(), Gone()
    err.isatty = lambda: True  # type: ignore[method-assign]
    console = Console(out=out, err=err)
    console.start_progress(PROGRESS_THRESHOLD)
    console.lines(["line"] * PROGRESS_THRESHOLD)  # its last drawing fails
    console.info("all in")
    assert out.getvalue() == (
        "distq: stderr cannot be written any more; going on without it\nall in\n"
    )


@pytest.mark.parametrize("err", [None, "closed"])
def test_a_long_job_with_stderr_closed_asks_no_terminal_of_it(
    monkeypatch: pytest.MonkeyPatch, err: str | None
) -> None:
    """``2>&-`` (cron, a daemon): sys.stderr is None, and start_progress asked it
    isatty(): AttributeError (a closed stream: ValueError) at a job's submit."""
    stream = io.StringIO()
    if err == "closed":
        stream.close()
    monkeypatch.setattr(sys, "stderr", None if err is None else stream)
    out = io.StringIO()
    console = Console(out=out)
    console.start_progress(PROGRESS_THRESHOLD)
    console.lines(["put task square(3) into task_queue."])
    assert console.bar is None and out.getvalue().endswith("put task square(3) into task_queue.\n")


def test_a_master_started_with_stderr_closed_runs_a_long_job() -> None:
    """`distq master --tasks 100 2>&-` ended at its submit, exit 1, with no line: the
    traceback went to the closed stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    done = subprocess.run(
        f"{sys.executable} -m distq master --tasks {PROGRESS_THRESHOLD} --timeout 2 "
        f"--manager-address 127.0.0.1:{free_port()} 2>&-",
        shell=True,
        executable="/bin/bash",
        env={**clean, "PYTHONPATH": str(REPO / "src"), "DISTQ_AUTHKEY": "secret"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert f"0 of {PROGRESS_THRESHOLD} results in" in done.stdout, done.stdout


# JSON lines are bytes, put straight into the stream's binary layer, remembered per stream
# (Console._binary): each test below writes more than once, so that the later lines take
# the remembered layer, and holds what the first line alone did not show.


def _json_console(out: io.TextIOWrapper) -> Console:
    from distq.logs import JsonConsole

    return JsonConsole("worker", out=out, err=io.StringIO(), worker="w1")


def test_json_lines_go_after_what_a_print_left_in_the_text_layer_each_time() -> None:
    """A task's print() waits in the text layer of the stream, unflushed; a JSON line,
    bytes into its binary layer, goes after it, at every line, not only the first."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    console = _json_console(out)
    for n in range(3):
        print(f"a task's print {n}", file=out)  # held in the text layer
        console.info(f"line {n}")
    out.flush()
    lines = out.buffer.getvalue().decode().splitlines()
    shown = [line if line.startswith("a task") else json.loads(line)["message"] for line in lines]
    assert shown == [
        "a task's print 0", "line 0", "a task's print 1", "line 1", "a task's print 2", "line 2",
    ]  # fmt: skip


def test_json_lines_follow_a_streams_encoding_reconfigured_after_its_first_line() -> None:
    """A stream whose encoding changed (``reconfigure()``, a task's) after the console
    remembered that its binary layer takes ASCII as it is: its next line is written in
    the new encoding, as a text write would be, not as UTF-8 bytes in a UTF-16 stream."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    console = _json_console(out)
    console.info("in UTF-8")
    out.reconfigure(encoding="utf-16")
    console.info("in UTF-16")
    out.flush()
    first, rest = out.buffer.getvalue().split(b"\n", 1)
    assert json.loads(first)["message"] == "in UTF-8"
    assert json.loads(rest.decode("utf-16"))["message"] == "in UTF-16"


def test_a_stream_written_after_another_went_away_gets_its_own_lines() -> None:
    """Streams made and dropped one after another often take the same ``id()``: each
    one's lines go into its own binary layer, never one a console remembered of a stream
    gone at the same ``id()``."""
    console = _json_console(io.TextIOWrapper(io.BytesIO()))
    for n in range(20):
        stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        console.write(stream, b'{"n":%d}\n' % n)
        stream.flush()
        assert stream.buffer.getvalue() == b'{"n":%d}\n' % n
        del stream


class _SignalInWrite(io.RawIOBase):
    """A stream's descriptor whose write runs ``handler`` first, once: as a signal that
    lands in a write to a pipe runs its Python handler inside the binary layer's write."""

    def __init__(self) -> None:
        self.taken = bytearray()
        self.handler: Callable[[], None] | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        handler, self.handler = self.handler, None
        if handler is not None:
            handler()
        self.taken += bytes(data)
        return len(data)


def test_a_signal_handlers_line_amid_a_json_lines_write_leaves_both_whole(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A signal handler's line (:func:`announce`) that lands while a JSON line goes into
    the stream's binary layer finds it mid-write (``RuntimeError: reentrant call``): it
    goes straight to stderr as a whole JSON line, and the line being written goes on."""
    raw = _SignalInWrite()
    out = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")
    console = _json_console(out)
    console.info("first")
    raw.handler = lambda: announce(console, "SIGTERM: the worker is stopping")
    console.info("second")
    assert raw.handler is None  # it ran
    lines = [json.loads(line)["message"] for line in raw.taken.decode().splitlines()]
    assert lines == ["first", "second"]
    said = capfd.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in said] == ["SIGTERM: the worker is stopping"]
