"""Server processes in process groups of their own: spawned, signalled and ended by PID.

Linux specifics (``/proc``, ``prctl``) are used where present and skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path


def spawn(
    argv: list[str], log: Path, env: dict[str, str], *, die_with_parent: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``log``'s directory, output appended to ``log``, in a new group.

    ``die_with_parent``: the kernel sends it SIGTERM when the *thread* that started it ends.
    """
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,  # a process group of its own, ended by its id
            preexec_fn=_set_parent_death_signal if die_with_parent else None,
        )


def end(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM ``proc`` (resumed if paused), then SIGKILL its group after ``grace`` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)  # a paused server must run to shut down
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``'s process group and wait until it is gone, grandchildren too."""
    # Not reaped yet, so the group id is still the one start_new_session gave it.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # A grandchild (RabbitMQ's beam.smp under its start script) may still be exiting,
    # its ports still open, when the leader is reaped.
    deadline = time.monotonic() + 10
    while live_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def signal_group(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    """SIGSTOP or SIGCONT ``proc``'s group; return once ``proc`` is stopped or running."""
    os.killpg(proc.pid, signum)
    stopped = signum == signal.SIGSTOP
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = _stat(Path(f"/proc/{proc.pid}/stat"))[0]
        if not state or (state == "T") == stopped:
            return
        time.sleep(0.01)


def live_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` with a thread that has not exited; [] without /proc.

    A multi-threaded server's main thread may be a zombie while its other threads, which
    still hold its sockets, are exiting: every thread counts.
    """
    members = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or _stat(Path(entry.path, "stat"))[1] != pgid:
                continue
            threads = Path(entry.path, "task").glob("*/stat")
            if any(_stat(thread)[0] not in ("", "Z", "X") for thread in threads):
                members.append(int(entry.name))
    return members


def every_thread_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (SIGSTOP, or traced): the kernel
    stops them one by one, and on a loaded machine one may still answer a request sent
    right after the signal. A thread that just ended counts as stopped; a process gone
    raises FileNotFoundError."""
    threads = Path(f"/proc/{pid}/task").iterdir()
    return all(_stat(thread / "stat")[0] in ("T", "t", "") for thread in threads)


def _stat(path: Path) -> tuple[str, int]:
    """(state, process group) from a ``/proc/.../stat`` file; ("", -1) when it is gone."""
    try:
        state, _ppid, pgrp = path.read_text().rpartition(")")[2].split()[:3]
        return state, int(pgrp)
    except (OSError, ValueError):
        return "", -1


def _set_parent_death_signal() -> None:
    """In the child before exec: SIGTERM when the starting thread ends (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
