"""examples/wordcount on every transport: its counts equal a single-process count.

The job and two workers run as a user runs them (README, ``make example``): real
processes, the example's folder on ``PYTHONPATH``, settings from the environment.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, Target
from procs import Distq

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "wordcount"
VOCABULARY = ["task", "worker", "lease", "Straße", "naïve", "слово", "the", "a", "queue"]


def corpus(folder: Path) -> None:
    """Text files of known words: several small ones, one many pieces long, one empty."""
    rng = random.Random(15)
    for i in range(6):
        lines = [" ".join(rng.choices(VOCABULARY, k=12)) + f" line{i}_7." for _ in range(40)]
        (folder / f"small-{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    big = [" ".join(rng.choices(VOCABULARY, k=15)) for _ in range(3000)]
    (folder / "nested").mkdir()
    (folder / "nested" / "big.txt").write_text("\n".join(big), encoding="utf-8")
    (folder / "empty.txt").write_text("")
    (folder / "ignored.md").write_text("not counted: not a .txt file")


def wordcount(
    target: Target, folder: Path, args: list[str], workers: int, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``wordcount.py folder *args`` on ``target`` as a user runs it, beside ``workers``
    workers of its tasks, stopped once it ended (or ran out of ``timeout`` seconds)."""
    env = target.process_env()
    env["PYTHONPATH"] = f"{EXAMPLE}:{env['PYTHONPATH']}"
    argv = ["worker", "--tasks", "wordcount_tasks", "-q", "--connect-timeout", "30"]
    running = [Distq(argv, env) for _ in range(workers)]
    try:
        return subprocess.run(
            [sys.executable, str(EXAMPLE / "wordcount.py"), str(folder), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        for worker in running:
            worker.stop(grace=3.0)


def test_word_counts_equal_a_single_process_count(target: Target, tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    corpus(folder)
    output = tmp_path / "counts.json"
    args = ["--piece-bytes", "2000", "--check", "--output", str(output), "--timeout", "120"]
    done = wordcount(target, folder, args, workers=2, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"wordcount: 8 files, (\d+) tasks", done.stdout)
    assert found is not None and int(found.group(1)) > 50, done.stdout  # the big file: pieces
    assert "checked: the same counts as a single-process count" in done.stdout
    expected: Counter[str] = Counter()
    for path in folder.rglob("*.txt"):
        expected.update(re.findall(r"[^\W\d_]+", path.read_text(encoding="utf-8").casefold()))
    assert json.loads(output.read_text(encoding="utf-8")) == dict(expected)
    assert expected["strasse"] > 0 and expected["слово"] > 0 and "line" in expected  # ß: ss


@pytest.mark.parametrize(
    ("env", "code", "line"),
    [
        ({"DISTQ_TRANSPORT": "kafka"}, 2, "wordcount: DISTQ_TRANSPORT is 'kafka'"),
        (
            {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": "redis://127.0.0.1:1/0"},
            3,
            "wordcount: cannot reach Redis at 127.0.0.1:1",
        ),
    ],
)
def test_a_wrong_setting_or_no_broker_is_one_line_not_a_traceback(
    env: dict[str, str], code: int, line: str, tmp_path: Path
) -> None:
    """The example printed a 15-line traceback where distq says one line."""
    corpus(tmp_path)
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "wordcount.py"), str(tmp_path)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{EXAMPLE}:{REPO / 'src'}", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == code, done.stdout + done.stderr
    assert done.stderr.startswith(line) and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_an_output_file_it_cannot_write_is_refused_before_the_job(
    target: Target, tmp_path: Path
) -> None:
    """``--output`` in a folder that does not exist ran the whole job, then ended in a
    FileNotFoundError traceback, the counts lost; ``distq master --report`` refuses such
    a file before it connects (exit 2), and so does the example now."""
    folder = tmp_path / "texts"
    folder.mkdir()
    corpus(folder)
    missing = tmp_path / "no-such-folder" / "counts.json"
    done = wordcount(target, folder, ["--output", str(missing), "--timeout", "60"], workers=1)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"wordcount: --output '{missing}'"), done.stderr
    assert "tasks" not in done.stdout  # refused before the job started
