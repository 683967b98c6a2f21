"""Collecting results: each task's first result, once, to whoever waits for it.

Delivery is at least once, so a result can arrive twice (a task that ran again after
its worker died, a redelivered result message). A :class:`Collector` maps each task id
it expects to what the submitter keeps for it (an *entry*: the number a squares job
checks the answer against, or a future an executor resolves) and hands over only the
first result per task. It is the part of a master that any way of submitting tasks
reuses: the squares job (:class:`distq.master.Master`) and an executor alike.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Generator, Iterable, Iterator, KeysView
from typing import Generic, TypeVar

from distq.codec import Codec
from distq.config import MESSAGE_BATCH
from distq.envelope import Result, Task, not_bytes
from distq.errors import (
    DistqError,
    EnvelopeError,
    MessageTooLarge,
    NestedTooDeep,
    SignatureError,
    VersionMismatch,
)
from distq.telemetry import MasterTelemetry, Received
from distq.transport.base import Producer

E = TypeVar("E")

#: ``on_result(result, entry, round_trip_seconds)``: a task's first result arrived.
OnResult = Callable[[Result, E, float], None]


#: How many answered task ids a collector remembers at least (to count a late copy as a
#: duplicate): far more than arrive within a lease or two.
REMEMBER = 100_000
#: How many round trips a collector's sample keeps at least (and at most twice as many).
SAMPLE = 100_000
#: Bad results of one pack said one by one; the rest of them are said in one line.
REFUSALS_SAID = 3

#: A task submitted and not answered yet: (entry, time.perf_counter() at submit, its
#: task's name for the JSON lines, or ""); a tuple, the cheapest record to make once per task.
Pending = tuple[E, float, str]


class Collector(Generic[E]):
    """Task id -> entry for every task submitted and not answered; results handed on once.

    :meth:`expect` the tasks as they are submitted; :meth:`collect` reads a producer's
    results and calls ``on_result`` for the first result of each expected task. Later
    copies count as :attr:`duplicates`; results of tasks never expected (another run's,
    a forgotten one's) are dropped; bodies that are not results count as
    :attr:`malformed` and go to ``on_malformed``. Round trips (submit to first result)
    are kept in :attr:`latencies`, in seconds. One thread at a time: the one that owns
    the producer.

    Memory stays bounded however long it runs (a master in ``--rate`` mode, an executor
    kept open): it remembers the ids of the last ``remember`` to ``2 * remember``
    answered tasks (a copy of an older one is dropped as a stranger's, not counted as a
    duplicate) and a sample of at most ``2 * SAMPLE`` round trips (every one, until
    there are more: then every second, fourth, ... spread evenly over the whole run).
    """

    def __init__(
        self,
        on_result: OnResult[E],
        on_malformed: Callable[[EnvelopeError], None] | None = None,
        telemetry: MasterTelemetry | None = None,
        codec: Codec | None = None,
        remember: int = REMEMBER,
    ) -> None:
        self._on_result, self._on_malformed = on_result, on_malformed
        self._telemetry = telemetry or MasterTelemetry()
        self._codec = codec or Codec()
        self._pending: dict[str, Pending[E]] = {}
        # answered ids in two generations: the current one, and the one before it
        self._finished: set[str] = set()
        self._finished_before: set[str] = set()
        self._remember = remember
        self.finished = 0  # tasks whose first result was handed on
        self.duplicates = 0
        self.malformed = 0
        self.latencies = Sample()

    @property
    def outstanding(self) -> int:
        """Tasks expected and not answered yet."""
        return len(self._pending)

    def is_waiting(self, task_id: str) -> bool:
        """Whether ``task_id`` was expected and has no result yet."""
        return task_id in self._pending

    def waiting_ids(self) -> KeysView[str]:
        """The ids of the tasks expected and not answered yet, live: ``in`` it is
        :meth:`is_waiting` without a Python call (a ledger asks once per task)."""
        return self._pending.keys()

    def waiting(self) -> list[tuple[str, E]]:
        """(task id, entry) of every task not answered yet, oldest first."""
        return [(task_id, entry) for task_id, (entry, _, _) in self._pending.items()]

    def expect(self, tasks: Iterable[tuple[str, E]], since: float | None = None) -> None:
        """Wait for these (task id, entry) pairs, submitted now; their round trips count
        from ``since`` (``time.perf_counter()``), when given, else from now."""
        now = time.perf_counter() if since is None else since
        pending = self._pending
        for task_id, entry in tasks:
            pending[task_id] = (entry, now, "")

    def expect_named(self, tasks: Iterable[tuple[str, E, str]], since: float) -> None:
        """:meth:`expect` these (task id, entry, task name): the name is what the task's
        JSON ``result received`` line says, kept with the task while it waits (no table
        of names of its own, per task, to fill and empty)."""
        pending = self._pending
        for task_id, entry, name in tasks:
            pending[task_id] = (entry, since, name)

    def entry(self, task_id: str) -> E | None:
        """The entry of a task expected and not answered yet, else None."""
        pending = self._pending.get(task_id)
        return pending[0] if pending is not None else None

    def sent_ago(self, task_id: str, task: Task) -> float:
        """Seconds since ``task_id``, sent as ``task``, was first submitted, at least: the
        longer of its age by :meth:`expect`'s clock (``time.perf_counter()``, which stands
        still while the host sleeps) and by its ``created_at`` (``time.time()``, which a
        clock step can set back); inf for a task not waited for. How far a take-back
        looks for its retries (:func:`distq.retries.retry_bodies`)."""
        pending = self._pending.get(task_id)
        if pending is None:
            return math.inf
        return max(time.perf_counter() - pending[1], time.time() - task.created_at)

    def discard(self, task_id: str) -> E | None:
        """Stop waiting for one task (cancelled, timed out); return its entry, if expected.

        A result that arrives for it later is dropped like any unexpected one.
        """
        pending = self._pending.pop(task_id, None)
        return pending[0] if pending is not None else None

    def forget(self) -> int:
        """Stop waiting for every task not answered yet; return how many there were."""
        count = len(self._pending)
        self._pending.clear()
        return count

    def wanted(self, max_count: int = MESSAGE_BATCH) -> int:
        """How many results a read asks for: up to ``max_count``, at most as many as it
        waits for (one for a lone task: Redis reads it in the wait's own reply, issue 16;
        a copy waits for the next read), one at least."""
        return max(1, min(max_count, self.outstanding))

    def collect(self, producer: Producer, timeout: float, max_count: int = MESSAGE_BATCH) -> int:
        """Read the results it wants (:meth:`wanted`, waiting up to ``timeout`` s for the
        first) and hand them on; return how many were first results."""
        return self.accept(producer.results(self.wanted(max_count), timeout))

    def read_waiting(self, producer: Producer) -> None:
        """Read the results already in the reply queue, without waiting (bounded), before
        tasks the broker does not hold are sent again: each answers its task, which is
        then not sent again. After a long partition (a master's registration lapsed) most
        of a job's results may wait there."""
        for _ in range(self.outstanding // MESSAGE_BATCH + 2):
            bodies = producer.results(MESSAGE_BATCH, 0)
            if not bodies:
                break
            self.accept(bodies)

    def read_left(self, producer: Producer) -> None:
        """:meth:`read_waiting` as a refused setting stops the run (a master's job, an
        executor's thread): the results already in answer their tasks, not counted missing
        nor failed with the rest. A queue key of another type on Redis stops the run once
        no task is leased, and the last results come with the last lease's end (1 of 2 in,
        a master stopped for 0.8 s by a stall injector). Nothing is asked when no task is
        outstanding; a refusal of this read too leaves them unread."""
        if self.outstanding:
            with contextlib.suppress(DistqError):
                self.read_waiting(producer)

    def accept(self, bodies: Iterable[bytes]) -> int:
        """Hand on the first result of each expected task among ``bodies``; return how many."""
        now = time.perf_counter()
        firsts = 0
        telemetry = self._telemetry
        logged = telemetry.log is not None  # JSON lines: each result with its round trip
        received: list[Received] = []  # for those lines, in the order they came
        # for the metrics, the first results (their round trips are ``round_trips``)
        counted: list[Result] = []
        count = counted.append if telemetry.metrics is not None else None
        duplicates_before = self.duplicates
        # once per result: looked up once per call
        pop, finish = self._pending.pop, self._finished.add
        on_result = self._on_result
        round_trips: list[float] = []
        latency = round_trips.append
        for result in _results(bodies, self._codec, self._refused):
            pending = pop(result.task_id, None)
            if pending is None:
                if result.task_id in self._finished or result.task_id in self._finished_before:
                    self.duplicates += 1
                    if logged:
                        received.append((result, None, ""))
                continue
            finish(result.task_id)
            entry, submitted, name = pending
            round_trip = now - submitted
            latency(round_trip)
            if logged:
                received.append((result, round_trip, name))
            if count is not None:
                count(result)
            firsts += 1
            on_result(result, entry, round_trip)
        self.finished += firsts
        if round_trips:
            self.latencies.extend(round_trips)
        if len(self._finished) >= self._remember:  # a new generation; the oldest goes
            self._finished_before, self._finished = self._finished, set()
        if count is not None or logged:  # else the call does nothing
            duplicates = self.duplicates - duplicates_before
            telemetry.collected(len(self._pending), received, counted, round_trips, duplicates)
        return firsts

    def _refused(self, error: EnvelopeError, count: int = 1) -> None:
        self.malformed += count
        if self._on_malformed is not None:
            self._on_malformed(error)


class Sample(list[float]):
    """Round trips: every one while there are fewer than ``2 * SAMPLE``; past that, every
    ``stride``-th one, the stride doubling (and every other one kept dropped) each time
    the list fills, so the sample spreads evenly over however long a run is."""

    def __init__(self, size: int = SAMPLE) -> None:
        super().__init__()
        self.size, self.stride, self._skip = size, 1, 0

    def extend(self, values: Iterable[float], /) -> None:
        if self.stride == 1:
            list.extend(self, values)  # no super() object made per call (a lone task's)
        else:  # every stride-th value, counting on from the last call's
            values = list(values)
            super().extend(values[self._skip :: self.stride])
            self._skip = (self._skip - len(values)) % self.stride
        while len(self) >= 2 * self.size:
            # kept: every stride-th value from the first; now every (2 * stride)-th, so
            # the next one to keep moves on by a stride when an odd number were kept
            if len(self) % 2:
                self._skip += self.stride
            del self[1::2]
            self.stride *= 2


def _results(
    bodies: Iterable[bytes],
    codec: Codec,
    refused: Callable[[EnvelopeError, int], None],
) -> Iterator[Result]:
    """The results in ``bodies`` (single results and packs), each one refused on its own:
    a bad result in a pack costs only itself, a refused message (unsigned, forged) all of
    it. A result over this process's size limit (its worker's is larger) is an error
    result for its task saying so (:meth:`Codec.stand_in`), not silence; so are those of
    a message too large to open at all, where their heads say them. Past
    :data:`REFUSALS_SAID` of one kind (the reason's text up to its first colon) in one
    read (``bodies``), the rest are said in one line: a pack of 10,000 bad items made
    10,000 lines, and so did a RabbitMQ pack, whose results come here as bodies of their
    own."""
    said: dict[str, int] = {}
    more = 0

    def refuse(exc: EnvelopeError, count: int) -> None:
        nonlocal more
        kind = str(exc).split(":", 1)[0]
        if said.get(kind, 0) < REFUSALS_SAID:
            said[kind] = said.get(kind, 0) + 1
            refused(exc, count)
        else:
            more += count

    open_results, decode, limit = codec.open_results, Result.decode, codec.max_message_bytes
    for body in bodies:
        try:
            envelopes = open_results(body)
        except MessageTooLarge as exc:
            stand_ins = [] if isinstance(exc, NestedTooDeep) else codec.oversized_results(body)
            if not stand_ins:
                refuse(exc, 1)
            yield from stand_ins
            continue
        except SignatureError as exc:  # a worker's refusal of a task says which
            refuse(codec.refusal_said(body, exc), 1)
            continue
        except EnvelopeError as exc:
            refuse(exc, 1)
            continue
        except Exception:
            if type(body) is bytes:
                raise
            # not bytes at all: a manager peer can put any plain value (a str, a list)
            refuse(not_bytes(body, "result"), 1)
            continue
        if len(body) > limit:  # a pack read past this process's limit: each result held to it
            envelopes = yield from _within(envelopes, limit, codec, refuse)
        for envelope in envelopes:
            try:
                yield decode(envelope)
            except EnvelopeError as exc:
                if isinstance(exc, VersionMismatch):  # a newer worker's: its task fails
                    stand_in = codec.versioned_stand_in(envelope, exc)
                    if stand_in is not None:
                        yield stand_in
                        continue
                refuse(exc, 1)
    if more:
        results = "result" if more == 1 else "results"
        refused(EnvelopeError(f"and {more:,} more {results} refused in the same read"), more)


def _within(
    envelopes: list[bytes],
    limit: int,
    codec: Codec,
    refused: Callable[[EnvelopeError, int], None],
) -> Generator[Result, None, list[bytes]]:
    """Yield a stand-in error result for each of ``envelopes`` over ``limit`` (refused if
    its head names no task); return the rest."""
    kept: list[bytes] = []
    for envelope in envelopes:
        if len(envelope) <= limit:
            kept.append(envelope)
            continue
        stand_in = codec.stand_in(envelope, len(envelope))
        if stand_in is None:
            refused(
                MessageTooLarge(
                    f"a result of {len(envelope):,} bytes, over the limit of {limit:,} "
                    "(DISTQ_MAX_MESSAGE_BYTES), was not decoded"
                ),
                1,
            )
        else:
            yield stand_in
    return kept
