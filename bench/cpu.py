"""CPU seconds of the processes in a trial, from their own counters in ``/proc``.

CPU time barely moves with the machine's other load, unlike throughput, so it is the
figure to compare across runs on a shared machine. A role (master, workers, broker) is
a set of root PIDs; each counts with every descendant alive at the time of reading
(Dramatiq's supervisor and its worker processes, RabbitMQ's ``beam.smp``) plus the
children it has already reaped (``cutime``/``cstime``: RQ's forked work horses).
Counters tick at ``SC_CLK_TCK`` (100 Hz here), so one reading is good to 10 ms per
process: a round should run for a second or more.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

TICK = float(os.sysconf("SC_CLK_TCK"))
PROC = Path("/proc")


def _fields(pid: int, proc: Path = PROC) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()  # the name may hold spaces and parentheses


def own_seconds(pid: int, proc: Path = PROC) -> float | None:
    """User + system CPU seconds of ``pid`` itself (every thread, living or ended)."""
    fields = _fields(pid, proc)
    if fields is None:
        return None
    # after the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17)
    return (int(fields[11]) + int(fields[12])) / TICK


def _children(proc: Path = PROC) -> dict[int, list[int]]:
    """Parent PID -> child PIDs, of every process now."""
    tree: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _fields(int(entry.name), proc)
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def tree_seconds(roots: Iterable[int], proc: Path = PROC) -> float:
    """CPU seconds of ``roots`` and all their descendants, reaped ones included.

    A process that is gone counts 0: read before it ends (and after it was reaped, its
    time is in its parent's ``cutime``/``cstime``).
    """
    children = _children(proc)
    seen: set[int] = set()
    stack = list(roots)
    total = 0.0
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        fields = _fields(pid, proc)
        if fields is None:
            continue
        total += sum(int(f) for f in fields[11:15]) / TICK  # utime stime cutime cstime
        stack.extend(children.get(pid, ()))
    return total


class CpuMeter:
    """CPU seconds per role between :meth:`start` and :meth:`stop`.

    ``roles`` maps a role name to the root PIDs whose trees it counts; ``own`` names the
    roles counted without descendants (a master living in the trial process, whose
    children are the workers).
    """

    def __init__(self, roles: Mapping[str, Iterable[int]], own: Iterable[str] = ()) -> None:
        self.roles = {role: list(pids) for role, pids in roles.items()}
        self.own = set(own)
        self._start: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        out = {}
        for role, pids in self.roles.items():
            if role in self.own:
                out[role] = sum(own_seconds(pid) or 0.0 for pid in pids)
            else:
                out[role] = tree_seconds(pids)
        return out

    def start(self) -> None:
        self._start = self.read()

    def stop(self) -> dict[str, float]:
        """CPU seconds each role used since :meth:`start`."""
        end = self.read()
        return {role: max(0.0, end[role] - self._start.get(role, 0.0)) for role in end}


def per_thousand(seconds: Mapping[str, float | None], tasks: int) -> dict[str, float | None]:
    """CPU seconds per 1,000 tasks by role, plus ``total`` over the roles measured."""
    out: dict[str, float | None] = {
        role: None if value is None else value * 1000 / tasks for role, value in seconds.items()
    }
    measured = [value for value in out.values() if value is not None]
    out["total"] = sum(measured) if measured else None
    return out
