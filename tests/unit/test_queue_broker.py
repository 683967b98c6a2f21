"""The manager transport's in-master queues: leases, requeues, retries (no network).

Leases and retry delays run on a clock the tests move by hand, and the reaper is
called directly: no test sleeps, so none depends on how busy the machine is.
"""

from __future__ import annotations

import inspect
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from distq.errors import ConnectionFailed
from distq.transport import manager_broker
from distq.transport.manager import ManagerProducer, ManagerTransport, _listen_error
from distq.transport.manager_broker import BATCH_BYTES, COPY_LOOK, QueueBroker
from distq.transport.manager_wire import EXPOSED, BrokerProxy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fetch_leases_and_settle_publishes() -> None:
    broker = QueueBroker()
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    got = broker.fetch("q", "c1", 10, 0.1, 5.0)
    assert [body for _, body, _ in got] == [b"a", b"b"]
    assert broker.stats("q") == (0, 2, 0, 1)
    token = got[0][0]
    broker.settle("q", "c1", [(token, "r", b"result", None, 0.0, b"dead")])
    assert broker.get("r", 10, 0) == [b"result"]
    assert broker.stats("q") == (0, 1, 1, 1)


def test_expired_lease_requeues_behind_the_queued_tasks_and_marks_redelivered() -> None:
    """A lapsed lease's worker died or froze, maybe for a task it held: at the front, a
    task that ends its worker each time it runs went to each worker started next, and
    none of the tasks queued behind it ran (test_worker_misbehaving_tasks)."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a", b"b", b"c"])
    broker.fetch("q", "dies", 2, 0.1, 0.1)
    clock.now += 0.09
    broker.reap()
    assert broker.stats("q") == (1, 2, 0, 1)  # not yet
    clock.now += 0.02
    broker.reap()
    got = broker.fetch("q", "lives", 10, 0.1, 5.0)
    assert [(body, again) for _, body, again in got] == [(b"c", False), (b"a", True), (b"b", True)]


@pytest.mark.parametrize("ended", ["lapsed", "left"])
def test_a_late_result_drops_the_copy_where_its_lease_put_it_back(ended: str) -> None:
    """A lapsed lease's task goes behind the queue, a leaving consumer's to its front:
    a late result of either drops that copy, though more than a look from the other end."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    others = [b"%d" % i for i in range(COPY_LOOK + 1)]
    broker.put("q", [b"a", *others])
    ((token, _, _),) = broker.fetch("q", "stalled", 1, 0.1, 1.0)
    if ended == "lapsed":
        clock.now += 1.1
        broker.reap()
    else:
        broker.disconnect("stalled")
    queued = broker.peek("q", len(others) + 1)
    assert queued == ([*others, b"a"] if ended == "lapsed" else [b"a", *others])
    broker.settle("q", "stalled", [(token, "r", b"result", None, 0.0, None)])
    assert broker.get("r", 10, 0) == [b"result"]
    assert broker.peek("q", len(others) + 1) == others


def test_lease_left_is_the_time_until_the_last_lease_holding_tasks_lapses() -> None:
    """A master past a --timeout shorter than a SIGKILLed worker's lease found its slot
    attached and said nothing of it: the hosting process tells when the last lease that
    holds a task of the queue ends (none: None; one that holds nothing, or another
    queue's, does not count)."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a", b"b"])
    broker.put("other", [b"x"])
    assert broker.lease_left("q") is None
    broker.fetch("q", "short", 1, 0.1, 5.0)
    broker.fetch("q", "long", 1, 0.1, 30.0)
    broker.fetch("other", "elsewhere", 1, 0.1, 60.0)
    clock.now += 2.0
    assert broker.lease_left("q") == pytest.approx(28.0)
    broker.fetch("q", "empty", 1, 0.01, 100.0)  # a slot holding nothing: not its lease
    assert broker.lease_left("q") == pytest.approx(28.0)
    assert broker.lease_left("other") == pytest.approx(58.0)
    clock.now += 28.5
    broker.reap()
    assert broker.lease_left("q") is None  # both lapsed: their tasks queued again


def test_heartbeat_extends_the_lease() -> None:
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a"])
    broker.fetch("q", "c1", 1, 0.1, 0.2)
    for _ in range(5):  # a whole second, five leases, each renewed halfway through
        clock.now += 0.1
        broker.reap()
        broker.heartbeat("c1", 0.2)
    assert broker.stats("q") == (0, 1, 0, 1)
    clock.now += 0.21  # and without the heartbeat it lapses
    broker.reap()
    assert broker.stats("q") == (1, 0, 0, 0)


def test_a_lease_that_ran_out_while_the_master_stood_still_gets_its_time_back_once() -> None:
    """A master stopped past a lease (SIGSTOP, a paused VM): its first reap swept the lease
    of a task still running, and another slot of the worker ran a copy beside it
    (held19). A lease that ran out while the master stood still gets the time it had
    left back, once: a worker that died meanwhile has its tasks run after a second stop."""
    clock = Clock()
    broker = QueueBroker(clock, stood_still=2.5)
    broker.put("q", [b"dead", b"live"])
    broker.fetch("q", "dead", 1, 0.1, 5.0)
    broker.fetch("q", "live", 1, 0.1, 5.0)
    clock.now += 1
    broker.reap()  # the last reap before the stop: 4 s left of each lease
    clock.now += 4.5  # both ran out while nothing ran
    broker.reap()
    assert broker.stats("q") == (0, 2, 0, 2)  # both given 4 s back: none put back
    broker.heartbeat("live", 5.0)  # its worker lives
    clock.now += 6  # stopped again, both run out again
    broker.reap()
    got = broker.fetch("q", "idle", 10, 0.1, 5.0)
    assert [(body, again) for _, body, again in got] == [(b"dead", True)]
    assert broker.stats("q") == (0, 2, 0, 2)  # live's renewal made it whole: given back again


def test_a_stop_counts_against_half_of_each_lease_of_its_own() -> None:
    """Whether a gap between reaps was a stop is judged by each lease's length: by the
    master's, a worker's 1 s lease ran out unseen in a stop of 0.9 s (stood20). A live
    worker renews every third of its lease: a gap under half of it did not keep one from
    renewing, so a lease that ran out in it is a dead worker's."""
    clock = Clock()
    broker = QueueBroker(clock, stood_still=0.5)
    broker.put("q", [b"long", b"short"])
    broker.fetch("q", "long", 1, 0.1, 2.0)  # 2 s: renewed every 0.67 s while it lives
    clock.now += 1.2
    broker.fetch("q", "short", 1, 0.1, 0.8)  # both run out 0.8 s on
    clock.now += 0.1
    broker.reap()
    clock.now += 0.8  # a gap of 0.8 s: half of the short lease, not of the long one
    broker.reap()
    got = broker.fetch("q", "idle", 10, 0.1, 5.0)
    assert [(body, again) for _, body, again in got] == [(b"long", True)]


def test_settling_after_the_lease_expired_still_delivers_the_result() -> None:
    broker = QueueBroker()
    broker.open("r")
    broker.put("q", [b"a"])
    ((token, _, _),) = broker.fetch("q", "slow", 1, 0.1, 5.0)
    broker.disconnect("slow")  # as if the lease had expired
    broker.settle("q", "slow", [(token, "r", b"late", None, 0.0, None)])
    assert broker.get("r", 10, 0) == [b"late"]  # at-least-once: the master drops the duplicate


def lapsed(clock: Clock, broker: QueueBroker, body: bytes = b"a") -> int:
    """``body`` leased to "stalled", whose lease then lapses: its token."""
    broker.put("q", [body])
    ((token, _, _),) = broker.fetch("q", "stalled", 1, 0.1, 1.0)
    clock.now += 1.1
    broker.reap()
    return token


