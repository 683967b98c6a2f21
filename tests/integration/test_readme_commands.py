"""The README's own commands, run as a newcomer runs them: ``make demo`` and ``make example``.

Each runs through ``make`` from the repository's root, with no ``DISTQ_*`` variable
inherited (a newcomer has none), so the scripts behind them are what is tested: the
free port, the random authkey, the two workers' tagged lines, the exit status. The
README shows what ``make demo`` prints; every kind of line it shows must still be
printed, so the README cannot drift from the demo unnoticed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration


def make(target: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISTQ_", "MAKE"))}
    return subprocess.run(
        ["make", "--no-print-directory", "-s", target],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def readme_demo_lines() -> list[str]:
    """The lines of the README's ``make demo`` sample output, without its ``...``."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## What `make demo` shows", 1)[1]
    block = section.split("```\n", 2)[1]
    return [line for line in block.splitlines() if line.strip() and line.strip() != "..."]


def shape(line: str) -> re.Pattern[str]:
    """``line`` with every number (and dotted address) free to be another."""
    parts = re.split(r"\d+(?:\.\d+)*", line)
    return re.compile(r"\d+(?:\.\d+)*".join(re.escape(part) for part in parts))


def test_make_demo_runs_the_squares_job_and_prints_what_the_readme_shows() -> None:
    done = make("demo", 120, DEMO_TASKS="6", DEMO_TASK_DELAY="0.2")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    lines = out.splitlines()
    first_put = next(i for i, line in enumerate(lines) if line.startswith("put task "))
    attached = [i for i, line in enumerate(lines) if "] Connect to master " in line]
    assert len(attached) == 2 and max(attached) < first_put, out  # --wait-workers 2

    put = [int(n) for n in re.findall(r"^put task (\d+) into task_queue \.\.\.\.$", out, re.M)]
    got = re.findall(r"^Get result (\d+) \* (\d+) = (\d+) from result_queue\.$", out, re.M)
    assert len(put) == 6, out
    assert sorted(int(a) for a, _, _ in got) == sorted(put), out
    assert all(int(a) == int(b) and int(a) * int(b) == int(c) for a, b, c in got), out
    assert re.search(r"^all 6 results in and correct in [\d.]+ s", out, re.M), out

    ran = 0
    for worker in ("worker-1", "worker-2"):
        tag = re.escape(f"    [{worker}] ")
        assert re.search(rf"^{tag}Connect to master 127\.0\.0\.1:\d+", out, re.M), out
        exits = re.findall(rf"^{tag}worker exit\. (\d+) ok, 0 failed for good", out, re.M)
        assert len(exits) == 1, out
        ran += int(exits[0])
    assert ran == 6, out  # each task ran once, by one of the two workers

    for line in readme_demo_lines():
        pattern = shape(line)
        assert any(pattern.fullmatch(printed) for printed in lines), (
            f"the README's demo shows {line!r}, and make demo printed no such line:\n{out}"
        )


def readme_example_lines() -> list[str]:
    """The lines of the README's ``make example`` sample output, without its ``...``."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### The example: word counts over a folder of text files", 1)[1]
    block = section.split("```\n", 3)[2]  # the block after the ``make example`` command
    return [line for line in block.splitlines() if line.strip() and line.strip() != "..."]


def loose_shape(line: str) -> re.Pattern[str]:
    """``line`` with every number, grouped by commas or not, free to be another."""
    number = r"\d[\d,]*(?:\.\d+)*"
    return re.compile(number.join(re.escape(part) for part in re.split(number, line)))


def test_make_example_prints_no_kind_of_line_the_readme_does_not_show() -> None:
    """Over the default folder, as the README runs it: each line printed has its like in
    the README's sample (the word counts past its first two excepted: it elides them)."""
    done = make("example", 120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    shown = [loose_shape(line) for line in readme_example_lines()]
    count = re.compile(r"\s+[\d,]+  \S+")  # one word's count
    told = re.compile(r"    \[worker-\d\] SIGTERM while connecting: worker exit")  # its prose
    unshown = [
        line
        for line in out.splitlines()
        if not (count.fullmatch(line) or told.fullmatch(line))
        and not any(pattern.fullmatch(line) for pattern in shown)
    ]
    assert not unshown, f"make example printed lines the README does not show: {unshown}"


def test_make_example_counts_a_folder_as_one_process_does(tmp_path: Path) -> None:
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(5):
        (texts / f"part-{i}.txt").write_text("lease worker task naïve слово\n" * 300)
    done = make("example", 120, EXAMPLE_FOLDER=str(texts), EXAMPLE_GLOB="*.txt")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    tasks = re.search(r"^wordcount: 5 files, (\d+) tasks, manager transport on ", out, re.M)
    assert tasks, out
    assert "7,500 words, 5 different" in out, out
    assert "checked: the same counts as a single-process count" in out, out
    ran = 0
    for worker in ("worker-1", "worker-2"):
        # stopped by the script once the job was done: SIGTERM, not an idle or connect timeout
        tag = re.escape(f"    [{worker}] ")
        ended = re.findall(
            rf"^{tag}(SIGTERM while connecting: worker exit|SIGTERM: .*)$", out, re.M
        )
        assert len(ended) == 1, out
        if ended[0].startswith("SIGTERM: "):
            exits = re.findall(rf"^{tag}worker exit\. (\d+) ok, 0 failed for good", out, re.M)
            assert len(exits) == 1, out
            ran += int(exits[0])
    assert ran == int(tasks[1]), out  # each task ran once, by one of the two workers
