"""What a process knows about its own health: liveness, readiness, and the worker's counters.

The probes of :mod:`distq.http` only read this state; nothing here calls a broker.

* **Liveness** (``/healthz``): the process's loops report each iteration to a
  :class:`Liveness`; when one has not for ``DISTQ_STALL_SECONDS`` the process is
  stalled (wedged: restart it). Time a loop spends waiting on the broker does not
  count, so a broker outage never makes a process look wedged.
* **Readiness** (``/readyz``): every connection the process depends on is a
  :class:`Link` that is up, down (with the reason), or hanging (a call that has not
  answered for ``HANG_SECONDS`` beyond its own timeout).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

#: A broker call still running this long after its own timeout counts as hanging.
HANG_SECONDS = 2.0

Clock = Callable[[], float]


@dataclass(frozen=True)
class Verdict:
    """A probe's answer: ``ok`` picks 200 or 503; ``body`` is the JSON document."""

    ok: bool
    body: dict[str, Any]


class Liveness:
    """Named loops that must keep iterating; stalled when one stops for ``stall_seconds``."""

    def __init__(self, stall_seconds: float, clock: Clock = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._beats: dict[str, float] = {}
        self._waiting: dict[str, int] = {}  # loop -> broker calls in progress

    def beat(self, loop: str) -> None:
        """``loop`` completed an iteration (a dict store: cheap enough for any loop)."""
        self._beats[loop] = self._clock()

    def end(self, loop: str) -> None:
        """``loop`` finished on purpose; it no longer counts."""
        self._beats.pop(loop, None)

    def waiting(self, loop: str) -> _Waiting:
        """Context manager: ``loop`` waits on the broker meanwhile (readiness's business)."""
        return _Waiting(self, loop)

    def check(self) -> Verdict:
        now = self._clock()
        ages = {loop: round(now - at, 3) for loop, at in list(self._beats.items())}
        stalled = sorted(
            loop
            for loop, age in ages.items()
            if age > self.stall_seconds and not self._waiting.get(loop)
        )
        body: dict[str, Any] = {"status": "stalled" if stalled else "ok", "loops": ages}
        if stalled:
            body["stalled"] = stalled
            body["stall_seconds"] = self.stall_seconds
        return Verdict(not stalled, body)


class _Waiting:
    def __init__(self, liveness: Liveness, loop: str) -> None:
        self._liveness, self._loop = liveness, loop

    def __enter__(self) -> None:
        waiting = self._liveness._waiting
        waiting[self._loop] = waiting.get(self._loop, 0) + 1

    def __exit__(self, *exc: object) -> None:
        waiting = self._liveness._waiting
        waiting[self._loop] -= 1
        self._liveness.beat(self._loop)


class Link:
    """Readiness of one connection: up, down with a reason, or a call that hangs.

    A new link is down ("connecting") until it first succeeds.
    """

    def __init__(self, name: str, clock: Clock = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._up = False
        self._reason = "connecting"
        self._call_deadline: float | None = None  # when the running call starts to count as hung
        self._call_started = 0.0

    def up(self) -> None:
        self._up, self._reason = True, ""

    def down(self, reason: str) -> None:
        self._up, self._reason = False, reason

    @property
    def is_up(self) -> bool:
        """Whether the last call answered (or :meth:`up` said so) since the last failure."""
        return self._up

    def call(self, timeout: float = 0.0) -> _Call:
        """Context manager around one broker call that may block up to ``timeout`` s.

        The link is up when the call returns, down with the error when it raises, and
        not ready while it runs ``HANG_SECONDS`` past ``timeout``.
        """
        return _Call(self, timeout)

    def problem(self, now: float) -> str | None:
        """Why this link is not ready, or None when it is."""
        deadline = self._call_deadline
        if deadline is not None and now > deadline:
            return f"no answer from the broker for {now - self._call_started:.1f} s"
        return None if self._up else self._reason


class _Call:
    __slots__ = ("_link", "_timeout")

    def __init__(self, link: Link, timeout: float) -> None:
        self._link, self._timeout = link, timeout

    def __enter__(self) -> None:
        link = self._link
        link._call_started = now = link._clock()
        link._call_deadline = now + self._timeout + HANG_SECONDS

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        link = self._link
        link._call_deadline = None
        if exc is None:
            link._up = True
        elif isinstance(exc, Exception):
            link.down(str(exc) or type(exc).__name__)


class Readiness:
    """Ready while every registered link is; not ready while starting or stopping."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._links: dict[str, Link] = {}
        self._stopping: str | None = None

    def link(self, name: str) -> Link:
        """The link called ``name``, registered on first use."""
        found = self._links.get(name)
        if found is None:
            found = self._links.setdefault(name, Link(name, self._clock))
        return found

    def stopping(self, reason: str = "stopping") -> None:
        self._stopping = reason

    def problems(self) -> dict[str, str]:
        now = self._clock()
        found = {}
        for name, link in list(self._links.items()):
            problem = link.problem(now)
            if problem is not None:
                found[name] = problem
        return found

    def check(self, more: dict[str, str | None] | None = None) -> Verdict:
        """``more``: links the caller keeps itself (name -> problem, None when up)."""
        problems = self.problems()
        names = set(self._links)
        for name, problem in (more or {}).items():
            names.add(name)
            if problem is not None:
                problems[name] = problem
        if self._stopping is not None:
            problems = {"process": self._stopping}
        elif not names and not problems:
            problems = {"process": "starting"}
        links = {name: problems.get(name, "up") for name in sorted(names)}
        if not problems:
            return Verdict(True, {"status": "ready", "links": links})
        reason = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
        return Verdict(False, {"status": "not ready", "reason": reason, "links": links})


class ProcessHealth:
    """A process's liveness and readiness, as the HTTP probes report them."""

    def __init__(self, role: str, stall_seconds: float = 60.0, clock: Clock = time.monotonic):
        self.role = role
        self.liveness = Liveness(stall_seconds, clock)
        self.readiness = Readiness(clock)

    def beat(self, loop: str) -> None:
        self.liveness.beat(loop)

    def live(self) -> Verdict:
        verdict = self.liveness.check()
        return Verdict(verdict.ok, {**verdict.body, "role": self.role})

    def ready(self) -> Verdict:
        verdict = self.readiness.check()
        return Verdict(verdict.ok, {**verdict.body, "role": self.role})


@dataclass
class HealthSnapshot:
    """A worker's counts at one moment, read together (its exit line says them)."""

    tasks_ok: int
    tasks_failed: int
    tasks_retried: int
    dead_lettered: int


class WorkerHealth(ProcessHealth):
    """A worker's health: its slots' connections and counters its threads update.

    Ready while each of its ``slots`` consumers is connected and the broker answers
    (the link ``broker``, kept by :class:`distq.sampler.StatsSampler`).
    """

    def __init__(
        self, stall_seconds: float = 60.0, slots: int = 0, clock: Clock = time.monotonic
    ) -> None:
        super().__init__("worker", stall_seconds, clock)
        self._now = clock
        self.slots = slots
        self._lock = threading.Lock()
        self._last_activity = self._now()
        self._retry_due = 0.0  # when the last retry this worker published is due (monotonic)
        self._up: set[str] = set()
        self._down: dict[str, str] = {}
        self.tasks_ok = self.tasks_failed = self.tasks_retried = self.dead_lettered = 0
        self.in_hand = 0

    def connected(self, up: bool, consumer: str = "", reason: str = "") -> None:
        """``consumer`` (one slot's) connected, or lost (or could not get) its connection."""
        with self._lock:
            if up:
                self._up.add(consumer)
                self._down.pop(consumer, None)
            else:
                self._up.discard(consumer)
                self._down[consumer] = reason or "disconnected"

    def ready(self) -> Verdict:
        with self._lock:
            slots: dict[str, str | None] = {f"slot {name}": None for name in self._up}
            slots.update({f"slot {name}": why for name, why in self._down.items()})
            up = len(self._up)
        if up < self.slots and len(slots) < self.slots:  # some slots have not tried yet
            slots["slots"] = f"{up} of {self.slots} connected"
        verdict = self.readiness.check(slots)
        return Verdict(verdict.ok, {**verdict.body, "role": self.role})

    def took(self, count: int) -> None:
        with self._lock:
            self._last_activity = self._now()
            self.in_hand += count

    def finished(
        self,
        ok: int = 0,
        failed: int = 0,
        retried: int = 0,
        malformed: int = 0,
        released: int = 0,
        orphaned: int = 0,
        retry_in: float = 0.0,
        kept: int = 0,
        since: float | None = None,
    ) -> None:
        """Count settled deliveries; each is exactly one of these outcomes.

        ``failed`` tasks got an error result and a dead letter; ``malformed`` messages
        and ``orphaned`` tasks (their master is gone) only a dead letter; ``released``
        ones went back to the queue unprocessed. ``retry_in``: seconds until the latest
        of the ``retried`` tasks' next attempts is due (see :meth:`idle_for`). ``kept``
        ones a full queue refused to take back leave the hand uncounted: the consumer
        keeps them, and its next fetch takes them again (:meth:`took`). ``since``
        (this health's clock): when the slot went idle, if the settle's call went on to
        wait for tasks (Redis's settle and claim in one round trip): the idle time of
        ``--exit-when-idle`` counts from then, not from the end of that wait."""
        with self._lock:
            now = self._now()  # a retry is due from now, whatever ``since`` says
            self._last_activity = max(self._last_activity, now if since is None else since)
            if retry_in > 0:
                self._retry_due = max(self._retry_due, now + retry_in)
            self.tasks_ok += ok
            self.tasks_failed += failed
            self.tasks_retried += retried
            self.dead_lettered += failed + malformed + orphaned
            self.in_hand -= ok + failed + retried + malformed + released + orphaned + kept

    def finished_ok(self, since: float | None = None) -> None:
        """:meth:`finished` of one task that ended ok, nothing else settled nor handed
        back: a lone task's settle (``--max-in-flight 1``), with no keywords spread nor
        outcomes of none added up (82 opcodes, 25 here)."""
        with self._lock:
            now = self._now()
            self._last_activity = max(self._last_activity, now if since is None else since)
            self.tasks_ok += 1
            self.in_hand -= 1

    def now(self) -> float:
        """This health's clock (monotonic seconds), for :meth:`finished`'s ``since``."""
        return self._now()

    def idle_for(self) -> float:
        """Seconds since a task was last taken or finished, or since the last retry this
        worker published fell due: 0 while tasks are in hand or such a retry waits out
        its delay (it is work to come, which ``--exit-when-idle`` must not walk away from)."""
        with self._lock:
            if self.in_hand:
                return 0.0
            return max(0.0, self._now() - max(self._last_activity, self._retry_due))

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            return HealthSnapshot(
                tasks_ok=self.tasks_ok,
                tasks_failed=self.tasks_failed,
                tasks_retried=self.tasks_retried,
                dead_lettered=self.dead_lettered,
            )
