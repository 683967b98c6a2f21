"""Outages without a broker: the backoff, the outage lines, the ledger, and the master's
reconnect-and-resubmit loop driven by a producer that fails on cue."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Sequence

import pytest

from distq.backoff import Backoff, Outage
from distq.console import Console
from distq.envelope import Task
from distq.errors import AuthenticationFailed, TransportError
from distq.ledger import Ledger
from distq.master import JobReport, JobSpec, Master
from distq.squares import Squares
from distq.transport.base import Producer, Transport
from seam import ok_result


def test_backoff_doubles_its_ceiling_up_to_the_cap_with_full_jitter() -> None:
    top = Backoff(base=0.1, cap=1.0, rng=lambda: 0.999999)
    assert [round(top.next(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    low = Backoff(base=0.1, cap=1.0, rng=lambda: 0.0)
    assert low.next() == 0.0  # jitter reaches all the way down
    top.reset()
    assert round(top.next(), 3) == 0.1
    many = Backoff()
    for _ in range(2000):  # 1,000 stopped short of 2**1024, which overflows a float
        assert 0 <= many.next() <= 5.0  # capped however long the outage (hours)


def test_an_outage_is_reported_once_lost_and_once_back_whatever_the_threads() -> None:
    now = [10.0]
    outage = Outage(clock=lambda: now[0])
    assert outage.back() is None  # nothing was lost
    assert outage.lost() and not outage.lost() and outage.ongoing
    now[0] = 12.5
    assert outage.back() == 2.5
    assert outage.back() is None and not outage.ongoing


def test_a_refusal_of_the_credentials_is_said_once_an_outage() -> None:
    outage = Outage()
    refused = AuthenticationFailed("Redis at h:1 refused the credentials; check the password.")
    assert outage.refused(refused) is None  # no outage: the caller's own error says it
    assert outage.lost()
    assert outage.refused(TransportError("Connection refused")) is None  # no refusal
    line = outage.refused(refused)
    assert line == (
        "Redis at h:1 refused the credentials; check the password; still reconnecting, "
        "with these credentials"
    )
    assert outage.refused(refused) is None  # said: not again in this outage
    assert outage.refused(AuthenticationFailed("another reason")) is not None
    outage.back()
    assert outage.lost() and outage.refused(refused) is not None  # a new outage
    outage.back()
    assert outage.lost(refused) and outage.refused(refused) is None  # its cause: said


def waiting_all(_: str) -> bool:
    return True


def test_the_ledger_resubmits_what_follows_the_held_prefix_and_still_waits() -> None:
    ledger = Ledger()
    ledger.record([(f"t{i}", f"b{i}".encode()) for i in range(6)])
    assert ledger.lost(6, waiting_all) == []  # the broker holds everything
    answered = {"t3"}
    again = ledger.lost(2, lambda task_id: task_id not in answered)
    assert [task_id for task_id, _ in again] == ["t2", "t4", "t5"]
    assert ledger.total == 5  # the first two, then the three submitted again
    assert [task_id for task_id, _ in ledger.lost(0, waiting_all)] == ["t0", "t1", "t2", "t4", "t5"]


def test_the_ledger_forgets_answered_tasks_at_the_front() -> None:
    ledger = Ledger()
    ledger.record([(f"t{i}", b"x") for i in range(5)])
    ledger.compact(lambda task_id: task_id not in {"t0", "t1", "t3"}, open_tasks=2)
    assert ledger.total == 5  # positions are kept: the broker counts them
    # the broker lost everything after position 1: t0, t1 are answered, t3 too
    assert [task_id for task_id, _ in ledger.lost(1, lambda t: t in {"t2", "t4"})] == ["t2", "t4"]
    assert ledger.total == 3


class Flaky(Producer):
    """A producer whose broker fails ``outage`` calls, then comes back having lost
    everything submitted (``held`` = 0) or nothing; it answers every task it holds."""

    def __init__(self, reply_to: str, outage: int, loses: bool) -> None:
        self.reply_to, self.outage, self.loses = reply_to, outage, loses
        self.queue: list[bytes] = []  # bodies the "broker" holds
        self.submitted = 0
        self.calls = 0
        self.reconciles = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls == 3:  # the third call starts the outage
            if self.loses:
                self.queue.clear()
            raise TransportError("broker at nowhere:1: connection lost")

    def submit(self, bodies: Sequence[bytes]) -> None:
        self._maybe_fail()
        self.queue.extend(bodies)
        self.submitted += len(bodies)

    def reconcile(self) -> int:
        self.reconciles += 1
        if self.calls >= 3 and self.outage > 0:
            self.outage -= 1
            raise TransportError("broker at nowhere:1: still down")
        if self.loses and self.calls >= 3:
            self.loses = False
            self.submitted = 0
        return self.submitted

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        self._maybe_fail()
        count = min(max_count, 5)  # a few at a time: the outage comes mid-job
        done, self.queue = self.queue[:count], self.queue[count:]
        return [_answer(body) for body in done]

    def close(self) -> None:
        pass


def _answer(body: bytes) -> bytes:
    task = Task.decode(body)
    return ok_result(task, task.args[0] ** 2)


class Stub(Transport):
    name = "stub"

    def __init__(self, producer: Flaky) -> None:
        self._producer = producer
        self.forgot = []

    def describe(self) -> str:
        return "stub"

    def reply_queue(self, job_id: str) -> str:
        return f"r.{job_id}"

    def producer(self, reply_to: str) -> Producer:
        return self._producer

    def consumer(self, consumer_id: str) -> object:  # type: ignore[override]
        raise NotImplementedError

    def dead_letters(self, limit: int = 100) -> list[object]:  # type: ignore[override]
        return []

    def stats(self) -> object:  # type: ignore[override]
        raise NotImplementedError

    def requeue_dead(self, limit: int | None, revive: object = None) -> int:
        return 0

    def forget_orphans(self, reply_to: str) -> int:
        self.forgot.append(reply_to)
        return 0

    forgot: list[str]

    def close(self) -> None:
        pass


def _run(
    producer: Flaky, stop: threading.Event | None = None, forgot: list[str] | None = None
) -> tuple[str, JobReport]:
    out = io.StringIO()
    transport = Stub(producer)
    master = Master(transport, Console(out=out, err=out))
    report = master.run(JobSpec(tasks=30, timeout=30), Squares(seed=3), stop)
    if forgot is not None:
        forgot += transport.forgot
    return out.getvalue(), report


def test_the_master_reconnects_and_resubmits_what_the_broker_lost() -> None:
    producer = Flaky("r", outage=3, loses=True)
    out, report = _run(producer)
    assert report.succeeded and report.ok == 30 and report.missing == 0
    assert out.count("connection lost; reconnecting") == 1  # one line for the outage
    assert "still down" not in out  # not one line per attempt
    assert out.count("reconnected to the broker after") == 1
    assert "the broker holds 0 of the 30 tasks sent since the job began" in out
    assert "submitting the 25 tasks among the others that wait for a result again" in out


class FailsOnItsFirstRead(Flaky):
    """A broker that fails the job's first read of results, its one task submitted, and
    has no result yet for the read after the reconnect."""

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls == 2:
            raise TransportError("broker at nowhere:1: connection lost")

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        if self.calls == 2:  # the first read back: no result yet
            self.calls += 1
            return []
        return super().results(max_count, timeout)


def test_a_reconnect_with_one_task_outstanding_says_1_task() -> None:
    """A job of one task, its broker lost as it read results: "reconnected to the broker
    after 0.1 s; 1 tasks outstanding"."""
    producer = FailsOnItsFirstRead("r", outage=0, loses=False)
    out = io.StringIO()
    report = Master(Stub(producer), Console(out=out, err=out)).run(
        JobSpec(tasks=1, timeout=30), Squares(seed=3)
    )
    assert report.succeeded, out
    assert re.search(
        r"^reconnected to the broker after [\d.]+ s; 1 task outstanding$", out.getvalue(), re.M
    ), out.getvalue()


