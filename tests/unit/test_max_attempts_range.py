"""A task's attempts, from 1 to MOST_ATTEMPTS: ``--max-attempts`` (submit, master) and an
Executor's ``max_attempts`` refuse more at the source, saying the range, as the other
counts do; a worker runs a task of either end of the range."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from distq.cli import _parser
from distq.config import Settings
from distq.envelope import MOST_ATTEMPTS
from distq.errors import RemoteError
from distq.executor import Executor
from launch import free_port
from procs import REPO, checkout_env

KEY = "0123456789abcdef-key"


@pytest.mark.parametrize("words", [["submit", "jobs:add"], ["master"]], ids=["submit", "master"])
@pytest.mark.parametrize("text", [f"{10**23}", f"{MOST_ATTEMPTS + 1}"])
def test_max_attempts_past_the_most_exits_2_saying_the_range(words: list[str], text: str) -> None:
    """10**23 (a typo) was queued as it was: a worker ran it, but taking it back (an
    Executor's cancel(), a timeout, a stop) looks for its retries attempt by attempt, and
    a cancel() of it never returned."""
    usage = io.StringIO()
    with pytest.raises(SystemExit) as stopped, contextlib.redirect_stderr(usage):
        _parser().parse_args([*words, "--max-attempts", text])
    assert stopped.value.code == 2
    assert (
        f"argument --max-attempts: is {text}; use a whole number from 1 to {MOST_ATTEMPTS}"
    ) in usage.getvalue()
    assert _parser().parse_args([*words, "--max-attempts", str(MOST_ATTEMPTS)]).max_attempts == (
        MOST_ATTEMPTS
    )


@pytest.mark.parametrize(
    ("attempts", "shown"),
    [
        (10**23, f"{10**23}"),
        (MOST_ATTEMPTS + 1, f"{MOST_ATTEMPTS + 1}"),
        (10**5000, r"about 10\*\*5000"),
    ],
    ids=["10**23", "most+1", "10**5000"],
)
def test_an_executors_max_attempts_past_the_most_is_refused_saying_the_range(
    attempts: int, shown: str
) -> None:
    nowhere = Settings(transport="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(
        ValueError,
        match=rf"^max_attempts is {shown}; use a whole number from 1 to {MOST_ATTEMPTS}$",
    ):
        Executor(nowhere, max_attempts=attempts)


def test_a_worker_on_manager_runs_tasks_of_either_end_of_the_range(tmp_path: Path) -> None:
    """The most attempts a task may have: a real worker reads it, retries it, and its
    result comes back, to an Executor and to ``distq submit --wait``; and the fewest,
    one: a failure is for good."""
    port = free_port()
    env = checkout_env(
        DISTQ_AUTHKEY=KEY,
        DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{port}",
        DISTQ_TEST_FLAKY_DIR=str(tmp_path),
        PYTHONPATH=f"{REPO / 'src'}:{REPO / 'tests'}",
    )
    settings = Settings(
        transport="manager", authkey=KEY.encode(), manager_address=("127.0.0.1", port)
    )
    with Executor(settings, max_attempts=MOST_ATTEMPTS) as executor:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distq",
                "worker",
                "--task",
                "jobs:flaky",
                "--task",
                "jobs:always_fail",
                "--exit-when-idle",
                "5",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert executor.submit("jobs:flaky", 7).result(timeout=60) == 49
            submit = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "distq",
                    "submit",
                    "jobs:flaky",
                    "8",
                    "--wait",
                    "--timeout",
                    "60",
                    "--max-attempts",
                    str(MOST_ATTEMPTS),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert (submit.returncode, submit.stdout.splitlines()[-1:]) == (0, ["64"]), submit
            once = Executor(settings, max_attempts=1, host=False)
            with once, pytest.raises(RemoteError, match="failed 1 of 1 attempts"):
                once.submit("jobs:always_fail", 1).result(timeout=60)
        finally:
            worker.terminate()
            out = worker.communicate(timeout=30)[0]
    assert out.count(f"attempt 1/{MOST_ATTEMPTS} failed") == 2, out  # each flaky one retried
