"""A Redis that stalls past the wait a consumer's or the keeper's call allows (a third of
the lease, 1 s at least: :attr:`RedisTransport.answer_within`), while it stays up: a long
command, a slow disk under ``appendfsync always``. Here ``DEBUG SLEEP`` on a private
server stalls it. The call fails and the worker reconnects; the call itself still runs
once Redis goes on, after the consumer closed or before.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import distq.worker as worker_module
from distq.batch import Batch, BatchSizer, run_batch
from distq.config import Settings
from distq.console import Console
from distq.envelope import Task
from distq.errors import DistqError, TransportError
from distq.tasks import Registry
from distq.transport.base import Settlement
from distq.transport.redis import RedisTransport
from distq.worker import Worker, WorkerOptions
from launch import LocalRedis
from relay import SilentRelay
from seam import results_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LEASE = 3.0  # a consumer's call waits 1 s for its answer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalRedis]:
    with LocalRedis(tmp_path, extra_args=["--enable-debug-command", "yes"]).start() as started:
        yield started


@pytest.fixture
def raw(server: LocalRedis) -> Iterator[redis.Redis[bytes]]:
    client = server.client(socket_timeout=30)
    yield client
    client.close()


@pytest.fixture
def transport(server: LocalRedis) -> Iterator[RedisTransport]:
    queue = f"t-{uuid.uuid4().hex[:10]}"
    settings = Settings(transport="redis", redis_url=server.url, queue=queue, lease_seconds=LEASE)
    t = RedisTransport(settings, "worker")
    yield t
    t.close()


@contextlib.contextmanager
def _stalled(server: LocalRedis, seconds: float) -> Iterator[None]:
    """Redis stalls ``seconds`` (``DEBUG SLEEP`` on a connection of its own) from now."""
    client = server.client(socket_timeout=seconds + 30)
    thread = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", seconds))
    thread.start()
    time.sleep(0.2)  # the sleep has begun
    try:
        yield
    finally:
        thread.join()
        client.close()


@contextlib.contextmanager
def _worker_behind_a_relay(
    url: str, raw: redis.Redis[bytes]
) -> Iterator[tuple[SilentRelay, RedisTransport, str]]:
    """A worker's transport on a queue of its own that reaches the Redis at ``url``
    through a relay, and a reply queue whose master lives; the relay closed after (the
    transport is the test's to close: its close is part of what the tests check)."""
    relay = SilentRelay.to_url(url)
    try:
        queue = f"t-{uuid.uuid4().hex[:10]}"
        settings = Settings(
            transport="redis", redis_url=relay.url, queue=queue, lease_seconds=LEASE
        )
        t = RedisTransport(settings, "worker")
        reply_to = t.reply_queue("j")
        raw.zadd(t.masters_key, {reply_to: int(time.time() * 1000) + 60_000})  # its master lives
        yield relay, t, reply_to
    finally:
        relay.close()


@contextlib.contextmanager
def _cut_off(relay: SilentRelay) -> Iterator[None]:
    """The relay's links go silent (a partition): the call in the block fails."""
    relay.silence()
    time.sleep(0.3)  # the relay's links wait silent
    with pytest.raises(TransportError):
        yield


def test_a_settle_that_timed_out_runs_once_redis_goes_on_and_the_close_leaves_no_lease(
    server: LocalRedis, raw: redis.Redis[bytes], transport: RedisTransport
) -> None:
    """The settle fails after a second; the worker closes the consumer (on a new
    connection, which waits for Redis). The settle, received before, runs first: its
    result goes once, the task it acked stays acked, the task the pipelined claim took
    goes back with the close, and no lease of the consumer's is left."""
    t = transport
    producer = t.producer(t.reply_queue("j"))
    producer.submit([b"a", b"b"])
    consumer = t.consumer("c")
    (first,) = consumer.fetch(1, timeout=1)
    with _stalled(server, 2.0):
        started = time.monotonic()
        with pytest.raises(TransportError):
            consumer.settle_then_fetch(
                [Settlement(first, reply_to=producer.reply_to, result=b"r")], 1
            )
        assert time.monotonic() - started < 1.9  # failed before Redis went on
        consumer.close()
    assert producer.results(5, timeout=1) == [b"r"]
    assert raw.lrange(t.ready_key, 0, -1) == [b"b"]
    assert raw.zrange(t.consumers_key, 0, -1) == []
    assert raw.keys(t.inflight_prefix + "*") == []
    producer.close()


def test_a_settle_that_comes_after_the_close_publishes_nothing_and_loses_no_task(
    raw: redis.Redis[bytes], transport: RedisTransport
) -> None:
    """The order a partition may give: the close, on a new connection, before the settle
    and the claim sent on the old one. The settle by count finds the in-flight list gone
    and does nothing (the task runs again: at least once); the claim leases the old
    consumer again, and the lease goes with a sweep once it ran out, its task back."""
    t = transport
    producer = t.producer(t.reply_queue("j"))
    producer.submit([b"a", b"b"])
    consumer = t.consumer("c")
    (first,) = consumer.fetch(1, timeout=1)
    keys, publish = consumer._publish([Settlement(first, reply_to=producer.reply_to, result=b"r")])
    args = [*consumer._args, 1, 1, consumer._claims or "", *publish]
    settle = t.settle_script.command(keys, args)
    claim = t.claim_script.command(consumer._keys, [*consumer._args, 1, 0])
    consumer.close()
    assert raw.execute_command(*settle) == 0  # the late settle: nothing done
    raw.execute_command(*claim)  # the late claim: a lease of the closed consumer's
    assert producer.results(5, timeout=0) == []
    assert raw.zrange(t.consumers_key, 0, -1) == [consumer.consumer_id.encode()]
    deadline = time.monotonic() + 3 * LEASE
    while raw.zcard(t.consumers_key) and time.monotonic() < deadline:
        t.sweep(t.client)
        time.sleep(0.1)
    assert raw.zrange(t.consumers_key, 0, -1) == []
    assert sorted(raw.lrange(t.ready_key, 0, -1)) == [b"a", b"b"]
    assert raw.keys(t.inflight_prefix + "*") == []
    producer.close()


def test_a_call_redis_answers_too_late_says_which_setting_bounds_the_wait(
    server: LocalRedis, transport: RedisTransport
) -> None:
    """A healthy Redis that is slow (a slow disk under ``appendfsync always``) fails a
    slot's call after a third of the lease, and the worker says "...; reconnecting". The
    line said "Timeout reading from socket (no answer in 1.0 s)": nothing of where the
    second comes from, nor what to raise if Redis is often that slow."""
    consumer = transport.consumer("c")
    with _stalled(server, 1.5), pytest.raises(TransportError) as caught:
        consumer.fetch(1, timeout=0)
    said = str(caught.value)
    assert "no answer in 1.0 s" in said, said
    assert "DISTQ_LEASE_SECONDS" in said, said


def _stall_then_return(server: LocalRedis, seconds: float, started: list[threading.Thread]) -> str:
    """A task that stalls Redis ``seconds`` (on a connection of its own) as it returns:
    the settle of its result meets the stall."""
    client = server.client(socket_timeout=seconds + 30)
    thread = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", seconds))
    thread.start()
    started.append(thread)
    time.sleep(0.2)  # the sleep has begun
    return "done"


def test_a_settle_that_timed_out_but_ran_late_counts_its_tasks_as_settled(
    server: LocalRedis, raw: redis.Redis[bytes], transport: RedisTransport
) -> None:
    """A slot's settle fails after a second (Redis stalls 2 s) and the worker closes its
    consumer; the settle, received before the close, runs first: the result reached the
    master once. The worker counted the task handed back ("0 ok" in its exit line, its
    health and metrics), though it was settled and never ran again. The close says which
    of the tasks it held its settle had taken already: those count as what they were."""
    t = transport
    producer = t.producer(t.reply_queue("j"))
    stalls: list[threading.Thread] = []
    registry = Registry()
    registry.register("stall", lambda seconds: _stall_then_return(server, seconds, stalls))
    producer.submit([Task(name="stall", args=[2.0], reply_to=producer.reply_to).encode()])
    out = io.StringIO()
    options = WorkerOptions(concurrency=1, worker_id="w", exit_when_idle=1.0, heartbeat_interval=1)
    worker = Worker(t, registry, options, Console(out=out, err=out))
    assert worker.run() == 0
    for thread in stalls:
        thread.join()
    assert len(stalls) == 1, out.getvalue()  # ran once
    results = results_of(producer, 2, within=1)
    assert [r.value for r in results] == ["done"], out.getvalue()  # reached the master once
    assert "reconnecting" in out.getvalue(), out.getvalue()  # the settle did fail
    assert "worker exit. 1 ok" in out.getvalue(), out.getvalue()
    assert worker.health.snapshot().tasks_ok == 1
    assert worker.health.in_hand == 0
    assert raw.keys(t.inflight_prefix + "*") == []
    producer.close()


def test_a_keeper_hand_back_that_ran_late_is_not_run_by_the_slot_too(
    server: LocalRedis,
    raw: redis.Redis[bytes],
    transport: RedisTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keeper hands back a batch's tasks not started while its slot stands still (a
    process starved of CPU, or the GIL held by other slots) after it stopped the batch to
    ask the broker about a master it does not know alive, its slot's lock wanted. Redis
    stalls: the release fails after a second, and the tasks go back to the batch; then
    Redis goes on and runs the release, and the tasks are back in the queue for any
    worker. The slot asked about the master and ran them all the same: each ran twice
    (here the second worker is this test's consumer, which claims them from the queue).
    A batch whose hand-back failed starts none of them now: the slot hands them back."""
    t = transport
    first, other = t.producer(t.reply_queue("a")), t.producer(t.reply_queue("b"))
    ran: list[str] = []
    registry = Registry()

    def note(name: str) -> None:
        ran.append(name)
        time.sleep(1.0)  # long enough for another worker to claim a copy meanwhile

    registry.register("note", note)
    # the first batch is one task (of master a); the next, leased by its settle, three
    # tasks of master b, which the slot does not know alive yet: it asks before the first
    first.submit([Task(name="note", args=["warm"], reply_to=first.reply_to).encode()])
    other.submit(
        [Task(name="note", args=[n], reply_to=other.reply_to).encode() for n in ("x", "y", "z")]
    )
    # as in a worker that handed tasks back before: else the late EVALSHA met NOSCRIPT
    raw.execute_command("SCRIPT", "LOAD", t.release_script.source)
    monkeypatch.setattr(worker_module, "BatchSizer", functools.partial(BatchSizer, target=60.0))
    stalls: list[threading.Thread] = []

    def run_batch_then_stand_still(batch: Batch, *args: Any, **kwargs: Any) -> list[Any]:
        endings = run_batch(batch, *args, **kwargs)
        if batch.unchecked == other.reply_to and not stalls:
            # Redis stalls 1.6 s: the keeper's release (0.3 s in) fails at 1.3 s and runs
            # at 1.6; the slot asks about master b once Redis answers
            _stall_then_return(server, 1.6, stalls)
            time.sleep(0.5)  # the slot stands still: the keeper hands back x, y, z
        return endings

    monkeypatch.setattr(worker_module, "run_batch", run_batch_then_stand_still)
    out = io.StringIO()
    options = WorkerOptions(
        concurrency=1, prefetch=8, worker_id="w", exit_when_idle=1.0, heartbeat_interval=0.3
    )
    worker = Worker(t, registry, options, Console(out=out, err=out))
    running = threading.Thread(target=worker.run)
    running.start()
    elsewhere = t.consumer("elsewhere")  # another worker's slot, once Redis stalls
    deadline = time.monotonic() + 20
    while running.is_alive() and time.monotonic() < deadline:
        if not stalls:
            time.sleep(0.02)
            continue
        try:
            got = elsewhere.fetch(8, timeout=0.2)
        except TransportError:  # Redis stalls: a worker tries again
            continue
        ran.extend(Task.decode(d.body).args[0] for d in got)  # it runs them too
        elsewhere.settle([Settlement(d) for d in got])
    running.join(10)
    for thread in stalls:
        thread.join()
    elsewhere.close()
    assert stalls, out.getvalue()
    assert sorted(ran) == ["warm", "x", "y", "z"], (ran, out.getvalue())
    assert t.stats().ready == 0 and t.stats().in_flight == 0


@pytest.mark.parametrize("early", ["echo", "fails"])
def test_a_keeper_settle_that_ran_late_is_not_settled_again(
    server: LocalRedis,
    raw: redis.Redis[bytes],
    transport: RedisTransport,
    monkeypatch: pytest.MonkeyPatch,
    early: str,
) -> None:
    """Three fast tasks, then one that stalls Redis 2 s, in one batch: the keeper settles
    the three 0.3 s in, and its settle fails after a second; the slot settles them again
    with the last. Redis had run the keeper's settle all the same: each result reached
    the master twice, and a retry it published was found late by the second settle,
    "not retried: ... its lease had lapsed first", counted handed back. The consumer
    asks Redis first whether its settle ran (the count close.lua reads) and sends again
    only what it did not settle."""
    t = transport
    producer = t.producer(t.reply_queue("j"))
    monkeypatch.setattr(worker_module, "BatchSizer", functools.partial(BatchSizer, target=60.0))
    stalls: list[threading.Thread] = []
    registry = Registry()
    registry.register("nap", lambda seconds: time.sleep(seconds))
    registry.register("echo", lambda value: value)

    def fails(value: str) -> None:
        raise ValueError(value)

    registry.register("fails", fails)

    def stall(seconds: float) -> None:
        _stall_then_return(server, seconds, stalls)
        time.sleep(seconds)

    registry.register("stall", stall)
    tasks = [Task(name="nap", args=[0.0], reply_to=producer.reply_to)]  # grows the next fetch
    tasks += [Task(name=early, args=[n], reply_to=producer.reply_to) for n in ("a", "b", "c")]
    tasks.append(Task(name="stall", args=[2.0], reply_to=producer.reply_to))
    producer.submit([task.encode() for task in tasks])
    out = io.StringIO()
    options = WorkerOptions(
        concurrency=1, prefetch=8, worker_id="w", exit_when_idle=1.5, heartbeat_interval=0.3
    )
    worker = Worker(t, registry, options, Console(out=out, err=out))
    assert worker.run() == 0
    for thread in stalls:
        thread.join()
    assert "reconnecting" in out.getvalue(), out.getvalue()  # the keeper's settle failed
    results = [r.task_id for r in results_of(producer, 30, within=1)]
    assert len(results) == len(set(results)), out.getvalue()  # each once
    assert "lease had lapsed" not in out.getvalue(), out.getvalue()
    counts = worker.health.snapshot()
    if early == "fails":
        assert counts.tasks_retried == 6 and counts.dead_lettered == 3, out.getvalue()
    else:
        assert counts.tasks_ok == 5, out.getvalue()
    producer.close()


def test_a_settle_by_count_that_runs_late_acks_none_of_the_tasks_claimed_since(
    server: LocalRedis, raw: redis.Redis[bytes]
) -> None:
    """A settle by count acks the oldest N of the in-flight list if it holds as many as
    the consumer did. Its link went silent (a partition): the settle failed after a
    second, and the consumer settled those tasks again and claimed two more, on a new
    connection. Then the partition healed and Redis ran the first settle: the list held
    two again, the two just claimed, and it acked them. Neither had run, and the close
    handed back nothing: both were lost (their results came twice too). The settle by
    count now acks only the list it was sent for: one claimed since, it does nothing."""
    with _worker_behind_a_relay(server.url, raw) as (relay, t, reply_to):
        raw.lpush(t.ready_key, b"a", b"b", b"c", b"d")  # a claimed first
        consumer = t.consumer("c")
        ran = consumer.fetch(2, timeout=1)
        assert [d.body for d in ran] == [b"a", b"b"]
        settled = [Settlement(d, reply_to=reply_to, result=b"r-" + d.body) for d in ran]
        with _cut_off(relay):
            consumer.settle(settled)
        consumer.settle(settled)  # on a new connection
        assert [d.body for d in consumer.fetch(2, timeout=1)] == [b"c", b"d"]
        assert relay.deliver_held() == 1  # the first settle, late
        assert sorted(raw.lrange(consumer.inflight_key, 0, -1)) == [b"c", b"d"]
        assert raw.lrange(reply_to, 0, -1) == [b"r-b", b"r-a"]  # once each
        consumer.close()
        assert sorted(raw.lrange(t.ready_key, 0, -1)) == [b"c", b"d"]  # handed back
        t.close()


@pytest.mark.parametrize("block", [0.0, 0.5], ids=["claim", "blmove-then-claim"])
def test_a_settle_then_fetch_that_runs_late_acks_none_and_its_claim_loses_none(
    server: LocalRedis, raw: redis.Redis[bytes], block: float
) -> None:
    """The pipelined settle by count and next claim (``settle_then_fetch``, a slot's usual
    round trip, with a BLMOVE between them or not) went silent (a partition): the
    consumer settled the same tasks again and claimed two more on a new connection, then
    the pipeline reached Redis. Its settle does nothing (the list held two again, the
    two claimed since: before the count of claims it acked them, and a's and b's results
    came twice); its claim leases two more the consumer never heard of, which its
    settles then skip (by body) and its close hands back: each task's result once, or
    the task back in the queue."""
    with _worker_behind_a_relay(server.url, raw) as (relay, t, reply_to):
        raw.lpush(t.ready_key, b"a", b"b", b"c", b"d", b"e", b"f")  # a claimed first
        consumer = t.consumer("c")

        ran = consumer.fetch(2, timeout=1)
        assert [d.body for d in ran] == [b"a", b"b"]
        first = [Settlement(d, reply_to=reply_to, result=b"r-" + d.body) for d in ran]
        with _cut_off(relay):
            consumer.settle_then_fetch(first, 2, block)
        then = consumer.settle_then_fetch(first, 2, block)  # on a new connection
        assert [d.body for d in then] == [b"c", b"d"]
        assert relay.deliver_held() == 1  # the first pipeline, late
        assert raw.lrange(reply_to, 0, -1) == [b"r-b", b"r-a"]  # once each
        assert sorted(raw.lrange(consumer.inflight_key, 0, -1)) == [b"c", b"d", b"e", b"f"]
        consumer.settle([Settlement(d, reply_to=reply_to, result=b"r-" + d.body) for d in then])
        assert raw.lrange(reply_to, 0, -1) == [b"r-d", b"r-c", b"r-b", b"r-a"]
        consumer.close()
        assert sorted(raw.lrange(t.ready_key, 0, -1)) == [b"e", b"f"]  # handed back
        t.close()


def _resp(*words: bytes) -> bytes:
    """A command as Redis reads it off the wire (RESP)."""
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def test_a_settle_by_count_that_runs_late_between_a_blmove_and_its_claim_acks_nothing(
    server: LocalRedis, raw: redis.Redis[bytes]
) -> None:
    """A slot's settle and next claim go as one pipeline: the settle by count, a BLMOVE
    that waits for a task (the queue empty), then the claim script, which counts the
    claim. Between the BLMOVE and that script Redis runs other connections' commands.
    The consumer's settle of a went silent (a partition) and failed; it settled a again
    on a new connection, in such a pipeline, whose BLMOVE waited. A task came (c), the
    BLMOVE moved it into the in-flight list, and the first settle reached Redis before
    the claim script ran: the list held one task again. Only the count the new
    connection's tidy made (``tidy.lua``) stops it from acking c, which had not run (the
    slot would run c unleased: a retry of it not sent, lost with a worker killed
    meanwhile); without it, this test fails ('assert [] == [b'c']')."""
    with _worker_behind_a_relay(server.url, raw) as (relay, t, reply_to):
        raw.lpush(t.ready_key, b"a")
        consumer = t.consumer("c")
        ran = consumer.fetch(2, timeout=1)  # the queue emptied: the next settle may wait
        assert [d.body for d in ran] == [b"a"]
        settled = [Settlement(ran[0], reply_to=reply_to, result=b"r-a")]
        with _cut_off(relay):
            consumer.settle(settled)
        got: list[Any] = []
        waits = threading.Thread(
            target=lambda: got.append(consumer.settle_then_fetch(settled, 2, 2.0))
        )
        waits.start()  # on a new connection: a settled again, then the BLMOVE waits
        deadline = time.monotonic() + 5
        while not any(c["cmd"] == "blmove" for c in raw.client_list()):
            assert time.monotonic() < deadline, raw.client_list()
            time.sleep(0.02)
        # c comes, then the first settle at once: before the claim after the BLMOVE
        assert relay.deliver_held(first=_resp(b"LPUSH", t.ready_key.encode(), b"c")) == 1
        waits.join(5)
        assert [d.body for d in got[0]] == [b"c"]
        assert raw.lrange(consumer.inflight_key, 0, -1) == [b"c"]  # leased: it runs
        assert raw.lrange(reply_to, 0, -1) == [b"r-a"]  # once
        consumer.close()
        assert raw.lrange(t.ready_key, 0, -1) == [b"c"]  # handed back
        t.close()


def test_a_settle_found_to_have_run_late_counts_as_settled_when_the_next_settle_fails(
    server: LocalRedis, raw: redis.Redis[bytes], transport: RedisTransport
) -> None:
    """The keeper's settle of a failed after a second (Redis stalled 2 s) and ran late;
    the slot's next settle, of a and b, asked Redis first, found it had run and sent b
    alone. That settle failed too (a second stall; here b's result list made another
    type, which fails it at once), and the worker closed the consumer and counted what
    it held: the close names what its settles that had no answer settled, and named
    nothing, so a counted as handed back ("0 ok"), though its settle had run and it
    never ran again. It is named now, with those the close finds ran."""
    t = transport
    reply_to, other = t.reply_queue("j"), t.reply_queue("k")
    live = int(time.time() * 1000) + 60_000
    raw.zadd(t.masters_key, {reply_to: live, other: live})  # their masters live
    raw.set(other, b"not a list")
    raw.lpush(t.ready_key, b"a", b"b")
    consumer = t.consumer("c")
    a, b = consumer.fetch(2, timeout=1)
    with _stalled(server, 2.0), pytest.raises(TransportError):
        consumer.settle([Settlement(a, reply_to=reply_to, result=b"r-a")])
    with pytest.raises(DistqError):
        consumer.settle(
            [
                Settlement(a, reply_to=reply_to, result=b"r-a"),
                Settlement(b, reply_to=other, result=b"r-b"),
            ]
        )
    assert raw.lrange(reply_to, 0, -1) == [b"r-a"]  # a settled once, late
    consumer.close()
    assert set(consumer.settled_late) == {b"a"}
    assert raw.lrange(t.ready_key, 0, -1) == [b"b"]  # b handed back


def test_a_settle_by_count_that_runs_late_acks_none_when_a_claim_could_not_count(
    server: LocalRedis, raw: redis.Redis[bytes]
) -> None:
    """As the test above, but Redis refuses the count of claims from the first claim on
    (a Redis 6 full to its maxmemory refuses the INCR; here an ACL without it): the
    consumer settles by body from then on, as its claims return no count. The first
    settle, sent while the count read 1 claim and run late after c and d were claimed
    uncounted, found the list as long and the count unchanged: it acked c and d, which
    never ran (lost, and a's and b's results came twice). A claim that cannot count now
    clears the count, so that no settle by count sent before it runs after it."""
    user = f"u{uuid.uuid4().hex[:8]}"
    raw.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all")
    try:
        with _worker_behind_a_relay(
            server.url.replace("redis://", f"redis://{user}:pw@", 1), raw
        ) as (relay, t, reply_to):
            raw.lpush(t.ready_key, b"a", b"b", b"c", b"d")  # a claimed first
            consumer = t.consumer("c")
            ran = consumer.fetch(2, timeout=1)
            assert [d.body for d in ran] == [b"a", b"b"] and consumer._claims is not None
            raw.execute_command("ACL", "SETUSER", user, "-incr")  # counts refused from now on
            settled = [Settlement(d, reply_to=reply_to, result=b"r-" + d.body) for d in ran]
            with _cut_off(relay):
                consumer.settle(settled)
            consumer.settle(settled)  # on a new connection: its tidy could not count, by body
            claimed = consumer.fetch(2, timeout=1)
            assert [d.body for d in claimed] == [b"c", b"d"]
            assert consumer._claims is None  # not counted: it settles by body
            assert relay.deliver_held() == 1  # the first settle, late
            assert sorted(raw.lrange(consumer.inflight_key, 0, -1)) == [b"c", b"d"]
            assert raw.lrange(reply_to, 0, -1) == [b"r-b", b"r-a"]  # once each
            raw.execute_command("ACL", "SETUSER", user, "+incr")  # room again: counted claims
            assert consumer.fetch(2, timeout=0) == [] and consumer._claims is not None
            by_count = consumer._ran
            consumer.settle(
                [Settlement(d, reply_to=reply_to, result=b"r-" + d.body) for d in claimed]
            )
            assert consumer._ran == by_count + 1  # by count again, from its next claim on
            assert raw.lrange(reply_to, 0, -1) == [b"r-d", b"r-c", b"r-b", b"r-a"]
            assert raw.llen(consumer.inflight_key) == 0 and raw.llen(t.ready_key) == 0
            consumer.close()
            t.close()
    finally:
        raw.execute_command("ACL", "DELUSER", user)


def test_a_redis_paused_while_a_lone_slots_settle_waits_is_no_idle_time(
    server: LocalRedis,
    raw: redis.Redis[bytes],
    transport: RedisTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slot that fetches one task at a time waits for the next in its settle (its
    round trip: the settle's answer, then a BLMOVE). Redis paused (SIGSTOP) right after
    the settle's answer: the wait ran on the socket timeout, and as it was no fetch, the
    worker with --exit-when-idle 3 counted the pause as idle time, said "task_queue is
    empty" 3 s into it, and the 3 tasks submitted meanwhile never ran. The wait counts
    as a fetch: overdue, it is no idleness, and the idle time counts from its answer."""
    t = transport
    producer, later = t.producer(t.reply_queue("j")), t.producer(t.reply_queue("k"))
    tasks = [Task(name="square", args=[n], reply_to=producer.reply_to).encode() for n in range(4)]
    paused: list[float] = []
    kind = type(t.consumer("probe"))
    said = kind._said_settled

    def pause_after(self: Any, replies: list[Any]) -> None:
        said(self, replies)
        if not paused:  # the settle answered; its BLMOVE waits on a paused Redis
            server.pause()
            paused.append(time.monotonic())
            threading.Timer(3.5, later.submit, [tasks[1:]]).start()  # in at the resume

    monkeypatch.setattr(kind, "_said_settled", pause_after)
    out = io.StringIO()
    options = WorkerOptions(concurrency=1, worker_id="w", exit_when_idle=3.0, heartbeat_interval=1)
    worker = Worker(t, Registry(), options, Console(out=out, err=out))
    run = threading.Thread(target=worker.run)
    run.start()
    try:
        deadline = time.monotonic() + 10
        while b"cmd=blmove" not in raw.execute_command("CLIENT", "LIST", "TYPE", "normal"):
            assert time.monotonic() < deadline, out.getvalue()  # its fetch waits: a BLMOVE
            time.sleep(0.05)
        producer.submit(tasks[:1])  # taken by the wait: the settle after it waits too
        while not paused:
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
        time.sleep(max(0.0, paused[0] + 4.5 - time.monotonic()))
    finally:
        server.resume()
    try:
        results = results_of(producer, 4, within=10)
    finally:
        run.join(30)
    assert sorted(r.value for r in results) == [0, 1, 4, 9], out.getvalue()
    assert out.getvalue().count("task_queue is empty") == 1, out.getvalue()
    producer.close()
    later.close()
