"""The word-count example's cut of a text into tasks (examples/wordcount/wordcount.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wordcount"
sys.path.insert(0, str(EXAMPLE))

from wordcount import characters, pieces  # noqa: E402
from wordcount_tasks import words  # noqa: E402

ONE_LONG_LINE = " ".join(["alpha", "beta", "délta", "x" * 10] * 100_000)  # 2.2 MB, no newline
LINES = "\n".join(" ".join(["gamma", "beta", "y" * 9] * 20) for _ in range(5_000))
CSV = "alpha,beta,gamma,délta;42|x_y," * 20_000  # no space, no line end: cut at a comma


@pytest.mark.parametrize("text", [ONE_LONG_LINE, LINES, CSV, "", "abc", "\n\n\n", "a b\n" * 7])
@pytest.mark.parametrize("size", [16, 1000, 65536])
def test_pieces_cover_the_text_keep_every_word_and_stay_small(text: str, size: int) -> None:
    """A line longer than DISTQ_MAX_MESSAGE_BYTES was one piece, refused by map() with a
    MessageTooLarge traceback; pieces now end at a line end, or in a long line at a space."""
    cut = list(pieces(text, size))
    assert "".join(cut) == text and all(cut)
    assert max((len(piece) for piece in cut), default=0) <= 2 * size
    assert sum((words(piece) for piece in cut), Counter()) == words(text)


def test_a_piece_size_below_1_is_refused() -> None:
    """A negative --piece-bytes made pieces() yield empty strings for good: the job hung,
    printing nothing, its memory growing."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "wordcount.py"), str(EXAMPLE), "--piece-bytes", "-1000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--piece-bytes: -1000 is not 1 or more" in done.stderr


def test_the_example_runs_under_python_oo() -> None:
    """``python -OO`` strips docstrings: its description from ``__doc__`` crashed it
    before any work (env11)."""
    done = subprocess.run(
        [sys.executable, "-OO", str(EXAMPLE / "wordcount.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "--piece-bytes" in done.stdout, done.stderr


@pytest.mark.parametrize("text", ["汉字测试文本" * 10 + "\n", LINES])
def test_pieces_of_piece_bytes_are_about_that_many_bytes_not_characters(text: str) -> None:
    """--piece-bytes 500000 of text in 3-byte characters made tasks of 1.49 MB, over the
    1 MiB limit: a MessageTooLarge traceback (input17)."""
    cjk = (text * (720_000 // len(text) + 1))[:720_000]
    size = 500_000
    cut = list(pieces(cjk, characters(cjk, size)))
    assert "".join(cut) == cjk
    assert max(len(piece.encode()) for piece in cut) <= 2 * size + 4


@pytest.mark.parametrize("timeout", ["0", "-5", "nan"])
def test_a_timeout_that_is_not_seconds_above_0_is_a_usage_error(timeout: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "wordcount.py"), str(EXAMPLE), "--timeout", timeout],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "is not a number of seconds above 0" in done.stderr
    assert "Traceback" not in done.stderr