@pytest.mark.parametrize("taken", [False, True])
def test_a_late_retry_or_dead_letter_is_not_published_the_copy_decides(taken: bool) -> None:
    """A worker stalled past its lease (SIGSTOP, a task holding the GIL) settled late: its
    retry started the task again after another worker's result, its dead letter and error
    result failed a task that succeeded. The copy requeued at the lapse decides."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    token = lapsed(clock, broker)
    if taken:
        broker.fetch("q", "other", 1, 0.1, 5.0)
    # each says which were late (the worker's line says its retry was not sent)
    assert broker.settle("q", "stalled", [(token, None, None, b"a-attempt-2", 0.0, None)]) == [
        token
    ]
    assert broker.settle("q", "stalled", [(token, "r", b"failed", None, 0.0, b"dead")]) == [token]
    assert broker.get("r", 10, 0) == []
    assert broker.stats("q") == ((0, 1, 0, 1) if taken else (1, 0, 0, 0))  # the copy only


@pytest.mark.parametrize("taken", [False, True])
def test_a_late_result_is_published_and_the_requeued_copy_dropped(taken: bool) -> None:
    """A task holding the GIL past its lease ran again and again on manager (13 runs in
    108 s): each run's lease lapsed in turn, and a late settle left the copy requeued.
    The copy still queued goes; one leased again runs, but is not put back again."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    token = lapsed(clock, broker)
    other = broker.fetch("q", "other", 1, 0.1, 5.0) if taken else []
    broker.settle("q", "stalled", [(token, "r", b"result", None, 0.0, None)])
    assert broker.get("r", 10, 0) == [b"result"]
    assert broker.stats("q") == ((0, 1, 0, 1) if taken else (0, 0, 0, 0))  # a copy leased runs
    clock.now += 5.1  # the other holder stalls too: its copy does not come back
    broker.reap()
    assert broker.stats("q") == (0, 0, 0, 0)
    for token_of_other, _, _ in other:  # and its late settle publishes only its result
        broker.settle("q", "other", [(token_of_other, "r", b"again", b"retry", 0.0, None)])
    assert broker.stats("q") == (0, 0, 0, 0)


@pytest.mark.parametrize("fetch", [False, True])
def test_a_settle_sent_again_after_the_master_ran_it_is_settled_already(fetch: bool) -> None:
    """A keeper's settle the master ran after its worker stopped waiting for the answer,
    which the slot sends again: its result went twice, and its retry was found late, the
    worker saying "not retried" of a retry sent (test_keeper_settle_manager_busy)."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b", b"next"])
    (a, _, _), (b, _, _) = broker.fetch("q", "c", 2, 0.1, 5.0)
    items = [(a, "r", b"result", None, 0.0, None), (b, None, None, b"b-attempt-2", 0.0, None)]
    assert broker.settle("q", "c", items) == []
    clock.now += 4.0
    broker.heartbeats(["c"], 5.0)
    if fetch:  # the slot's settle, with its next fetch
        late, got = broker.settle_fetch_late("q", "c", items, 1, 5.0)
        assert late == [] and [body for _, body, _ in got] == [b"next"]
    else:
        assert broker.settle("q", "c", items) == []
    assert broker.get("r", 10, 0) == [b"result"]
    assert broker.peek("q", 10).count(b"b-attempt-2") == 1


def test_a_late_retry_sent_again_is_late_again_a_late_result_goes_once() -> None:
    """A settle of a lapsed lease's tasks, by a consumer leasing anew, sent again: its
    retry was not published, and is said late again (else the worker counted a retry
    never sent); its result was, and is not sent twice."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    (retried, _, _), (done, _, _) = broker.fetch("q", "stalled", 2, 0.1, 1.0)
    clock.now += 1.1
    broker.reap()
    assert len(broker.fetch("q", "stalled", 10, 0.1, 5.0)) == 2  # leased anew: both copies
    items = [(retried, None, None, b"a-2", 0.0, None), (done, "r", b"result", None, 0.0, None)]
    assert broker.settle("q", "stalled", items) == [retried]
    assert broker.settle("q", "stalled", items) == [retried]
    assert broker.get("r", 10, 0) == [b"result"]


def remembered(broker: QueueBroker, consumer: str) -> set[int]:
    """The tokens ``consumer`` settled that the master remembers."""
    lease = broker._leases[consumer]
    return set(lease.settled) | set(lease.settled_before)


def test_a_consumers_settled_tokens_are_remembered_a_lease_or_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a settle sent again is checked against is bounded: a lease's tokens (10 s at
    least) or the latest SETTLED_KEPT, a batch's at least; a window more once the
    consumer goes."""
    monkeypatch.setattr(manager_broker, "SETTLED_KEPT", 50)
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"t"] * 400)
    windows: list[list[int]] = []
    for lease in (10.0, 86400.0):  # by time, then (a lease too long: a day) by count
        for _ in range(20):
            tokens = [token for token, _, _ in broker.fetch("q", "c", 10, 0.1, lease)]
            broker.settle("q", "c", [(t, None, None, None, 0.0, None) for t in tokens])
            windows.append(tokens)
            clock.now += 2.5
        kept = remembered(broker, "c")
        assert set(windows[-1]) <= kept and len(kept) <= (80 if lease == 10.0 else 120)
    broker.disconnect("c")
    assert "c" not in broker._leases
    clock.now += 1e9  # kept a window (its lease) once it ended (below), then forgotten
    broker.reap()
    assert broker._ended == {}


@pytest.mark.parametrize("ended", ["lapsed", "disconnected"])
def test_a_settle_sent_again_once_its_lease_ended_is_settled_already(ended: str) -> None:
    """A settle answered, its consumer's lease ended since (lapsed while the master was
    busy, or closed by a stopping worker), and the settle sent again (a stopping worker's
    retry of a settle that failed part-way): its result went out twice. The ended lease's
    tokens are kept a window (a lease, 10 s at least), then forgotten."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    (a, _, _), (b, _, _) = broker.fetch("q", "c", 2, 0.1, 5.0)
    items = [(a, "r", b"result", None, 0.0, None), (b, None, None, b"b-attempt-2", 0.0, None)]
    assert broker.settle("q", "c", items) == []
    if ended == "lapsed":
        clock.now += 5.1
        broker.reap()
    else:
        broker.disconnect("c")
    assert broker.settle("q", "c", items) == []
    assert broker.get("r", 10, 0) == [b"result"]
    assert broker.peek("q", 10) == [b"b-attempt-2"]
    clock.now += 10.0
    broker.reap()
    assert broker._ended == {}


def test_a_fetch_that_waited_past_its_lease_holds_what_it_then_takes() -> None:
    """An idle slot waits in fetch longer than its lease, and the reaper drops its lease
    meanwhile. Were the task it then takes put in the dropped lease (mutant M16 of
    mut14b: no renewal after the wait), it would be held by nobody: its retry, dead
    letter or death not seen, the task lost (the master waits until --timeout)."""
    clock = Clock()
    broker = QueueBroker(clock)
    got: list[tuple[int, bytes, bool]] = []
    waiting = threading.Thread(target=lambda: got.extend(broker.fetch("q", "idle", 1, 10.0, 1.0)))
    waiting.start()
    deadline = time.monotonic() + 5
    while broker.stats("q")[3] == 0 and time.monotonic() < deadline:  # it waits, lock free
        time.sleep(0.01)
    clock.now += 1.1  # its lease lapses while it waits
    broker.reap()
    broker.put("q", [b"a"])
    waiting.join(5)
    ((token, body, _),) = got
    assert body == b"a" and broker.stats("q") == (0, 1, 0, 1)  # held: leased anew
    broker.settle("q", "idle", [(token, None, None, b"a-attempt-2", 0.0, None)])
    assert broker.peek("q", 10) == [b"a-attempt-2"]  # the retry is queued


def test_stats_count_only_the_consumers_of_that_queue() -> None:
    """Slots of workers on another queue of the same master counted as attached to this
    one (mutant M15 of mut14b): a job with no result said slots were attached."""
    broker = QueueBroker()
    broker.fetch("other", "w", 1, 0, 5.0)
    assert broker.stats("q") == (0, 0, 0, 0)
    assert broker.stats("other")[3] == 1


def test_reading_a_queue_keeps_nothing_for_its_name() -> None:
    """A master kept a queue (and its condition, about 4 KB) for every name anyone asked
    about, `distq status --queue <name>` included, for as long as it ran."""
    broker = QueueBroker()
    for n in range(100):
        name = f"typo{n}"
        assert broker.stats(name) == (0, 0, 0, 0)
        assert broker.peek(name, 10) == [] and broker.peek(f"{name}.dead", 10) == []
        assert broker.withdraw(name, [b"x"]) == [False]
        assert broker.requeue_dead(name, b"letter", b"task") is False
    assert broker._queues == {} and broker._ready == {}


