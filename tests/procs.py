"""Run ``distq`` as real subprocesses and watch what they print."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: This checkout: its ``src`` is the distq a subprocess runs, its ``tests`` the tasks.
REPO = Path(__file__).resolve().parent.parent


def checkout_env(**env: str) -> dict[str, str]:
    """This environment without its DISTQ_ variables, running this checkout, with ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    return {**clean, "PYTHONPATH": str(REPO / "src"), **env}


def run_distq(
    args: Sequence[str], env: dict[str, str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """``python -m distq *args`` with ``env``, run to its end: its exit code, stdout and
    stderr apart (still running after ``timeout`` s: killed, and ``TimeoutExpired``)."""
    return subprocess.run(
        [sys.executable, "-m", "distq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_python(
    program: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -c program`` running this checkout (``env``: :func:`checkout_env`'s by
    default), run to its end: its exit code, stdout and stderr apart."""
    return subprocess.run(
        [sys.executable, "-c", program],
        env=checkout_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Distq:
    """A ``python -m distq ...`` subprocess whose output (stdout+stderr) goes to a file."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self._log = Path(tempfile.mkstemp(prefix="distq-", suffix=".log")[1])
        with self._log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "distq", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def output(self) -> str:
        return self._log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the output matches ``pattern`` (a regex); fail with the output if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output(), re.MULTILINE)
            if found:
                return found
            if self.proc.poll() is not None:
                found = re.search(pattern, self.output(), re.MULTILINE)
                if found:
                    return found
                raise AssertionError(
                    f"distq {' '.join(self.args)} exited {self.proc.returncode} before printing "
                    f"{pattern!r}:\n{self.output()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output()}")

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            out = self.output()  # stop() removes the log
            self.stop()
            raise AssertionError(
                f"distq {' '.join(self.args)} still running after {timeout} s:\n{out}"
            ) from None

    def connected_to(self, port: int) -> bool:
        """Whether the process holds an established TCP connection to ``port`` (Linux
        /proc; False elsewhere): its start-up is done and it waits on that server's
        answer. The kernel completes the connect for a server paused by SIGSTOP too."""
        pid = self.proc.pid
        try:
            inodes = {
                link.removeprefix("socket:[").removesuffix("]")
                for fd in Path(f"/proc/{pid}/fd").iterdir()
                if (link := os.readlink(fd)).startswith("socket:[")
            }
            rows = [
                row.split()
                for table in ("tcp", "tcp6")
                for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            ]
        except OSError:  # no /proc, the process gone, an fd closed while listed
            return False
        # columns: sl local_address rem_address st ... inode; st 01 is ESTABLISHED
        return any(
            int(r[2].rpartition(":")[2], 16) == port and r[3] == "01" and r[9] in inodes
            for r in rows
        )

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, grace: float = 10.0) -> None:
        """End the process (ours, by PID): SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.proc.poll() is None:
            if grace > 0:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.unlink(missing_ok=True)


#: The ``spawn`` fixture (conftest.py): starts a distq subprocess, stopped at teardown.
Spawn = Callable[..., Distq]


def forked_check(check: Callable[[], bool], alarm: int = 5) -> int:
    """``check`` run in a child forked now (a test holds a lock as another thread would):
    the child's exit code, 0 if it returned True, 3 if False, -14 if it still waited after
    ``alarm`` s (its alarm killed it)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(alarm)
            code = 0 if check() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