def test_a_broker_that_kept_everything_gets_nothing_again() -> None:
    producer = Flaky("r", outage=1, loses=False)
    out, report = _run(producer)
    assert report.succeeded and "submitting" not in out
    assert producer.submitted == 30  # no duplicate was sent


def test_a_master_stopped_during_an_outage_ends_naming_what_is_missing() -> None:
    producer = Flaky("r", outage=10**6, loses=True)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    out, report = _run(producer, stop)
    assert report.missing == 25 and not report.succeeded  # 5 were in before the outage
    assert "job stopped after" in out and "25 missing" in out


class Withdraws(Flaky):
    """A Flaky broker that takes back whatever it is asked to, counting the calls."""

    takes_back = True
    withdrawals = 0

    def withdraw(self, bodies: Sequence[bytes], redelivered: bool = True) -> list[bool]:
        self.withdrawals += 1
        self._maybe_fail()
        return [True] * len(bodies)


def test_a_master_stopped_during_an_outage_does_not_wait_on_the_broker_to_withdraw() -> None:
    """Stopped mid-outage, the master takes nothing back: a call to a broker that does
    not answer waits out its socket's timeout, before the drain's own call does."""
    producer = Withdraws("r", outage=10**6, loses=True)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    out, report = _run(producer, stop)
    assert producer.withdrawals == 0 and report.missing == 25, out