def test_a_late_settle_keeps_at_most_lapsed_bytes_of_lapsed_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deliveries of lapsed leases were kept for a late settle by count only: 40
    killed workers holding 128 tasks of 256 KiB kept 1.3 GB in the master, their copies
    long done."""
    monkeypatch.setattr(manager_broker, "LAPSED_BYTES", 10_000)
    clock = Clock()
    broker = QueueBroker(clock)
    for n in range(50):
        lapsed(clock, broker, bytes([n]) * 1000)
        broker.fetch("q", "other", 1, 0.1, 86400.0)  # the copy runs elsewhere
    assert broker._lapsed_bytes <= 10_000 and len(broker._lapsed) <= 10


def test_a_body_that_is_not_bytes_is_kept_as_bytes_that_say_what_it_was() -> None:
    """A manager peer's request may carry any plain value: kept as it came, an int of
    5,000 digits or a list nested 2,000 deep failed every repr of it (a worker's slot in
    a reconnect loop, a master's traceback), a bytearray or a list nested 900 deep every
    fetch (it could not be sent back), a list a hosting Executor's withdraw (diff13b)."""
    deep: list[object] = []
    for _ in range(2000):
        deep = [deep]
    values: list[object] = [10**5000, deep, bytearray(b"ba"), [b"x"], {1, 2}, "text"]
    broker = QueueBroker()
    broker.open("r")
    broker.put("q", values)  # type: ignore[arg-type]
    assert broker.withdraw("q", [b"not there"]) == [False]
    got = [body for _, body, _ in broker.fetch("q", "c", 10, 0.1, 5.0)]
    assert all(type(body) is bytes and body.startswith(b"(not bytes: a ") for body in got)
    assert [body.split(b":")[0] for body in got] == [
        b"(not bytes",
        b"(not bytes",
        b"(not bytes",
        b"(not bytes",
        b"(not bytes",
        b"(not bytes",
    ]
    assert b"an int that cannot be shown" not in got[0] and b"int" in got[0]
    ((token, _, _),) = [(1, None, None)]
    broker.put("q", [b"task"])
    ((token, _, _),) = broker.fetch("q", "c", 1, 0.1, 5.0)
    broker.settle("q", "c", [(token, "r", deep, None, 0.0, [b"dead"])])  # type: ignore[list-item]
    (result,) = broker.get("r", 10, 0)
    assert type(result) is bytes and result.startswith(b"(not bytes: a list")
    assert all(type(letter) is bytes for letter in broker.peek("q.dead", 10))


def test_delayed_retry_becomes_ready_after_its_delay() -> None:
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0.1, 5.0)
    broker.settle("q", "c1", [(token, None, None, b"a2", 0.3, None)])
    clock.now += 0.29
    broker.reap()
    assert broker.fetch("q", "c1", 1, 0, 5.0) == []
    clock.now += 0.02
    broker.reap()
    assert [body for _, body, _ in broker.fetch("q", "c1", 1, 0, 5.0)] == [b"a2"]


