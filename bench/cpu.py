"""CPU seconds of the processes in a trial, from their own counters in ``/proc``.

CPU time barely moves with the machine's other load, unlike throughput, so it is the
figure to compare across runs on a shared machine. A role (master, workers, broker) is
a set of root PIDs; each counts with every descendant alive at the time of reading
(Dramatiq's supervisor and its worker processes, RabbitMQ's ``beam.smp``) plus the
children it has already reaped (``cutime``/``cstime``: RQ's forked work horses).

A living process's own time is read from its CPU-time clock (``clock_gettime`` on
the clock Linux keeps for every process: every thread's time, ended threads' included,
in nanoseconds), as ``time.process_time`` reads one's own. ``/proc/<pid>/stat``
counts in ticks of ``SC_CLK_TCK`` (100 Hz here): 10 ms per process and reading, which is
several per cent of a worker's share of a 20,000-task round (about 0.15 s). It is
still what reaped children count in, and the fallback where the clock cannot be read.
"""

from __future__ import annotations

import os
import time
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


def process_clock(pid: int) -> int:
    """The id of ``pid``'s CPU-time clock, as ``clock_getcpuclockid(3)`` makes it on Linux:
    ``CPUCLOCK_SCHED`` (2) of the whole process, with the PID complemented above 3 bits."""
    return (~pid << 3) | 2


def clock_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` itself from its CPU-time clock, ns-precise; None if it is
    gone or the clock cannot be read."""
    try:
        return time.clock_gettime(process_clock(pid))
    except (OSError, OverflowError):
        return None


def own_seconds(pid: int, proc: Path = PROC) -> float | None:
    """User + system CPU seconds of ``pid`` itself (every thread, living or ended)."""
    fields = _fields(pid, proc)
    return None if fields is None else _own(pid, fields)


def _own(pid: int, fields: list[str]) -> float:
    """:func:`own_seconds` of a process whose ``/proc/<pid>/stat`` ``fields`` were read:
    its clock, or those fields' ticks where the clock cannot be read."""
    seconds = clock_seconds(pid)
    if seconds is not None:
        return seconds
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
        total += _own(pid, fields) + (int(fields[13]) + int(fields[14])) / TICK  # + reaped
        stack.extend(children.get(pid, ()))
    return total


class CpuMeter:
    """CPU seconds per role between :meth:`start` and :meth:`stop`.

    ``roles`` maps a role name to the root PIDs whose trees it counts; ``own`` names the
    roles counted without descendants (a master living in the trial process, whose
    children are the workers).

    Reading a tree scans all of ``/proc`` in the reading process, the trial process that
    an ``own`` role usually is. So :meth:`start` reads the trees first and the own roles
    last, and :meth:`stop` the own roles first and the trees last: the meter's own work
    falls outside every own role's window, and no role is charged for it.
    """

    def __init__(self, roles: Mapping[str, Iterable[int]], own: Iterable[str] = ()) -> None:
        self.roles = {role: list(pids) for role, pids in roles.items()}
        self.own = set(own)
        self._start: dict[str, float] = {}

    def read(self, own_first: bool = False) -> dict[str, float]:
        """Every role's CPU seconds so far: the trees first and the own roles last (as at
        :meth:`start`), or the own roles first (``own_first``, as at :meth:`stop`)."""
        out: dict[str, float] = {}
        for own in (True, False) if own_first else (False, True):
            for role, pids in self.roles.items():
                if (role in self.own) != own:
                    continue
                if own:
                    out[role] = sum(own_seconds(pid) or 0.0 for pid in pids)
                else:
                    out[role] = tree_seconds(pids)
        return {role: out[role] for role in self.roles}

    def start(self) -> None:
        self._start = self.read()

    def stop(self) -> dict[str, float]:
        """CPU seconds each role used since :meth:`start`."""
        end = self.read(own_first=True)  # before the trees' /proc scans, which are ours
        return {role: max(0.0, end[role] - self._start.get(role, 0.0)) for role in end}


def per_thousand(seconds: Mapping[str, float | None], tasks: int) -> dict[str, float | None]:
    """CPU seconds per 1,000 tasks by role, plus ``total`` over the roles measured."""
    out: dict[str, float | None] = {
        role: None if value is None else value * 1000 / tasks for role, value in seconds.items()
    }
    measured = [value for value in out.values() if value is not None]
    out["total"] = sum(measured) if measured else None
    return out
