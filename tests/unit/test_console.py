from __future__ import annotations

import io

from distq.console import PROGRESS_THRESHOLD, Console


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