def test_the_reaper_wakes_when_a_retry_falls_due_not_a_whole_interval_later() -> None:
    """Due retries moved in only every 0.25 s: a 0.5 s retry started after 0.63 s and a
    1 s one after 1.25 s, where Redis and RabbitMQ keep within 20 ms (retries11)."""
    clock = Clock()
    broker = QueueBroker(clock)
    assert broker.next_reap(0.25) == 0.25  # nothing delayed
    broker.put("q", [b"a"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0.1, 5.0)
    broker.settle("q", "c1", [(token, None, None, b"a2", 0.5, None)])
    clock.now += 0.4
    assert broker.next_reap(0.25) == pytest.approx(0.1)  # the retry's due time
    clock.now += 0.2
    assert broker.next_reap(0.25) == 0.0


def test_the_reaper_thread_expires_leases_on_its_own() -> None:
    broker = QueueBroker()
    broker.start_reaper(0.02)
    try:
        broker.put("q", [b"a"])
        broker.fetch("q", "dies", 1, 0.1, 0.05)
        got = broker.fetch("q", "lives", 1, 5.0, 5.0)  # wakes when the reaper requeues it
        assert [(body, again) for _, body, again in got] == [(b"a", True)]
    finally:
        broker.stop()


def test_release_and_disconnect_hand_back_to_the_front() -> None:
    broker = QueueBroker()
    broker.put("q", [b"a", b"b", b"c", b"d"])
    got = broker.fetch("q", "c1", 3, 0.1, 5.0)
    broker.release("c1", [got[1][0]])
    assert [body for _, body, _ in broker.fetch("q", "c2", 1, 0.1, 5.0)] == [b"b"]
    broker.disconnect("c1")
    rest = broker.fetch("q", "c2", 10, 0.1, 5.0)
    assert [(body, again) for _, body, again in rest] == [(b"a", True), (b"c", True), (b"d", False)]


def test_the_workers_proxy_offers_every_exposed_method_with_the_brokers_signature() -> None:
    for name in EXPOSED:
        served = inspect.signature(getattr(QueueBroker, name))
        proxied = inspect.signature(getattr(BrokerProxy, name))
        assert list(proxied.parameters) == list(served.parameters), name
    public = {n for n, v in vars(QueueBroker).items() if callable(v) and not n.startswith("_")}
    assert public - set(EXPOSED) == {
        "start_reaper",
        "stop",
        "reap",
        "next_reap",
        "hold",
        "dead_counts",
        "task_counts",
        "unget",
        "unsent",
        "redelivered",
        "lease_left",
        "serve",
    }  # the master's own


def test_results_go_only_to_an_open_reply_queue_and_never_create_one() -> None:
    broker = QueueBroker()
    broker.open("mine")
    broker.put("q", [b"a", b"b", b"c"])
    (a, b, c) = (token for token, _, _ in broker.fetch("q", "c1", 3, 0.1, 5.0))
    broker.settle("q", "c1", [(a, "mine", b"ok", None, 0.0, None)])
    broker.settle("q", "c1", [(b, "nobody", b"lost", None, 0.0, None)])
    assert broker.gone(["mine", "nobody"]) == ["nobody"]
    broker.delete("mine")  # the master closed
    broker.settle("q", "c1", [(c, "mine", b"late", None, 0.0, None)])
    assert broker.gone(["mine"]) == ["mine"]
    assert broker.get("mine", 10, 0) == [] and broker.get("nobody", 10, 0) == []


def test_a_reply_queue_not_renewed_for_its_ttl_lapses_with_the_results_it_holds() -> None:
    # a remote producer that died kept its reply queue, and every result for it, for good
    clock = Clock()
    broker = QueueBroker(clock, reply_ttl=10.0)
    assert broker.open("mine") is False  # new
    broker.put("q", [b"a", b"b"])
    (a, b) = (token for token, _, _ in broker.fetch("q", "c1", 2, 0.1, 60.0))
    broker.settle("q", "c1", [(a, "mine", b"held", None, 0.0, None)])
    clock.now += 9.0
    assert broker.open("mine") is True  # renewed: ten seconds from now
    clock.now += 9.0
    broker.reap()
    assert broker.gone(["mine"]) == []
    clock.now += 1.5
    broker.reap()
    assert broker.gone(["mine"]) == ["mine"]  # its tasks are dead-lettered unrun
    broker.settle("q", "c1", [(b, "mine", b"late", None, 0.0, None)])  # dropped
    assert broker.open("mine") is False  # lapsed: opened afresh, without what it held
    assert broker.get("mine", 10, 0) == []


def test_results_handed_back_to_a_reply_queue_that_lapsed_meanwhile_leave_it_unmade() -> None:
    # a get's results, handed back as its producer left before the reply (unget), made
    # the lapsed reply queue again as a queue no producer opened: its producer's next
    # open was refused as one of tasks, and its read as well
    clock = Clock()
    broker = QueueBroker(clock, reply_ttl=10.0)
    broker.open("mine")
    clock.now += 11.0
    broker.reap()
    broker.unget("mine", [b"a result"])
    assert broker.open("mine") is False  # lapsed: opened afresh, without what it held
    assert broker.get("mine", 10, 0) == []


def test_a_read_of_a_reply_queue_that_lapsed_waits_as_a_read_of_an_empty_one() -> None:
    # a read of a name no producer opened (its reply queue lapsed) returned at once if
    # it did not wait: a remote producer's results() loop asked the master without end
    broker = QueueBroker(Clock(), reply_ttl=10.0)
    got: list[list[bytes]] = []
    reading = threading.Thread(target=lambda: got.append(broker.get("gone", 10, 30.0)))
    reading.start()
    reading.join(0.2)
    assert reading.is_alive()  # it waits its timeout (30 s)
    broker.stop()  # a master that stops ends the wait
    reading.join(5)
    assert not reading.is_alive()
    assert got == [[]]


def test_a_reply_queue_that_lapsed_while_the_master_stood_still_gets_its_time_back() -> None:
    """A master stopped past a remote producer's reply queue's ttl dropped it as it
    resumed, with the results it held: its producer found it lapsed and submitted its
    tasks again. A gap over half the ttl gives it back the time it had left; a gap under
    that did not keep a producer from renewing, so a queue that lapsed in it is a dead
    producer's."""
    clock = Clock()
    broker = QueueBroker(clock, reply_ttl=10.0, stood_still=0.5)
    broker.open("live")
    broker.open("dead")
    broker.put("live", [b"held"])
    clock.now += 2.0
    broker.reap()  # the last reap before the stop: 8 s left of each
    clock.now += 12.0  # both lapsed while nothing ran
    broker.reap()
    assert broker.gone(["live", "dead"]) == []
    assert broker.open("live") is True and broker.get("live", 10, 0) == [b"held"]
    for _ in range(17):  # reaped as it runs: the dead one's 8 s are up
        clock.now += 0.5
        broker.reap()
    assert broker.gone(["live", "dead"]) == ["dead"]  # the live one renewed
    clock.now += 4.9  # a gap under half the ttl: a producer could renew in it
    broker.reap()
    clock.now += 4.9
    broker.reap()
    assert broker.gone(["live"]) == ["live"]


def test_a_producer_renews_its_reply_queue_and_says_when_it_had_lapsed() -> None:
    clock = Clock()
    broker = QueueBroker(clock, reply_ttl=10.0)
    broker.open("mine")
    producer = ManagerProducer(broker, "q", "mine", "here", renew_every=0.0)
    producer.submit([b"a", b"b"])
    assert producer.reconcile() == 2
    clock.now += 8.0
    assert producer.results(10, 0) == []  # renews (due at once here)
    clock.now += 8.0
    broker.reap()
    assert broker.gone(["mine"]) == []
    clock.now += 11.0
    broker.reap()
    assert broker.gone(["mine"]) == ["mine"]
    producer.submit([b"c"])  # renews first: open again
    assert broker.gone(["mine"]) == []
    assert producer.reconcile() == 0  # the broker may have dead-lettered any of them
    producer.submit([b"d"])
    assert producer.reconcile() == 1


def test_a_consumer_back_under_its_old_name_does_not_renew_the_old_lease() -> None:
    """A new connection's consumer has a name of its own (ManagerConsumer adds a suffix):
    under a new name, the old lease runs out and its tasks go back."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a"])
    broker.fetch("q", "w-0.aaaaaa", 1, 0.1, 1.0)  # the first connection, then it is lost
    for _ in range(3):
        clock.now += 0.5
        broker.heartbeat("w-0.bbbbbb", 1.0)  # the reconnected slot renews its own lease
        broker.reap()
    got = broker.fetch("q", "w-0.bbbbbb", 1, 0, 1.0)
    assert [(body, again) for _, body, again in got] == [(b"a", True)]


@pytest.mark.parametrize("error", [EOFError, ConnectionResetError])
def test_a_master_closing_as_a_worker_connects_is_a_connection_failure(
    error: type[Exception],
) -> None:
    """Seen as a worker thread's traceback (EOFError) when a job ended as it connected, and
    as "cannot reach the master ... Connection reset by peer" (``make example``)."""

    def closing() -> None:
        raise error

    transport = ManagerTransport.__new__(ManagerTransport)  # only its address is needed
    transport.address = "127.0.0.1:9"
    with pytest.raises(ConnectionFailed, match="closed the connection as we connected"):
        transport._connect(closing)


def test_withdraw_takes_waiting_tasks_only_once_each_and_keeps_the_order() -> None:
    broker = QueueBroker()
    broker.put("q", [b"a", b"b", b"c", b"b", b"d"])
    broker.fetch("q", "c1", 1, 0.1, 5.0)  # "a" is leased: not withdrawable
    assert broker.withdraw("q", [b"a", b"b", b"d", b"zz", b"b", b"b"]) == [
        False, True, True, False, True, False
    ]  # fmt: skip
    assert broker.peek("q", 10) == [b"c"]
    assert broker.withdraw("q", []) == []


def test_requeue_dead_moves_the_oldest_letter_only_if_it_is_still_the_oldest() -> None:
    broker = QueueBroker()
    broker.put("q.dead", [b"letter-1", b"letter-2"])
    assert broker.requeue_dead("q", b"letter-2", b"task-2") is False  # not the oldest
    assert broker.requeue_dead("q", b"letter-1", b"task-1") is True
    assert broker.requeue_dead("q", b"letter-1", b"task-1") is False  # taken already
    assert broker.peek("q", 10) == [b"task-1"]
    assert broker.peek("q.dead", 10) == [b"letter-2"]


def test_a_name_that_does_not_resolve_is_not_blamed_on_the_port() -> None:
    # (the master's listen error, for an address it cannot resolve: no DNS in the tests)
    why = _listen_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert why.startswith("cannot resolve its host (Name or service not known)"), why
    assert "0.0.0.0" in why and "port" not in why, why


def test_the_hosting_processs_own_reply_queue_never_lapses() -> None:
    # a master whose own loop was held up past master_ttl (output to a full pipe, say)
    # lost its reply queue, and every result in it, to its own reaper
    clock = Clock()
    broker = QueueBroker(clock, reply_ttl=10.0)
    broker.hold("own")
    broker.put("q", [b"a"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0.1, 600.0)
    broker.settle("q", "c1", [(token, "own", b"kept", None, 0.0, None)])
    clock.now += 3600.0
    broker.reap()
    assert broker.gone(["own"]) == []
    assert broker.open("own") is True  # a renewal does not make it one that lapses
    clock.now += 3600.0
    broker.reap()
    assert broker.get("own", 10, 0) == [b"kept"]


def test_a_reply_holds_batch_bytes_of_bodies_before_its_last() -> None:
    # over the manager wire a reply is one message, which each end bounds
    # (manager_wire.frame_limit): 128 tasks of 1 MiB were one of 128 MiB
    broker = QueueBroker()
    body = b"x" * (BATCH_BYTES // 4)
    broker.put("q", [body] * 10)
    assert len(broker.peek("q", 10)) == 5
    assert len(broker.fetch("q", "c", 10, 0.0, 60.0)) == 5
    broker.open("r")
    broker.put("r", [body] * 10)
    assert len(broker.get("r", 10, 0.0)) == 5
    assert len(broker.fetch("q", "c", 1, 0.0, 60.0)) == 1  # what is asked for, at most


def test_settled_tokens_kept_as_runs_answer_as_a_set_would() -> None:
    """The settled tokens are kept as runs of consecutive ones (_Tokens): a token added
    twice, before, after, between and joining two runs, out of order, and one never
    added answer as a set of them does."""
    tokens, added = manager_broker._Tokens(), set[int]()
    for token in [5, 5, 7, 6, 1, 3, 2, 10, 9, 12, 11, 20, 4, 8, 0, 30, 29, 31, 28]:
        tokens.add(token)
        added.add(token)
        assert len(tokens) == len(added) and set(tokens) == added
    assert list(tokens.starts) == [0, 20, 28] and list(tokens.ends) == [12, 20, 31]
    assert [t for t in range(-2, 40) if t in tokens] == sorted(added)
    assert -1 not in manager_broker._Tokens() and 0 not in manager_broker._Tokens()
    clock = Clock()  # a peer's int token of any value: settled as before, remembered as none
    broker = QueueBroker(clock)
    broker.open("r")
    broker.heartbeat("c", 5.0)  # a lease, that remembers what it settles
    odd: list[object] = [1 << 64, -5, 7, 1.0, "1", None]  # not an int: refused, and after it
    items = [(t, "r", b"result", None, 0.0, None) for t in odd]
    with pytest.raises(ValueError, match="a token of float, not an int: 3 tasks not settled"):
        broker.settle("q", "c", items)  # type: ignore[arg-type]
    assert broker.get("r", 10, 0) == [b"result"] * 3
    assert remembered(broker, "c") == {7}


def test_settled_tokens_added_a_batch_at_a_time_answer_as_a_set_would() -> None:
    """A settle adds its tokens at once (_Tokens.extend): a batch in a row as one run
    (joining the last one when it follows it), any other batch token by token."""
    tokens, added = manager_broker._Tokens(), set[int]()
    batches = [[0, 1, 2], [3, 4], [10, 11], [5, 5], [9, 8], [12], [1 << 63], [20, 21, 22]]
    for batch in batches:
        tokens.extend(batch)
        added.update(t for t in batch if 0 <= t < 1 << 63)
        assert len(tokens) == len(added) and set(tokens) == added
    assert list(tokens.starts) == [0, 8, 20] and list(tokens.ends) == [5, 12, 22]
    clock = Clock()  # a batch settled twice in one call: published once
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    leased = broker.fetch("q", "c", 2, 0, 5.0)
    items = [(w[0], "r", b"result", None, 0.0, None) for w in leased]
    broker.settle("q", "c", items + items)
    assert broker.get("r", 10, 0) == [b"result"] * 2
    assert remembered(broker, "c") == {w[0] for w in leased}


@pytest.mark.parametrize(
    "delay",
    ["0.5", None, [1], b"1", True, float("nan"), float("inf"), -1.0, 1e300, 10**400],
    ids=["str", "None", "list", "bytes", "bool", "nan", "inf", "negative", "1e300", "huge-int"],
)
def test_a_retry_delay_that_is_not_seconds_is_refused_and_its_task_not_lost(
    delay: object,
) -> None:
    """A worker (any peer holding the key) sends each retry's delay; the master took it
    as it came: a str raised mid-settle, after the task's lease was dropped and before
    its retry was queued (the task lost, the settle's later tasks left to lapse and run
    again); an infinite or huge delay queued a retry that never came due. Redis and
    RabbitMQ never see such a delay: a worker turns its own into milliseconds. The
    settle stops at that retry, its task and those after it left leased to run again
    when their leases lapse, and the call then fails saying what was refused."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b", b"c"])
    (ta, _, _), (tb, _, _), (tc, _, _) = broker.fetch("q", "c1", 3, 0.1, 5.0)
    items = [
        (ta, "r", b"ran a", None, 0.0, None),
        (tb, None, None, b"b retried", delay, None),
        (tc, None, None, b"c retried", 0.0, None),
    ]
    with pytest.raises((TypeError, ValueError), match=r"retry delay .* not settled"):
        broker.settle("q", "c1", items)  # type: ignore[arg-type]
    assert broker.get("r", 10, 0) == [b"ran a"]
    clock.now += 5.1  # b's and c's leases lapse: they run again
    broker.reap()
    got = broker.fetch("q", "c2", 10, 0, 5.0)
    assert sorted((body, again) for _, body, again in got) == [(b"b", True), (b"c", True)]
    broker.settle("q", "c2", [(token, None, None, None, 0.0, None) for token, _, _ in got])
    with pytest.raises((TypeError, ValueError), match=r"retry delay .* not settled"):
        broker.settle("q", "c1", items)  # type: ignore[arg-type]  # sent again
    assert broker.get("r", 10, 0) == []  # the rest was settled already: left alone
    clock.now += 10**6  # no retry of b waits, come due or not
    broker.reap()
    assert broker.fetch("q", "c3", 10, 0, 5.0) == []