def test_a_master_stopped_takes_back_what_the_broker_still_holds() -> None:
    producer = Withdraws("r", outage=0, loses=False)
    producer.calls = 3  # past the outage: the broker answers, and holds the 30 tasks
    producer.results = lambda max_count, timeout: []  # type: ignore[method-assign]
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    out, report = _run(producer, stop)
    assert producer.withdrawals == 1 and report.missing == 30, out
    assert "job stopped after" in out and "30 missing" in out


class Lapsed(Flaky):
    """A broker that kept everything, tasks and results, but whose count of this master's
    submissions restarted (Redis, after a partition longer than the master's time to
    live): its first reconcile after the outage says it holds none of them."""

    def reconcile(self) -> int:
        held = super().reconcile()
        self.lapsed = self.calls >= 3 and not self.reconciled_after
        if self.lapsed:
            self.reconciled_after, self.submitted = True, 0
            return 0
        return held

    reconciled_after = False


def test_results_waiting_in_the_reply_queue_are_read_before_anything_goes_again() -> None:
    """A master cut off from Redis past its time to live sent its whole rest again (266
    of 300 tasks run twice), though 262 of their results waited in its reply queue."""
    producer = Lapsed("r", outage=2, loses=False)
    out, report = _run(producer)
    # only the batch whose submit failed went again: no task ran twice
    assert report.succeeded and report.ok == 30 and report.duplicates == 0, out
    assert "submitting the 15 tasks among the others" in out and producer.submitted == 15


def test_a_master_looks_for_its_orphans_after_a_lapse_only() -> None:
    """It read the whole dead-letter queue (on RabbitMQ, 100,000 letters held a minute)
    at every reconcile that found tasks missing, a broker's refusals too (diff16): once
    after the lapse now, and once more as the job ends."""
    forgot: list[str] = []
    _run(Lapsed("r", outage=2, loses=False), forgot=forgot)
    assert len(forgot) == 2 and forgot[0].startswith("r."), forgot
    forgot.clear()
    out, report = _run(Refusing(refusals=6, loses=True), forgot=forgot)
    assert report.succeeded and "the broker holds 0 of the" in out and forgot == [], out


class Refusing(Flaky):
    """A broker that takes every connection and answers every reconcile, but refuses
    ``refusals`` writes in a row (Redis out of memory, a RabbitMQ alarm); if it
    ``loses``, what it held goes with the first refusal."""

    def __init__(self, refusals: int, loses: bool) -> None:
        super().__init__("r", outage=0, loses=loses)
        self.refusals = refusals

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls >= 3 and self.refusals > 0:
            self.refusals -= 1
            if self.loses:
                self.queue.clear()
                self.submitted, self.loses = 0, False
            raise TransportError("Redis at nowhere:1: OOM command not allowed")

    def reconcile(self) -> int:
        self.reconciles += 1
        return self.submitted


@pytest.mark.parametrize("loses", [False, True])
def test_a_broker_refusing_writes_is_one_outage_said_once(loses: bool) -> None:
    """Every refused write was a "reconnecting" line and a "reconnected ... after 0.0 s"
    (the reconcile went through), and each attempt to submit the lost tasks again said
    "the broker holds 0 of ..." again: 9 pairs, 7 such lines in a few seconds of Redis
    out of memory."""
    producer = Refusing(refusals=6, loses=loses)
    out, report = _run(producer)
    assert report.succeeded and report.ok == 30, out
    assert out.count("OOM command not allowed; reconnecting") == 1, out
    assert out.count("reconnected to the broker after") == 1, out
    assert out.count("the broker holds 0 of the") == (1 if loses else 0), out


class LastCallFails(Lapsed):
    """The outage starts at the job's last call, and the broker comes back having lost
    count (as :class:`Lapsed`): every result waits in the reply queue."""

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls == self.failing_call:
            raise TransportError("broker at nowhere:1: connection lost")

    failing_call = 0


@pytest.mark.parametrize("failing_call", [5, 6, 7])
def test_an_outage_that_ends_with_the_job_is_said_to_end(failing_call: int) -> None:
    """The last results read after an outage (the reply queue read before anything goes
    again) ended the job before the "reconnected" line: an outage that never ended."""
    producer = LastCallFails("r", outage=1, loses=False)
    producer.failing_call = failing_call
    out, report = _run(producer)
    assert report.succeeded and report.ok == 30, out
    assert out.count("; reconnecting") == out.count("reconnected to the broker after") == 1, out
