"""What the master and worker print: the tutorial's lines, a progress bar, errors.

Lines go to stdout in batches (one write and flush per batch, so a pipe shows them
live without a syscall per line). On a terminal, a long job shows a progress bar on
stderr instead of one line per task; off a terminal, plain lines always.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TextIO

PROGRESS_THRESHOLD = 100  # tasks; shorter jobs print every line even on a terminal


class Progress:
    """A one-line bar redrawn at most ten times a second."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self._stream = total, stream
        self._start = self._drawn = time.monotonic()
        self.done = 0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._drawn >= 0.1 or self.done >= self.total:
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        rate = self.done / max(now - self._start, 1e-9)
        self._stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{100 * self.done / max(self.total, 1):5.1f}% {rate:,.0f} tasks/s"
        )
        self._stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic())
        self._stream.write("\n")
        self._stream.flush()


class Console:
    """Output for one process; ``quiet`` keeps only summaries and errors."""

    def __init__(
        self, quiet: bool = False, out: TextIO | None = None, err: TextIO | None = None
    ) -> None:
        self.quiet = quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.bar: Progress | None = None

    @property
    def task_lines(self) -> bool:
        """Whether :meth:`lines` prints per-task lines: callers skip formatting them if not."""
        return not self.quiet

    def start_progress(self, total: int) -> None:
        """Show a bar instead of per-task lines when stderr is a terminal and the job is long."""
        if not self.quiet and total >= PROGRESS_THRESHOLD and self.err.isatty():
            self.bar = Progress(total, self.err)

    def lines(self, lines: Iterable[str], count: int | None = None) -> None:
        """Per-task lines: printed as one write, or counted on the progress bar."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.advance(count if count is not None else sum(1 for _ in lines))
            return
        text = "\n".join(lines)
        if text:
            self.out.write(text + "\n")
            self.out.flush()

    def info(self, line: str) -> None:
        """A line that always prints: start, summary, exit."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.out.write(line + "\n")
        self.out.flush()

    def error(self, line: str) -> None:
        self.err.write(f"distq: {line}\n")
        self.err.flush()