@pytest.mark.parametrize("delay", [0, 2, 0.5, 30.0])
def test_a_retry_delay_of_int_or_float_seconds_is_taken(delay: float) -> None:
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0.1, 5.0)
    broker.settle("q", "c1", [(token, None, None, b"a2", delay, None)])
    clock.now += delay + 0.01
    broker.reap()
    assert [body for _, body, _ in broker.fetch("q", "c1", 1, 0, 5.0)] == [b"a2"]


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("token", lambda token: [token]),  # unhashable: raised at the lease, mid-settle
        ("token", lambda token: str(token)),  # a late settle's result published, each time
        ("token", lambda token: None),
        ("token", lambda token: frozenset([token])),
        ("reply_to", lambda token: ["r"]),  # unhashable: raised after the lease went
        ("reply_to", lambda token: {"r": 1}),
        ("reply_to", lambda token: b"r"),  # no queue of that name: the result dropped
        ("reply_to", lambda token: 5),
        ("settlement", lambda token: (token, "r", b"ran b", None, 0.0)),  # 5 fields
        ("settlement", lambda token: None),
        # 6 items that unpack, refused for a field (a retry's delay of "e", a reply_to of 0)
        ("settlement", lambda token: "abcdef"),
        ("settlement", lambda token: bytes([token, 0, 0, 0, 0, 0])),
    ],
    ids=[
        "token-list",
        "token-str",
        "token-None",
        "token-frozenset",
        "reply_to-list",
        "reply_to-dict",
        "reply_to-bytes",
        "reply_to-int",
        "five-fields",
        "None",
        "str",
        "bytes",
    ],
)
def test_a_settlement_field_the_master_cannot_use_is_refused_and_its_task_not_lost(
    field: str, bad: Callable[[int], object]
) -> None:
    """A worker (any peer holding the key) sends each settlement's token and reply_to
    as it chose: the master took them as they came. One that cannot be hashed raised
    mid-settle (a reply_to's after its task's lease was dropped: the task lost), and so
    did a settlement that is not 6 fields: the settle's earlier tasks were not
    remembered as settled (a settle sent again published their results twice), its
    later ones left to lapse. A token of another type was taken as a late settle's, its
    result published each time it was sent; a reply_to of bytes dropped the result as
    one of a queue gone. The settlement is refused before its lease is touched, and so
    are those after it (their results may ride on it), and the call then fails naming
    the field and its type."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b", b"c"])
    (ta, _, _), (tb, _, _), (tc, _, _) = broker.fetch("q", "c1", 3, 0.1, 5.0)
    wrong = bad(tb)
    if field == "token":
        middle: object = (wrong, "r", b"ran b", b"b retried", 0.5, None)
    elif field == "reply_to":
        middle = (tb, wrong, b"ran b", None, 0.0, None)
    else:
        middle = wrong
    items = [
        (ta, "r", b"ran a", None, 0.0, None),
        middle,
        (tc, "r", b"c failed", b"c retried", 0.5, None),
    ]
    named = rf"a {field} of {type(wrong).__name__}, not .*: 2 tasks not settled"
    with pytest.raises(ValueError, match=named):
        broker.settle("q", "c1", items)  # type: ignore[arg-type]
    assert broker.get("r", 10, 0) == [b"ran a"]
    clock.now += 5.1  # b's and c's leases lapse: they run again
    broker.reap()
    got = broker.fetch("q", "c2", 10, 0, 5.0)
    assert sorted((body, again) for _, body, again in got) == [(b"b", True), (b"c", True)]
    with pytest.raises(ValueError, match=named):
        broker.settle("q", "c1", items)  # type: ignore[arg-type]  # sent again
    assert broker.get("r", 10, 0) == []  # the rest was settled already: left alone
    assert broker.stats("q") == (0, 2, 0, 1)


@pytest.mark.parametrize("first", [True, False], ids=["carrier-first", "carrier-second"])
def test_the_settlements_after_one_refused_are_not_taken_their_results_may_ride_on_it(
    first: bool,
) -> None:
    """A worker packs a batch's results for one master into one message, carried by the
    earliest of its settlements; the others name no result. One refused (here its token a
    list) left its task leased, and the settle went on: the others, their results in the
    refused one, were settled with none, their leases dropped: they never ran again, and
    their producer waited for ever (found with a real master and worker, a token made a
    list on purpose: 7 of 400 results never came). Those after it are not taken either:
    their leases untouched, they run again as they lapse; those before it stay settled."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b", b"c", b"d"])
    (ta, _, _), (tb, _, _), (tc, _, _), (td, _, _) = broker.fetch("q", "c1", 4, 0.1, 5.0)
    items: list[object] = [(ta, "r", b"ran a", None, 0.0, None)]  # settled, its own result
    if not first:
        items.append((tb, "r", b"ran b", None, 0.0, None))
    items += [([tc], "r", b"pack: ran c and d", None, 0.0, None), (td, None, None, None, 0.0, None)]
    with pytest.raises(ValueError, match="a token of list, not an int: 2 tasks not settled"):
        broker.settle("q", "c1", items)  # type: ignore[arg-type]
    assert broker.get("r", 10, 0) == [b"ran a"] + ([] if first else [b"ran b"])
    clock.now += 5.1  # c's and d's leases lapse: both run again
    broker.reap()
    got = broker.fetch("q", "c2", 10, 0, 5.0)
    expected = [b"b", b"c", b"d"] if first else [b"c", b"d"]
    assert sorted(body for _, body, _ in got) == expected


def test_a_token_equal_to_one_leased_settles_it_once() -> None:
    """A float equal to a token the master issued (2.0) names that token: its task is
    settled, and a settle sent again is refused rather than published twice (its
    result went out a second time: the float was never remembered as settled)."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    (ta, _, _), (tb, _, _) = broker.fetch("q", "c1", 2, 0.1, 5.0)
    items = [(ta, "r", b"ran a", None, 0.0, None), (float(tb), "r", b"ran b", None, 0.0, None)]
    broker.settle("q", "c1", items)  # type: ignore[arg-type]
    assert broker.get("r", 10, 0) == [b"ran a", b"ran b"]
    with pytest.raises(ValueError, match="a token of float, not an int: 1 task not settled"):
        broker.settle("q", "c1", items)  # type: ignore[arg-type]  # sent again
    assert broker.get("r", 10, 0) == []
    clock.now += 5.1
    broker.reap()
    assert broker.fetch("q", "c2", 10, 0, 5.0) == []  # both settled: none runs again


@pytest.mark.parametrize("queue", [["q"], 5, None], ids=["list", "int", "None"])
def test_a_settle_naming_a_queue_that_is_not_text_settles_nothing(queue: object) -> None:
    """Each retry and dead letter of a settle goes to the queue it names: a list raised
    there (a retry of no delay: after its lease was dropped, the task lost) or in the
    reaper, as the retry came due (the reaper thread ended: no lease lapsed, no retry
    came due again); an int made a queue no worker serves, and the master's close,
    which counts queues by name, failed on it. Refused before anything is settled."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    (ta, _, _), (tb, _, _) = broker.fetch("q", "c1", 2, 0.1, 5.0)
    items = [
        (ta, "r", b"a failed", b"a retried", 0.0, None),
        (tb, "r", b"b failed", b"b retried", 0.5, b"dead b"),
    ]
    with pytest.raises(TypeError, match=rf"a queue name of {type(queue).__name__}, not text"):
        broker.settle(queue, "c1", items)  # type: ignore[arg-type]
    assert broker.get("r", 10, 0) == []
    clock.now += 5.1
    broker.reap()
    got = broker.fetch("q", "c2", 10, 0, 5.0)
    assert sorted((body, again) for _, body, again in got) == [(b"a", True), (b"b", True)]
    assert broker.dead_counts() == {} and broker.task_counts() == {"q": 2}


@pytest.mark.parametrize(
    "lease",
    [float("inf"), float("nan"), 1e300, 0.0, "5", None, True, 10**400],
    ids=["inf", "nan", "1e300", "zero", "str", "None", "bool", "huge-int"],
)
@pytest.mark.parametrize("call", ["fetch", "heartbeat", "heartbeats", "settle_fetch"])
def test_a_lease_that_is_not_seconds_is_refused_and_its_tasks_not_held_for_ever(
    lease: object, call: str
) -> None:
    """A worker names the lease its fetches and heartbeats take; the master took it as
    it came: inf, NaN or 1e300 made a deadline that never passes, so the tasks of a
    worker that then died were never put back (lost, counted in flight for ever); an
    int of 400 digits raised OverflowError. Refused before anything is leased or renewed."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a", b"b"])
    broker.fetch("q", "c1", 1, 0, 5.0)  # a, leased for 5 s
    with pytest.raises((TypeError, ValueError), match=r"a lease of .*not seconds"):
        if call == "fetch":
            broker.fetch("q", "c1", 1, 0, lease)  # type: ignore[arg-type]
        elif call == "heartbeat":
            broker.heartbeat("c1", lease)  # type: ignore[arg-type]
        elif call == "heartbeats":
            broker.heartbeats(["c1"], lease)  # type: ignore[arg-type]
        else:
            broker.settle_fetch("q", "c1", [], 1, lease)  # type: ignore[arg-type]
    clock.now += 5.1  # the lease it had lapses: a comes back, and b was never taken
    broker.reap()
    got = broker.fetch("q", "c2", 10, 0, 5.0)
    assert sorted((body, again) for _, body, again in got) == [(b"a", True), (b"b", False)]


@pytest.mark.parametrize("lease", [0.3, 5, 3600.0, 86400.0])
def test_a_lease_of_int_or_float_seconds_is_taken(lease: float) -> None:
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a"])
    assert len(broker.fetch("q", "c1", 1, 0, lease)) == 1
    broker.heartbeats(["c1"], lease)
    clock.now += lease + 0.01
    broker.reap()
    assert [body for _, body, _ in broker.fetch("q", "c2", 1, 0, 5.0)] == [b"a"]


@pytest.mark.parametrize(
    "wait",
    [float("inf"), float("nan"), 1e300, "1", None, True],
    ids=["inf", "nan", "1e300", "str", "None", "bool"],
)
@pytest.mark.parametrize("call", ["get", "fetch", "settle_fetch"])
def test_a_wait_that_is_not_seconds_is_refused_before_anything_is_taken(
    wait: object, call: str
) -> None:
    """A producer's get and a worker's fetch name how long the master waits for a first
    body (distq: 1 s at most). It took any value: inf (or 1e300) raised OverflowError in
    the lock's wait, a settle-then-fetch's after its settle ran; a get's NaN waited until
    a body came, for ever on a queue none comes to (the connection's thread held).
    Refused, naming it, before anything is taken or settled."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0, 5.0)
    raised: list[BaseException] = []

    def ask() -> None:  # on an empty queue, where a wait waits
        try:
            if call == "get":
                broker.get("empty", 1, wait)  # type: ignore[arg-type]
            elif call == "fetch":
                broker.fetch("empty", "c2", 1, wait, 5.0)  # type: ignore[arg-type]
            else:
                items = [(token, "r", b"ran a", None, 0.0, None)]
                broker.settle_fetch("empty", "c1", items, 1, 5.0, None, wait)  # type: ignore[arg-type]
        except Exception as exc:
            raised.append(exc)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(10)
    held = asking.is_alive()
    broker.put("empty", [b"ends a wait"])  # a thread still waiting takes it and ends
    assert not held, "the call still waits"
    assert len(raised) == 1
    assert isinstance(raised[0], TypeError | ValueError)
    assert re.match(r"a (timeout|wait) of .*not seconds up to 86400", str(raised[0]))
    assert broker.get("r", 10, 0) == []  # a settle-then-fetch's settle did not run
    clock.now += 5.1  # a's lease lapses: it runs again
    broker.reap()
    assert [(body, again) for _, body, again in broker.fetch("q", "c3", 10, 0, 5.0)] == [
        (b"a", True)
    ]


class _Limits:
    """An ``Oversized`` that never finds a body too large: the master's own looks at the
    limit a worker names (``most``) only when it has one."""

    def sendable(self, most: int) -> int:
        return most


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_count", 2.5),
        ("max_count", "1"),
        ("max_count", None),
        ("max_count", True),
        ("most", 2.5),
        ("most", "1 MiB"),
    ],
    ids=["count-float", "count-str", "count-None", "count-bool", "most-float", "most-str"],
)
@pytest.mark.parametrize("call", ["get", "fetch", "settle_fetch", "settle_fetch_late"])
def test_a_count_or_limit_a_fetch_cannot_use_is_refused_before_anything_is_settled(
    field: str, value: object, call: str
) -> None:
    """A fetch's or get's max_count and most (the caller's DISTQ_MAX_MESSAGE_BYTES) were
    taken as they came: a max_count of a float raised in range() after the wait, a
    settle-then-fetch's after its settle ran (the worker, told its call failed, counted
    the tasks it settled as handed back); a most of a str raised after it too. Refused,
    naming it, before anything is taken, leased or settled."""
    clock = Clock()
    broker = QueueBroker(clock, oversized=_Limits())  # type: ignore[arg-type]
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    broker.put("r", [b"result"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0, 5.0)
    count, most = (value, None) if field == "max_count" else (1, value)
    items = [(token, "r", b"ran a", None, 0.0, None)]
    named = "limit" if field == "most" else field
    with pytest.raises(TypeError, match=rf"a {named} of {type(value).__name__}, not an int"):
        if call == "get":
            broker.get("r", count, 0, most)  # type: ignore[arg-type]
        elif call == "fetch":
            broker.fetch("q", "c2", count, 0, 5.0, most)  # type: ignore[arg-type]
        elif call == "settle_fetch":
            broker.settle_fetch("q", "c1", items, count, 5.0, most)  # type: ignore[arg-type]
        else:
            broker.settle_fetch_late("q", "c1", items, count, 5.0, most)  # type: ignore[arg-type]
    assert broker.get("r", 10, 0) == [b"result"]  # nothing taken; the settle did not run
    clock.now += 5.1  # a's lease lapses: it runs again, and b was never taken
    broker.reap()
    got = broker.fetch("q", "c3", 10, 0, 5.0)
    assert sorted((body, again) for _, body, again in got) == [(b"a", True), (b"b", False)]


class _Refusing:
    """The master's ``Oversized`` as it makes a limit's largest sendable body (manager's
    ``_sendable``: twice the limit and 64 MiB, less a batch and 1 MiB), dead-lettering a
    body over it and answering no one."""

    def sendable(self, most: int) -> int:
        return 2 * most + (64 << 20) - BATCH_BYTES - (1 << 20)

    def __call__(self, queue: str, body: bytes, most: int) -> tuple[None, None, bytes]:
        return None, None, b"too large: " + body

    def results(self, body: bytes, most: int) -> list[bytes]:
        return [b"too large"]


@pytest.mark.parametrize("most", [-(10**9), -1, 0, 1023], ids=str)
@pytest.mark.parametrize("call", ["get", "fetch", "settle_fetch", "settle_fetch_late"])
def test_a_limit_below_any_worker_s_is_refused_before_anything_is_taken(
    most: int, call: str
) -> None:
    """A fetch's most (the worker's DISTQ_MAX_MESSAGE_BYTES, 1024 at least) was taken as
    it came: one of -1e9 made every body too large for that worker, and each task the
    fetch took dead-lettered (a get's results replaced by errors), a settle-then-fetch's
    after its settle ran. Refused, naming it, before anything is taken or settled."""
    clock = Clock()
    broker = QueueBroker(clock, oversized=_Refusing())
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    broker.put("r", [b"result"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0, 5.0)
    items = [(token, "r", b"ran a", None, 0.0, None)]
    wanted = rf"a limit of {most} bytes, not 1,024 or more \(DISTQ_MAX_MESSAGE_BYTES\)"
    with pytest.raises(ValueError, match=wanted):
        if call == "get":
            broker.get("r", 1, 0, most)
        elif call == "fetch":
            broker.fetch("q", "c2", 1, 0, 5.0, most)
        elif call == "settle_fetch":
            broker.settle_fetch("q", "c1", items, 1, 5.0, most)
        else:
            broker.settle_fetch_late("q", "c1", items, 1, 5.0, most)
    assert broker.dead_counts() == {}
    assert broker.get("r", 10, 0) == [b"result"]  # nothing taken; the settle did not run
    clock.now += 5.1  # a's lease lapses: it runs again, and b was never taken
    broker.reap()
    got = broker.fetch("q", "c3", 10, 0, 5.0, 1024)
    assert sorted((body, again) for _, body, again in got) == [(b"a", True), (b"b", False)]


@pytest.mark.parametrize("wait", [0, 0.0, 1.0, 30, 86400.0, -0.01, -float("inf")])
def test_a_wait_of_int_or_float_seconds_is_taken(wait: float) -> None:
    """Up to a day; one below 0 waits not at all (a master's last read past its deadline)."""
    broker = QueueBroker(Clock())
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    broker.put("r", [b"result"])
    assert broker.get("r", 1, wait) == [b"result"]
    assert len(broker.fetch("q", "c1", 1, wait, 5.0)) == 1
    assert len(broker.settle_fetch("q", "c1", [], 1, 5.0, None, wait)) == 1


@pytest.mark.parametrize(
    "wait", [0, -0.01, -float("inf"), -(10**400)], ids=["0", "below-0", "-inf", "int-past-float"]
)
@pytest.mark.parametrize("call", ["get", "fetch", "settle_fetch"])
def test_a_wait_below_0_on_an_empty_queue_answers_at_once(wait: float, call: str) -> None:
    """One below 0 waits not at all, as :meth:`QueueBroker._asked` says: a get took it to
    the lock's wait, which made an int past a float's range a deadline, and raised
    OverflowError ("int too large to convert to float"); a fetch skips the wait."""
    broker = QueueBroker(Clock())
    if call == "get":
        assert broker.get("empty", 1, wait) == []
    elif call == "fetch":
        assert broker.fetch("empty", "c1", 1, wait, 5.0) == []
    else:
        assert broker.settle_fetch("empty", "c1", [], 1, 5.0, None, wait) == []


@pytest.mark.parametrize("call", ["put", "open", "get", "fetch", "requeue_dead"])
@pytest.mark.parametrize("queue", [5, None, b"q"], ids=["int", "None", "bytes"])
def test_a_queue_name_that_is_not_text_is_refused(queue: object, call: str) -> None:
    """A worker or producer names the queues it calls on; the master made a queue of any
    hashable name it was given: a master's close, which counts the dead letters and
    tasks it holds by name, then failed on it (`'int' object has no attribute
    'endswith'`) before it stopped serving; and requeue_dead took a dead letter of
    queue "5" off for a task put in queue 5, which no worker serves (the task lost)."""
    broker = QueueBroker()
    broker.put(f"{queue}.dead", [b"letter"])
    with pytest.raises(TypeError, match=rf"a queue name of {type(queue).__name__}, not text"):
        if call == "put":
            broker.put(queue, [b"a"])  # type: ignore[arg-type]
        elif call == "open":
            broker.open(queue)  # type: ignore[arg-type]
        elif call == "get":
            broker.get(queue, 1, 0)  # type: ignore[arg-type]
        elif call == "fetch":
            broker.fetch(queue, "c1", 1, 0, 5.0)  # type: ignore[arg-type]
        else:
            broker.requeue_dead(queue, b"letter", b"task")  # type: ignore[arg-type]
    assert broker.dead_counts() == {str(queue): 1}  # the letter is still there
    assert broker.task_counts() == {}
    assert broker.gone([queue]) == [queue]  # type: ignore[list-item]


def _pushes_to_q_failing() -> tuple[QueueBroker, tuple[int, int]]:
    """A broker whose pushes to queue "q" fail (an error of the master's own, no peer's),
    reply queue "r" open, and the tokens of tasks a and b that consumer c1 leased."""
    broker = QueueBroker(Clock())
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    (ta, _, _), (tb, _, _) = broker.fetch("q", "c1", 2, 0.1, 5.0)
    push = broker._push

    def failing(queue: str, bodies: Sequence[bytes]) -> None:
        if queue == "q":
            raise TypeError("a push that failed")
        push(queue, bodies)

    broker._push = failing  # type: ignore[method-assign]
    return broker, (ta, tb)


@pytest.mark.parametrize("kind", [tuple, dict.fromkeys], ids=["later-None", "dict"])
def test_an_error_no_peer_made_is_raised_as_it_is_not_blamed_on_a_misshapen_settlement(
    kind: Callable[[tuple[object, ...]], object],
) -> None:
    """A settle caught a TypeError or ValueError anywhere in its loop and asked whether
    any settlement of the call was misshapen: one later in the call was, so an error of
    the master's own (here a push failing, after the task's lease was dropped) was
    taken for that peer's mistake, said as "2 tasks not settled ... run again" while
    the task it struck, its lease gone, would never run again. Only the settlement the
    error struck is judged: an error it did not cause is raised as it is. So too for a
    settlement of 6 fields that is not a tuple (a dict of 6 keys unpacks as its keys):
    it reached the lease as the tuple does, and was then judged "not 6 fields"."""
    broker, (ta, _) = _pushes_to_q_failing()
    items = [kind((ta, "r", b"ran a", b"a again", 0.0, None)), None]
    with pytest.raises(TypeError, match="a push that failed"):
        broker.settle("q", "c1", items)  # type: ignore[arg-type]


def test_a_settle_an_error_of_the_masters_own_ended_remembers_what_it_settled() -> None:
    """The tasks a settle had settled before an error of the master's own ended it were
    not remembered as settled (that came after the loop): the worker's settle sent
    again published their results a second time."""
    broker, (ta, tb) = _pushes_to_q_failing()
    items = [(ta, "r", b"ran a", None, 0.0, None), (tb, "r", None, b"b again", 0.0, None)]
    with pytest.raises(TypeError, match="a push that failed"):
        broker.settle("q", "c1", items)
    del broker._push  # the class's again
    broker.settle("q", "c1", items[:1])  # sent again
    assert broker.get("r", 10, 0) == [b"ran a"]


def test_many_misshapen_settlements_are_each_judged_once() -> None:
    """Each misshapen settlement made the settle judge the call's settlements from its
    first: a peer's call of n well-formed then n misshapen ones took n * n looks, under
    the lock every worker and producer waits on (4,000 and 4,000, 12 KB pickled: 3.8 s;
    20,000 and 20,000: 95 s). Each settlement is looked at a bounded number of times."""
    broker = QueueBroker(Clock())
    broker.put("q", [b"a"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0.1, 5.0)
    looked = 0

    class Counted(list[object]):
        def __iter__(self) -> Iterator[object]:
            nonlocal looked
            for item in super().__iter__():
                looked += 1
                yield item

    n = 50
    items = Counted([(token + 1, None, None, None, 0.0, None)] * n + [None] * n)
    named = f"a settlement of NoneType, not a tuple of 6 fields: {n} tasks"
    with pytest.raises(ValueError, match=named):
        broker.settle("q", "c1", items)  # type: ignore[arg-type]
    assert looked <= 2 * len(items)


@pytest.mark.parametrize("reply_to", [5, None, b"r", ["r"]], ids=["int", "None", "bytes", "list"])
def test_a_reply_to_that_is_not_text_is_refused_by_forget_orphans(reply_to: object) -> None:
    """forget_orphans raised from inside ("'int' object has no attribute 'encode'"), its
    reply_to not text; said, naming it, with the dead letters left."""
    broker = QueueBroker(Clock())
    broker.put("q.dead", [b"a letter"])
    with pytest.raises(ValueError, match=rf"a reply_to of {type(reply_to).__name__}, not text"):
        broker.forget_orphans("q", reply_to)  # type: ignore[arg-type]
    assert broker.dead_counts() == {"q": 1}


def _consumer_calls(
    broker: QueueBroker, consumer: object, token: int
) -> dict[str, Callable[[], object]]:
    """Each exposed call that names a consumer, naming ``consumer``: none of them should
    lease, renew, settle or put back anything."""
    them: Any = consumer
    items = [(token, "r", b"ran a", None, 0.0, None)]
    return {
        "fetch": lambda: broker.fetch("q", them, 1, 0, 5.0),
        "heartbeat": lambda: broker.heartbeat(them, 5.0),
        "heartbeats": lambda: broker.heartbeats(["c1", them], 5.0),
        "settle": lambda: broker.settle("q", them, items),
        "settle_fetch": lambda: broker.settle_fetch("q", them, items, 1, 5.0),
        "settle_fetch_late": lambda: broker.settle_fetch_late("q", them, items, 1, 5.0),
        "release": lambda: broker.release(them, [token]),
        "disconnect": lambda: broker.disconnect(them),
    }


@pytest.mark.parametrize(
    "consumer", [["c1"], {"c1": 1}, 5, None], ids=["list", "dict", "int", "None"]
)
@pytest.mark.parametrize("call", list(_consumer_calls(QueueBroker(), "c", 1)))
def test_a_consumer_id_that_is_not_text_is_refused_before_anything_is_touched(
    consumer: object, call: str
) -> None:
    """A consumer id a peer sent that is not text: a list raised from inside ("unhashable
    type: 'list'"), in heartbeats after the consumers before it were renewed; an int
    was a consumer of its own, whose fetch's tasks a peer that left never handed back.
    Refused, naming it, before any lease is touched (distq's ids are text)."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a", b"b"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0, 5.0)
    clock.now += 4.0  # c1's lease: 1 s left
    with pytest.raises(ValueError, match=rf"a consumer id of {type(consumer).__name__}, not text"):
        _consumer_calls(broker, consumer, token)[call]()
    assert broker.get("r", 10, 0) == []  # nothing settled
    assert broker.stats("q") == (1, 1, 0, 1)  # b ready, a leased: nothing else leased
    clock.now += 1.1  # c1's lease was not renewed: a runs again
    broker.reap()
    assert broker.stats("q") == (2, 0, 0, 0)


@pytest.mark.parametrize("limit", [2.5, -1, True, "2", None], ids=str)
def test_a_peek_limit_that_is_no_count_is_refused(limit: object) -> None:
    """peek's limit went to islice as it came: a float or -1 raised from inside ("Stop
    argument for islice() must be None or an integer"), True read one body."""
    broker = QueueBroker(Clock())
    broker.put("q", [b"a", b"b"])
    with pytest.raises(ValueError, match=rf"a limit of {type(limit).__name__}.*, not a count"):
        broker.peek("q", limit)  # type: ignore[arg-type]


def test_a_peek_limit_past_the_queue_reads_it_all() -> None:
    broker = QueueBroker(Clock())
    broker.put("q", [b"a", b"b"])
    assert broker.peek("q", 10**30) == [b"a", b"b"]  # islice: "must be <= sys.maxsize"
    assert broker.peek("q", 0) == []


@pytest.mark.parametrize("bad", [["t"], {"t": 1}, {1}], ids=["list", "dict", "set"])
def test_a_release_with_a_token_that_is_not_hashable_puts_none_back(bad: object) -> None:
    """release put back the tokens after a list (from the end) before it raised
    "unhashable type: 'list'". Refused whole, naming it: every task stays leased to its
    consumer, back as the lease lapses."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a", b"b", b"c"])
    tokens = [token for token, _, _ in broker.fetch("q", "c1", 3, 0, 5.0)]
    with pytest.raises(ValueError, match=rf"a token of {type(bad).__name__}, not an int"):
        broker.release("c1", [tokens[0], bad, tokens[2]])  # type: ignore[list-item]
    assert broker.stats("q")[:2] == (0, 3)  # none put back
    broker.release("c1", tokens)
    assert [body for _, body, _ in broker.fetch("q", "c2", 3, 0, 5.0)] == [b"a", b"b", b"c"]


@pytest.mark.parametrize("tokens", [5, None, {"t": 1}], ids=["int", "None", "dict"])
def test_a_release_of_tokens_that_are_no_list_is_refused(tokens: object) -> None:
    broker = QueueBroker(Clock())
    broker.put("q", [b"a"])
    broker.fetch("q", "c1", 1, 0, 5.0)
    with pytest.raises(ValueError, match=rf"tokens of {type(tokens).__name__}, not a list"):
        broker.release("c1", tokens)  # type: ignore[arg-type]
    assert broker.stats("q")[:2] == (0, 1)


@pytest.mark.parametrize("batch", [b"task", "task", 5, None], ids=["bytes", "str", "int", "None"])
@pytest.mark.parametrize("call", ["put", "settle", "settle_fetch", "gone", "withdraw"])
def test_a_batch_that_is_not_a_list_is_refused_naming_it(batch: object, call: str) -> None:
    """A call's batch a peer sent not as a list: a put of one body's bytes queued a task
    a byte (4 for b"task", each dead-lettered by a worker, "not bytes: a int: 116"), of
    a str a task a character; gone and withdraw answered a name or body a character or
    byte; an int or None raised "'int' object is not iterable". Refused, naming it,
    with nothing queued, settled or removed."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.open("r")
    broker.put("q", [b"a"])
    ((token, _, _),) = broker.fetch("q", "c1", 1, 0, 5.0)
    them: Any = batch
    calls: dict[str, Callable[[], object]] = {
        "put": lambda: broker.put("q", them),
        "settle": lambda: broker.settle("q", "c1", them),
        "settle_fetch": lambda: broker.settle_fetch("q", "c1", them, 1, 5.0),
        "gone": lambda: broker.gone(them),
        "withdraw": lambda: broker.withdraw("q", them),
    }
    with pytest.raises(ValueError, match=rf" of {type(batch).__name__}, not a list"):
        calls[call]()
    assert broker.stats("q") == (0, 1, 0, 1)  # nothing queued; a still leased to c1
    assert broker.settle("q", "c1", [(token, "r", b"ran a", None, 0.0, None)]) == []


@pytest.mark.parametrize("call", ["stats", "delete", "peek"])
def test_a_queue_name_that_is_not_text_is_refused_naming_it(call: str) -> None:
    """stats and delete raised "unhashable type: 'list'" at a list."""
    broker = QueueBroker(Clock())
    them: Any = ["q"]
    with pytest.raises(TypeError, match="a queue name of list, not text"):
        if call == "stats":
            broker.stats(them)
        elif call == "delete":
            broker.delete(them)
        else:
            broker.peek(them, 1)


def test_a_release_wakes_its_queue_s_fetches_with_one_notify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A release (a worker's hand-back) and a lapse put tasks back with a Condition's
    notify() each: about 1,500 of a requeue's 4,300 instructions a task. One notify(n) a
    queue wakes as many waiting fetches."""
    broker = QueueBroker(Clock())
    broker.put("q", [b"t%d" % n for n in range(128)] + [b"x"])
    broker.put("p", [b"y"])
    tokens = [token for token, _, _ in broker.fetch("q", "c1", 128, 0, 5.0)]
    tokens += [token for token, _, _ in broker.fetch("p", "c1", 1, 0, 5.0)]
    calls: list[int] = []
    notify = threading.Condition.notify

    def counted(self: threading.Condition, n: int = 1) -> None:
        calls.append(n)
        notify(self, n)

    monkeypatch.setattr(threading.Condition, "notify", counted)
    broker.release("c1", tokens)
    assert sorted(calls) == [1, 128], calls
    assert [body for _, body, _ in broker.fetch("q", "c2", 2, 0, 5.0)] == [b"t0", b"t1"]


def test_a_release_of_two_wakes_two_waiting_fetches() -> None:
    broker = QueueBroker()
    broker.put("q", [b"a", b"b"])
    tokens = [token for token, _, _ in broker.fetch("q", "c1", 2, 0, 5.0)]
    got: list[list[bytes]] = []
    waiting = [
        threading.Thread(
            target=lambda c=c: got.append([b for _, b, _ in broker.fetch("q", c, 1, 10.0, 5.0)])
        )
        for c in ("c2", "c3")
    ]
    for thread in waiting:
        thread.start()
    deadline = time.monotonic() + 10
    while len(broker._ready["q"]._waiters) < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    broker.release("c1", tokens)
    for thread in waiting:
        thread.join(10)
    assert sorted(got) == [[b"a"], [b"b"]]


def test_lease_left_counts_no_lapsed_lease_the_reaper_has_not_reached_yet() -> None:
    """A lease past its deadline that no reap has ended yet (the reaper runs between
    leases' ends) told "the last ends in 0.0 s", under "leases not lapsed yet": it
    lapsed, as Redis's stats counts it (its tasks ready, not in flight)."""
    clock = Clock()
    broker = QueueBroker(clock)
    broker.put("q", [b"a", b"b"])
    broker.fetch("q", "short", 1, 0.1, 5.0)
    clock.now += 6.0  # lapsed, not reaped
    assert broker.lease_left("q") is None
    broker.fetch("q", "live", 1, 0.1, 30.0)
    clock.now += 1.0
    assert broker.lease_left("q") == pytest.approx(29.0)
