"""Redis-specific behaviour of :class:`distq.transport.redis.RedisTransport`.

The scenarios every transport shares (leases, heartbeats, release, wake-ups, dead
letters, unreachable brokers) live in test_transport_contract.py; these check what only
Redis has: the documented key layout, the Lua claim/settle/sweep scripts, sweeps done
by whoever calls (no daemon), server-clock leases and the error translation at the
boundary. The broker comes from ``redis_broker`` (tests/brokers.py); each test uses a
queue of its own, and every transport it opens is closed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from brokers import Broker
from conftest import Target
from distq import commands
from distq.codec import Codec
from distq.collector import Collector
from distq.config import MESSAGE_BATCH, Settings
from distq.console import Console
from distq.envelope import NO_REPLY, DeadLetter, Result, Task
from distq.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    SettledThenFailed,
    SettledThenRefused,
    TransportError,
)
from distq.tasks import Registry
from distq.transport import redis as redis_transport
from distq.transport import redis_wire
from distq.transport.base import Delivery, Settlement, orphaned_reason
from distq.transport.redis import RedisConsumer, RedisProducer, RedisTransport
from distq.transport.redis_scripts import ALLOW_OOM, CLAIM_BYTES, COPY_LOOK, REPLY_GRACE_MS
from distq.transport.redis_wire import Fixed, Script
from distq.worker import Worker, WorkerOptions
from launch import LocalRedis
from procs import REPO, Distq, checkout_env
from relay import SilentRelay
from seam import ok_result, results_n, results_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

OpenTransport = Callable[..., RedisTransport]


@pytest.fixture
def redis_url(redis_broker: Broker) -> str:
    return redis_broker.url


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    """A plain client, to look at the keys as an operator with redis-cli would."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def queue() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def open_transport(redis_url: str, queue: str) -> Iterator[OpenTransport]:
    opened: list[RedisTransport] = []

    def _open(lease: float = 5.0, url: str = redis_url) -> RedisTransport:
        settings = Settings(transport="redis", redis_url=url, queue=queue, lease_seconds=lease)
        transport = RedisTransport(settings, "worker")
        opened.append(transport)
        return transport

    yield _open
    for transport in opened:
        transport.close()


@contextlib.contextmanager
def _later(delay: float, call: Callable[..., object], *args: object) -> Iterator[None]:
    """Run ``call(*args)`` in a thread after ``delay`` s; wait for it when the block ends."""
    timer = threading.Timer(delay, call, args)
    timer.start()
    try:
        yield
    finally:
        timer.join()


def _bodies(n: int, prefix: str = "task") -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(n)]


# ahead of Redis's time by more than any stall of this process before the next sweep
CLOCK_AHEAD_MS = 30_000


def _outlive_lease(raw: redis.Redis[bytes], t: RedisTransport, seconds: float = 0.6) -> None:
    """Wait past a lease while the rest of a live system calls Redis: each of its sweeps
    sets the clock they read. A Redis nobody called for half a lease is taken for a
    frozen one, and the leases that ran out meanwhile get their time back. So the last
    write sets the clock ahead of Redis's time (as a snapshot from another host would):
    the next sweep writes its own time over it and resumes nothing, however long this
    process stalls before it. The last write with Redis's time instead failed the tests
    when this process stalled over half a lease right after it, while the lease ran out:
    the sweep gave that lease its time back (CI at ``d6bf98e``, ``make test`` in 4
    processes; a 0.35 s sleep there fails all seven)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        secs, micros = raw.time()
        raw.hset(t.clock_key, "at", secs * 1000 + micros // 1000)
        time.sleep(0.05)
    secs, micros = raw.time()
    raw.hset(t.clock_key, "at", secs * 1000 + micros // 1000 + CLOCK_AHEAD_MS)


def test_ready_list_is_named_after_the_queue_and_fifo(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport()
    reply = t.reply_queue("job")
    t.producer(reply).submit(_bodies(5))
    assert raw.llen(queue) == 5 == t.stats().ready
    consumer = t.consumer("c1")
    got = consumer.fetch(3, timeout=1)
    assert [d.body for d in got] == _bodies(3)
    assert not any(d.redelivered for d in got)
    assert raw.llen(queue) == 2
    # the slot's name, and a suffix of its own per connection
    assert re.fullmatch(r"c1\.[0-9a-f]{6}", consumer.consumer_id)
    assert raw.llen(f"distq:{queue}:inflight:{consumer.consumer_id}") == 3
    # the lease deadline is on the server clock: about now + lease_seconds
    server_ms = raw.time()[0] * 1000
    deadline = raw.zscore(f"distq:{queue}:consumers", consumer.consumer_id)
    assert deadline is not None and 4000 < deadline - server_ms < 6000
    # the master's result list is registered until its deadline, on the same clock
    master_deadline = raw.zscore(f"distq:{queue}:masters", reply)
    assert master_deadline is not None and 9000 < master_deadline - server_ms < 16000
    documented = {
        queue,
        f"distq:{queue}:inflight:{consumer.consumer_id}",
        f"distq:{queue}:consumers",
        f"distq:{queue}:consumers:{consumer.consumer_id}:claims",
        f"distq:{queue}:masters",
        f"distq:{queue}:clock",
        f"{reply}:state",
    }
    assert {k.decode() for k in raw.scan_iter(match=f"*{queue}*")} == documented
    assert raw.hget(f"{reply}:state", "submitted") == b"5"


def test_a_settle_after_a_long_task_goes_out_on_a_live_connection(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """The keeper renews leases on a connection of its own, so a slot's lies idle while
    its tasks run. One that died meanwhile (Redis restarted, its idle `timeout`, a proxy's)
    failed the settle that carried the results: they were lost and the tasks ran again
    (with `timeout 5` and 8 s tasks, for good)."""
    t = open_transport()
    producer = t.producer(t.reply_queue("idle"))
    producer.submit([b"long"])
    consumer = t.consumer("c1")
    (delivery,) = consumer.fetch(1, timeout=1)
    mine = consumer._w.execute_command("CLIENT", "ID")
    assert raw.client_kill_filter(_id=mine) == 1  # the server drops the idle connection
    time.sleep(1.2)  # the task runs
    consumer.settle([Settlement(delivery, reply_to=producer.reply_to, result=b"done")])
    assert producer.results(1, 5) == [b"done"]


def test_submit_large_batch_in_chunks(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport()
    t.producer("r").submit(_bodies(2500))
    assert raw.llen(queue) == 2500
    assert [d.body for d in t.consumer("c").fetch(2500, timeout=1)] == _bodies(2500)


def test_a_claim_of_large_tasks_takes_about_claim_bytes_of_them(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """A prefetch of 128 tasks of 1 MB was 128 MB in Redis's Lua and again in its reply,
    past its maxmemory: the shipped Redis was OOM-killed (k8s17). A claim takes about
    CLAIM_BYTES of them (one at least, however large); small ones all at once; in order,
    none lost or twice."""
    t = open_transport()
    size = CLAIM_BYTES // 3 + 1  # three of them are one byte over
    large = [bytes([65 + i]) * size for i in range(10)]
    t.producer("r").submit(large + [b"small"] * 3)
    consumer = t.consumer("c")
    got = [d.body for d in consumer.fetch(128, timeout=1)]
    assert got == large[:3]
    assert raw.llen(f"distq:{queue}:inflight:{consumer.consumer_id}") == 3
    while len(got) < 13:
        batch = [d.body for d in consumer.fetch(128, timeout=1)]
        assert 0 < sum(map(len, batch)) <= CLAIM_BYTES + size, [len(b) for b in batch]
        got += batch
    assert got == large + [b"small"] * 3 and raw.llen(queue) == 0
    huge = b"h" * (CLAIM_BYTES + 1)
    t.producer("r").submit([huge, huge])
    assert [d.body for d in consumer.fetch(128, timeout=1)] == [huge]  # one, however large
    assert [d.body for d in consumer.fetch(128, timeout=1)] == [huge]
    t.producer("r").submit(_bodies(300))
    assert [d.body for d in consumer.fetch(300, timeout=1)] == _bodies(300)  # small: at once
    # sizes that differ: sized by the next task (small), the claim took 128 tasks of 64 MB
    # in all (diff17); those past CLAIM_BYTES go back, in order
    mixed = [b"s%d" % i if i % 2 == 0 else bytes([65 + i % 26]) * size for i in range(40)]
    t.producer("r").submit(mixed)
    got = []
    while len(got) < len(mixed):
        batch = [d.body for d in consumer.fetch(128, timeout=1)]
        assert 0 < sum(map(len, batch)) <= CLAIM_BYTES + size, [len(b) for b in batch]
        got += batch
    assert got == mixed and raw.llen(queue) == 0
    assert raw.llen(f"distq:{queue}:inflight:{consumer.consumer_id}") == 13 + 2 + 300 + 40


def test_concurrent_batch_claims_never_share_a_task(open_transport: OpenTransport) -> None:
    t = open_transport()
    t.producer("r").submit(_bodies(300))
    seen: list[list[bytes]] = [[] for _ in range(4)]

    def drain(i: int) -> None:
        consumer = t.consumer(f"c{i}")
        while batch := consumer.fetch(7, timeout=0.2):
            seen[i].extend(d.body for d in batch)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    everything = [b for part in seen for b in part]
    assert sorted(everything) == sorted(_bodies(300))
    assert t.stats().in_flight == 300 and t.stats().ready == 0


def test_producer_sweeps_while_waiting_for_results(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport(lease=0.5)
    producer = t.producer(t.reply_queue("job"))
    producer.submit(_bodies(3))
    dead = t.consumer("dead")
    dead.fetch(3, timeout=1)
    assert raw.llen(queue) == 0 and raw.llen(dead.inflight_key) == 3
    deadline = time.monotonic() + 10
    while raw.llen(queue) < 3 and time.monotonic() < deadline:
        assert producer.results(10, timeout=0.3) == []  # no worker alive: only this sweeps
    assert raw.llen(queue) == 3
    assert raw.llen(dead.inflight_key) == 0
    assert raw.zscore(f"distq:{queue}:consumers", dead.consumer_id) is None


def test_settle_publishes_and_acks_in_one_step(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport()
    reply = t.reply_queue("job1")
    assert reply == f"distq:{queue}:results:job1"  # as the key table says
    producer = t.producer(reply)
    producer.submit([b"ok", b"retry", b"dead"])
    consumer = t.consumer("c")
    ok, retry, dead = consumer.fetch(3, timeout=1)
    letter = DeadLetter(body=b"dead", reason="boom", queue=queue, worker="c").encode()
    consumer.settle(
        [
            Settlement(ok, reply_to=reply, result=b"result-ok"),
            Settlement(retry, retry=b"retry-2"),
            Settlement(dead, reply_to=reply, result=b"result-dead", dead_letter=letter),
        ]
    )
    assert raw.llen(consumer.inflight_key) == 0
    # the result list lives a minute past its master's deadline
    master_deadline = raw.zscore(f"distq:{queue}:masters", reply)
    assert master_deadline is not None
    assert raw.execute_command("PEXPIRETIME", reply) == master_deadline + REPLY_GRACE_MS
    assert raw.lrange(queue, 0, -1) == [b"retry-2"]
    assert raw.lrange(f"distq:{queue}:dead", 0, -1) == [letter]
    assert producer.results(10, timeout=1) == [b"result-ok", b"result-dead"]
    assert t.stats().in_flight == 0 and t.stats().ready == 1 and t.stats().dead == 1
    producer.close()
    assert raw.exists(reply) == 0  # a master's results list goes with it
    assert raw.zscore(f"distq:{queue}:masters", reply) is None


def test_settle_after_losing_the_lease_still_publishes(
    open_transport: OpenTransport, queue: str
) -> None:
    t = open_transport(lease=0.5)
    reply = t.reply_queue("job")
    producer = t.producer(reply)
    producer.submit([b"slow"])
    slow = t.consumer("slow")
    (delivery,) = slow.fetch(1, timeout=1)
    again = t.consumer("other").fetch(1, timeout=3)  # the lease expired meanwhile
    assert [d.body for d in again] == [b"slow"]
    slow.settle([Settlement(delivery, reply_to=reply, result=b"late")])
    assert producer.results(10, timeout=1) == [b"late"]
    # the redelivery is still held by "other" (not acked by the late settle), or queued
    # again where "other"'s own 0.5 s lease lapsed meanwhile (a loaded host: CI once)
    stats = t.stats()
    assert (stats.in_flight, stats.ready) == ((1, 0) if stats.consumers else (0, 1)), stats


def test_releasing_a_task_twice_puts_it_back_once(open_transport: OpenTransport) -> None:
    t = open_transport()
    t.producer("r").submit(_bodies(4))
    consumer = t.consumer("c")
    got = consumer.fetch(4, timeout=1)
    consumer.release(got[:1])
    consumer.release(got[:1])  # no longer held: the script finds nothing to put back
    assert [d.body for d in consumer.fetch(10, timeout=0)] == [b"task-0"]
    assert t.stats().ready == 0


def test_releasing_most_of_a_large_batch_rebuilds_the_in_flight_list_in_one_pass(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """A keeper handing back a large prefetch: one pass over the in-flight list, not an LREM
    per task, each scanning it (9,990 of them blocked Redis for 0.89 s); same outcome."""
    t = open_transport()
    t.producer("r").submit(_bodies(3000))
    consumer = t.consumer("c")
    got = consumer.fetch(3000, timeout=1)
    assert len(got) == 3000

    def lrems() -> int:
        calls: int = raw.info("commandstats").get("cmdstat_lrem", {}).get("calls", 0)
        return calls

    before = lrems()
    consumer.release(got[30:])
    assert lrems() == before
    held = raw.lrange(consumer.inflight_key, 0, -1)
    assert held[::-1] == [d.body for d in got[:30]]  # the rest stay leased, in order
    consumer.release(got[30:])  # not held any more: nothing goes back twice
    assert t.stats().ready == 2970
    again = t.consumer("d").fetch(3000, timeout=0)
    assert [d.body for d in again] == [d.body for d in got[30:]]  # in order: first runs next
    assert all(d.redelivered for d in again)
    consumer.release(got[:2])  # a few of many: one LREM each, as before
    assert lrems() == before + 2
    assert raw.llen(consumer.inflight_key) == 28


def test_close_empties_the_in_flight_list_and_drops_the_lease(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport()
    t.producer("r").submit(_bodies(3))
    consumer = t.consumer("c")
    consumer.fetch(2, timeout=1)
    assert raw.zscore(f"distq:{queue}:consumers", consumer.consumer_id) is not None
    consumer.close()
    assert raw.zscore(f"distq:{queue}:consumers", consumer.consumer_id) is None
    assert raw.exists(consumer.inflight_key) == 0
    assert raw.llen(queue) == 3


def test_a_waiting_consumer_wakes_when_a_delayed_retry_is_due(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport(lease=10.0)  # a consumer re-blocks every 3.3 s; the retry is due first
    t.producer("r").submit([b"t"])
    consumer = t.consumer("c")
    (delivery,) = consumer.fetch(1, timeout=1)
    # timed from before the settle that sets the due time, and due in 1 s: due in 0.4 s
    # and timed from after the settle, a stall of this process of 0.3 s between them
    # made the wait measured 0.2 s, and one of 0.45 s made the retry due before the
    # looks below
    start = time.monotonic()
    consumer.settle([Settlement(delivery, retry=b"t-2", retry_delay=1.0)])
    assert consumer.fetch(1, timeout=0) == []
    assert raw.zcard(f"distq:{queue}:delayed") == 1 and t.stats().ready == 1
    got = consumer.fetch(1, timeout=10)
    waited = time.monotonic() - start
    assert [d.body for d in got] == [b"t-2"]
    assert 0.9 < waited < 2.5  # woke at the due time (1 s), not at the next 3.3 s slice


def test_a_claim_reads_the_delayed_retries_once_when_none_is_due(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """A claim's sweep reads the first delayed retry's deadline, which also tells the
    claim when the next is due: one read of the delayed set where there were two (every
    claim pays it, a lone task's after its BLMOVE too: issue 16). A retry due is still
    moved and claimed, and the one due later still bounds the consumer's wait."""
    t = open_transport()
    consumer = t.consumer("c")
    delayed = f"distq:{queue}:delayed"

    def reads() -> int:
        return _calls(raw, "zrange", "zrangebyscore")

    before = reads()
    assert consumer.fetch(5, timeout=0) == []
    assert reads() - before == 2  # the leases' and the retries'
    secs, micros = raw.time()
    now_ms = secs * 1000 + micros // 1000
    raw.zadd(delayed, {b"later": now_ms + 60_000, b"due": now_ms - 1})
    assert [d.body for d in consumer.fetch(5, timeout=0)] == [b"due"]
    assert consumer._retry_due is not None and 50 < consumer._retry_due - time.monotonic() < 61
    before, clock = reads(), raw.hget(t.clock_key, "at")
    assert consumer.fetch(5, timeout=0) == []
    # the leases' only when the claim wrote the clock: "1 or 2" let two reads of the
    # retries pass whenever it did not
    assert reads() - before == 1 + (raw.hget(t.clock_key, "at") != clock)
    _outlive_lease(raw, t, 0.0)  # the clock is due at the next claim
    before = reads()
    assert consumer.fetch(5, timeout=0) == []
    assert reads() - before == 2  # the leases' and the retries'
    assert consumer._retry_due is not None and 50 < consumer._retry_due - time.monotonic() < 61
    assert raw.zrange(delayed, 0, -1) == [b"later"]


def test_lost_script_cache_is_reloaded(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport()
    producer, consumer = t.producer(t.reply_queue("j")), t.consumer("c")
    # flushed while the consumer blocks: its pipelined EVALSHA meets NOSCRIPT
    with _later(0.1, raw.script_flush), _later(0.3, producer.submit, [b"a", b"b"]):
        got = consumer.fetch(10, timeout=3)
    got += consumer.fetch(10, timeout=0)
    assert [d.body for d in got] == [b"a", b"b"]
    raw.script_flush()  # as after a Redis restart
    consumer.settle([Settlement(d, reply_to=producer.reply_to, result=d.body) for d in got])
    assert producer.results(10, timeout=1) == [b"a", b"b"]
    assert t.stats().in_flight == 0


@pytest.mark.parametrize("settled", [1, 3])  # one LREM per task / rebuild the list
def test_partial_settle_keeps_the_rest_leased(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str, settled: int
) -> None:
    t = open_transport()
    t.producer("r").submit(_bodies(4))
    consumer = t.consumer("c")
    held = consumer.fetch(4, timeout=1)
    consumer.settle([Settlement(d) for d in held[:settled]])
    assert raw.llen(consumer.inflight_key) == 4 - settled
    consumer.close()  # hands back the rest, oldest claim first
    rest = t.consumer("c2").fetch(10, timeout=0)
    assert [d.body for d in rest] == [d.body for d in held[settled:]]


def test_a_batch_settled_in_order_is_acked_by_count_without_its_bodies(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport()
    t.producer("r").submit(_bodies(3))
    consumer = t.consumer("c")
    held = consumer.fetch(3, timeout=1)
    sent: list[list[object]] = []
    script = t.settle_script

    def spy(client: object, keys: list[str], args: list[object]) -> object:
        sent.append(list(args))
        return script(client, keys, args)  # type: ignore[arg-type]

    t.settle_script = spy  # type: ignore[assignment]
    consumer.settle([Settlement(d) for d in held])
    assert len(sent) == 1 and sent[0][3:5] == [3, 3]  # held 3, ack the oldest 3
    assert not any(d.body in sent[0] for d in held)  # no body went back
    assert raw.exists(consumer.inflight_key) == 0


def test_settle_by_count_checks_the_in_flight_list_is_what_it_holds(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport(lease=0.5)
    producer = t.producer("r")
    producer.submit(_bodies(2))
    slow = t.consumer("slow")
    late = slow.fetch(2, timeout=1)
    other = t.consumer("other")
    _outlive_lease(raw, t)
    other.heartbeat()  # sweeps slow's expired lease: both tasks go back
    assert sorted(d.body for d in other.fetch(2, timeout=0)) == sorted(d.body for d in late)
    producer.submit([b"next"])
    (fresh,) = slow.fetch(1, timeout=1)  # slow's in-flight list now holds only this one
    slow.settle([Settlement(d) for d in late])  # late, in order: by count it would drop "next"
    assert raw.lrange(slow.inflight_key, 0, -1) == [b"next"]
    slow.settle([Settlement(fresh)])
    assert raw.exists(slow.inflight_key) == 0


def test_heartbeat_sweeps_even_when_the_queue_is_busy(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport(lease=0.5)
    producer = t.producer("r")
    producer.submit(_bodies(2, "old"))
    held = t.consumer("dead").fetch(2, timeout=1)
    producer.submit(_bodies(50))
    busy = t.consumer("busy")
    _outlive_lease(raw, t)
    busy.heartbeat()
    assert raw.llen(queue) == 52
    got = busy.fetch(52, timeout=0)  # the expired ones behind those queued, in their order
    assert [d.body for d in got[50:]] == [d.body for d in held]
    assert [d.redelivered for d in got] == [False] * 50 + [True] * 2


def test_a_key_of_the_queue_made_another_type_since_start_is_named(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """Made after the transport started (its start checks the types): the WRONGTYPE reply
    becomes a ConfigError that names the key, not an outage to retry for ever."""
    t = open_transport()
    held = t.consumer("held")
    producer = t.producer("r")
    raw.set(queue, "not a list")
    with pytest.raises(ConfigError, match=f"Redis key '{queue}' .* holds a string, not the list"):
        held.fetch(1, timeout=0)
    with pytest.raises(ConfigError, match="DISTQ_QUEUE"):  # a consumer connecting checks too
        t.consumer("c")
    with pytest.raises(ConfigError, match="DISTQ_QUEUE"):  # and a producer's reconcile
        t.producer("r2")
    with pytest.raises(ConfigError, match=f"redis-cli -n 0 DEL {queue}"):
        producer.submit([b"x"])
    # the transaction went on past the failed LPUSH, but did not count the body: a
    # reconcile says Redis holds none of them, so the master submits it again
    assert raw.hget("r:state", "submitted") == b"0"
    raw.delete(queue)
    assert producer.reconcile() == 0
    producer.submit([b"x"])
    assert raw.hget("r:state", "submitted") == b"1" and raw.lrange(queue, 0, -1) == [b"x"]
    raw.set("r", "not a list")  # a key of one job, not checked: a TransportError, with a hint
    with pytest.raises(TransportError, match=r"WRONGTYPE .* look for it with redis-cli --scan"):
        producer.results(1, 0)
    raw.delete("r")


def test_forget_orphans_looks_through_every_chunk_of_the_dead_letters(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """Chunks of a thousand from the newest, matched in Redis: orphans in the oldest
    chunk, the newest, and on a chunk's edge go; the others stay, in order."""
    t = open_transport()
    mine = t.reply_queue("mine")
    orphans = {0, 1, 1499, 1500, 2499}

    def letter(i: int) -> bytes:
        reason = orphaned_reason(mine) if i in orphans else f"failed for good ({mine})"
        return DeadLetter(f"task-{i}".encode(), reason, queue, "w").encode()

    letters = [letter(i) for i in range(2500)]
    raw.rpush(f"distq:{queue}:dead", *letters)
    assert t.forget_orphans(mine) == len(orphans)
    kept = [x for i, x in enumerate(letters) if i not in orphans]
    assert raw.lrange(f"distq:{queue}:dead", 0, -1) == kept


def _lrems(raw: redis.Redis[bytes]) -> int:
    """How many LREMs the server has run (a script's included)."""
    stats = raw.info("commandstats")
    return int(stats.get("cmdstat_lrem", {}).get("calls", 0))


@pytest.fixture
def whole_look(monkeypatch: pytest.MonkeyPatch) -> None:
    """A look for orphans not cut by its budget (ORPHANS_SECONDS, 5 s), which a loaded
    host's look ran out of: 17,500 of 30,000 removed (-n 2 runs beside a CI run). The
    next look takes up the rest in a master; what made a look slow (an LREM per orphan,
    quadratic) is counted instead (:func:`_lrems`)."""
    monkeypatch.setattr("distq.transport.redis.ORPHANS_SECONDS", 600.0)


@pytest.mark.usefixtures("whole_look")
@pytest.mark.timeout(120)  # 8 to 14 s at load 25
def test_forget_orphans_of_a_large_lapse_removes_them_all_from_the_tail(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """70,000 orphans took 102 s, an LREM from the head each (quadratic), and the
    master's registration lapsed again meanwhile (diff16). From the tail, newest first,
    a chunk's orphans in one LREM: they go within the look's few seconds."""
    t = open_transport()
    mine = t.reply_queue("mine")
    older = [DeadLetter(b"old-%d" % i, "why", queue, "w").encode() for i in range(5000)]
    reason = orphaned_reason(mine)
    orphans = [DeadLetter(b"t-%d" % i, reason, queue, "w").encode() for i in range(30000)]
    dead = f"distq:{queue}:dead"
    for start in range(0, len(older), 1000):
        raw.rpush(dead, *older[start : start + 1000])
    for start in range(0, len(orphans), 1000):
        raw.rpush(dead, *orphans[start : start + 1000])
    before = _lrems(raw)
    assert t.forget_orphans(mine) == 30000
    assert _lrems(raw) - before <= 100  # a chunk's (up to 1,000 letters) each, not 30,000
    assert raw.llen(dead) == 5000 and raw.lindex(dead, -1) == older[-1]


@pytest.mark.usefixtures("whole_look")
@pytest.mark.timeout(120)  # 8 to 14 s at load 25
def test_forget_orphans_among_another_masters_removes_them_all_in_order(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """Two masters lapsed together: their orphans alternate. One LREM each from the tail
    went past every newer letter of the other (quadratic): 50,000 among 100,000 took
    more than two looks' budgets (diff16b). A chunk's orphans go in one step now."""
    t = open_transport()
    mine, theirs = t.reply_queue("mine"), t.reply_queue("theirs")

    def letter(i: int) -> bytes:
        whose = mine if i % 2 else theirs
        return DeadLetter(b"t-%d" % i, orphaned_reason(whose), queue, "w").encode()

    letters = [letter(i) for i in range(60000)]
    dead = f"distq:{queue}:dead"
    for start in range(0, len(letters), 1000):
        raw.rpush(dead, *letters[start : start + 1000])
    before = _lrems(raw)
    assert t.forget_orphans(mine) == 30000
    assert _lrems(raw) - before <= 100  # a chunk's each, not one per orphan
    assert raw.lrange(dead, 0, -1) == letters[::2]


def test_forget_orphans_reads_large_letters_a_few_at_a_time(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """A chunk of a thousand letters of 900 KB held Redis 12 s in one call (diff16b):
    chunks follow the letters' bytes now, and the orphans among large letters go."""
    t = open_transport()
    mine = t.reply_queue("mine")
    big = "y" * (900 << 10)
    letters = [
        DeadLetter(
            f"{big}-{i}".encode(), orphaned_reason(mine) if i % 3 == 0 else "why", queue, "w"
        ).encode()
        for i in range(24)
    ]
    raw.rpush(f"distq:{queue}:dead", *letters)
    assert t.forget_orphans(mine) == 8
    assert raw.lrange(f"distq:{queue}:dead", 0, -1) == [x for i, x in enumerate(letters) if i % 3]


def test_requeue_dead_onto_a_ready_key_made_another_type_loses_no_letter(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """The script popped a letter before the push that failed (WRONGTYPE), and a
    script's error undoes nothing: one letter was neither queued nor dead (cli16)."""
    t = open_transport()
    letters = [
        DeadLetter(body=f"task-{i}".encode(), reason="why", queue=queue, worker="w").encode()
        for i in range(3)
    ]
    raw.rpush(f"distq:{queue}:dead", *letters)

    def made_another_type_meanwhile(letter: DeadLetter) -> bytes:
        raw.set(queue, "not a list")  # after the count, before the moves
        return letter.body

    with pytest.raises(ConfigError, match=f"Redis key '{queue}'"):
        t.requeue_dead(None, made_another_type_meanwhile)
    assert raw.lrange(f"distq:{queue}:dead", 0, -1) == letters
    raw.delete(queue)
    assert t.requeue_dead(None) == 3
    assert raw.lrange(queue, 0, -1) == [b"task-2", b"task-1", b"task-0"]


@pytest.mark.parametrize(
    ("suffix", "make", "found", "want"),
    [
        ("", "set", "string", "list of ready tasks"),
        ("", "hset", "hash", "list of ready tasks"),
        (":dead", "set", "string", "list of dead letters"),
        (":consumers", "set", "string", "zset of worker leases"),
        (":redelivered", "hset", "hash", "set of redelivered tasks"),
    ],
)
def test_a_key_of_the_queue_of_another_type_is_refused_at_start(
    open_transport: OpenTransport,
    raw: redis.Redis[bytes],
    queue: str,
    suffix: str,
    make: str,
    found: str,
    want: str,
) -> None:
    key = f"distq:{queue}{suffix}" if suffix else queue
    if make == "set":
        raw.set(key, "hello")
    else:
        raw.hset(key, "field", "value")
    with pytest.raises(ConfigError) as caught:
        open_transport()
    assert str(caught.value).startswith(f"Redis key '{key}' at 127.0.0.1:")
    assert f"holds a {found}, not the {want} distq keeps there for DISTQ_QUEUE='{queue}'" in (
        str(caught.value)
    )
    assert f"redis-cli -n 0 DEL {key}" in str(caught.value)
    raw.delete(key)
    open_transport()  # the same queue, once the key is gone


def _redis_target(url: str) -> Target:
    """A fresh queue on the Redis at ``url``, for distq subprocesses."""
    return Target(
        "redis",
        Settings(transport="redis", redis_url=url),
        {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url},
    ).fresh()


def _each_role(target: Target) -> Iterator[tuple[list[str], subprocess.CompletedProcess[str]]]:
    """A worker, a master and two commands run on ``target``, one after the other."""
    for args in (
        ["worker", "--exit-when-idle", "2"],
        ["master", "--tasks", "2", "--timeout", "10"],
        ["status"],
        ["submit", "jobs:add", "1", "2"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "distq", *args],
            env=target.process_env(),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        yield args, done


def test_a_queue_name_another_key_holds_stops_workers_masters_and_commands_at_once(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    """Not a loop of 'reconnecting' / 'reconnected' until killed: exit 2, naming the key."""
    target = _redis_target(redis_url)
    queue = target.settings.queue
    raw.set(queue, "hello")
    for args, done in _each_role(target):
        assert done.returncode == 2, (args, done.stderr)
        assert f"Redis key '{queue}' at 127.0.0.1:" in done.stderr, done.stderr
        assert "holds a string, not the list of ready tasks distq keeps there for " in (done.stderr)
        assert "set DISTQ_QUEUE to a name no other key has" in done.stderr
        assert "reconnect" not in done.stderr and "Traceback" not in done.stderr
    raw.delete(queue)


def test_a_master_waiting_for_results_stops_when_its_queue_key_is_made_another_type(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    """Its tasks went with the key. Before, a master that had submitted all (no worker
    yet) touched none of the queue's keys again: it waited until its --timeout, exit 1,
    never naming the key (README: such a refusal stops the job, exit 2)."""
    target = _redis_target(redis_url)
    queue = target.settings.queue
    master = Distq(["master", "--tasks", "3", "--timeout", "60"], target.process_env())
    try:
        master.wait_for("try to get result")
        raw.delete(queue)
        raw.set(queue, "hello")
        assert master.wait(20) == 2, master.output()  # within a reconcile or two (2 s each)
        assert f"Redis key '{queue}' at 127.0.0.1:" in master.output(), master.output()
        assert "holds a string, not the list of ready tasks" in master.output()
    finally:
        master.stop()
        raw.delete(queue)


def test_a_master_collects_the_results_of_leased_tasks_before_a_wrong_typed_key_stops_it(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    """The workers finish the tasks they hold and send their results (they stop warm):
    this session's first fix stopped the master at its next reconcile, 2 missing, the
    results sent after it had gone (diff12a)."""
    target = _redis_target(redis_url)
    queue = target.settings.queue
    env = target.process_env()
    worker = Distq(["worker", "--concurrency", "2"], env)
    master = Distq(
        ["master", "--tasks", "2", "--task-delay", "6", "--timeout", "60", "--wait-workers", "2"],
        env,
    )
    try:
        worker.wait_for(r"Get task .*\n.*Get task", timeout=60)  # both leased
        raw.delete(queue)
        raw.set(queue, "hello")
        assert master.wait(60) in (0, 2), master.output()
        out = master.output()
        assert "all 2 results in" in out or "2 of 2 results in" in out, out
        assert "missing" not in out, out
        assert worker.wait(30) == 2, worker.output()
        assert "2 ok" in worker.output(), worker.output()
    finally:
        master.stop()
        worker.stop()
        raw.delete(queue)


@contextlib.contextmanager
def _acl_user(raw: redis.Redis[bytes], *rules: str) -> Iterator[str]:
    """A Redis user with these ACL rules and password "pw"; its name. Deleted after."""
    user = f"u{uuid.uuid4().hex[:8]}"
    raw.execute_command("ACL", "SETUSER", user, "on", ">pw", *rules)
    try:
        yield user
    finally:
        raw.execute_command("ACL", "DELUSER", user)


def test_a_user_whose_acl_leaves_out_the_ready_list_stops_everything_at_once(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    """``~distq:*`` misses the ready list, named after the queue itself: workers looped on
    'reconnecting' / 'reconnected' for good (or said "task_queue is empty" and exited 0)."""
    port = urlsplit(redis_url).port
    with _acl_user(raw, "~distq:*", "+@all") as user:
        target = _redis_target(f"redis://{user}:pw@127.0.0.1:{port}/0")
        queue = target.settings.queue
        for args, done in _each_role(target):
            assert done.returncode == 2, (args, done.stderr)
            assert f"refused user '{user}' access to key '{queue}' of DISTQ_QUEUE" in done.stderr
            assert f"ACL SETUSER {user} '~{queue}' '~distq:{queue}:*' +@all" in done.stderr
            assert "reconnect" not in done.stderr and "Traceback" not in done.stderr


def test_a_user_with_exactly_the_readme_acl_can_count_sweep_and_wait(
    open_transport: OpenTransport, redis_url: str, raw: redis.Redis[bytes], queue: str
) -> None:
    """``stats`` and ``sweep`` (``distq status``, a master waiting a block slice without a
    result) passed an empty key name, outside ``~<queue> ~distq:<queue>:*``: NOPERM, and
    the master exited 2 mid-job while its workers dead-lettered its tasks."""
    port = urlsplit(redis_url).port
    with _acl_user(raw, f"~{queue}", f"~distq:{queue}:*", "+@all") as user:
        transport = open_transport(lease=0.6, url=f"redis://{user}:pw@127.0.0.1:{port}/0")
        producer = transport.producer(transport.reply_queue("job"))
        producer.submit(_bodies(2))
        assert transport.stats().ready == 2
        assert producer.results(1, 0.5) == []  # waits past a block slice: sweeps
        assert transport.stats().ready == 2
        producer.close()


def test_permissions_taken_away_mid_run_are_a_config_error_not_an_outage(
    open_transport: OpenTransport, redis_url: str, raw: redis.Redis[bytes], queue: str
) -> None:
    port = urlsplit(redis_url).port
    with _acl_user(raw, f"~{queue}", f"~distq:{queue}:*", "+@all") as user:
        transport = open_transport(url=f"redis://{user}:pw@127.0.0.1:{port}/0")
        consumer = transport.consumer("w")
        assert consumer.fetch(1, 0.0) == []
        raw.execute_command("ACL", "SETUSER", user, "resetkeys", "~distq:*")
        with pytest.raises(ConfigError, match=f"refused user '{user}' access to a key"):
            consumer.fetch(1, 0.0)


def test_scripts_run_when_full_for_a_user_without_info(
    open_transport: OpenTransport, redis_url: str, raw: redis.Redis[bytes], queue: str
) -> None:
    """INFO is @dangerous: a user without it was taken for Redis 6.2, and its scripts
    went out without the allow-oom flag (the wedge when full, on Redis 7)."""
    if int(str(raw.info("server")["redis_version"]).split(".")[0]) < 7:
        pytest.skip("allow-oom scripts need Redis 7")
    port = urlsplit(redis_url).port
    with _acl_user(raw, f"~{queue}", f"~distq:{queue}:*", "+@all", "-@dangerous") as user:
        transport = open_transport(url=f"redis://{user}:pw@127.0.0.1:{port}/0")
        assert transport.claim_script.source.startswith("#!lua flags=allow-oom\n")
        assert transport.consumer("w").fetch(1, 0.0) == []  # and Redis runs it


@pytest.mark.parametrize("policy", ["noeviction", "allkeys-lru", "volatile-lru"])
def test_a_redis_that_evicts_keys_is_named_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str
) -> None:
    """With an evicting policy (ElastiCache's default is volatile-lru) a full Redis
    deleted distq's result lists: the master waited for them until --timeout, and
    nothing said why."""
    args = ["--maxmemory", "100mb", "--maxmemory-policy", policy]
    with LocalRedis(tmp_path, extra_args=args).start() as server:
        settings = Settings(transport="redis", redis_url=server.url, queue="evict")
        RedisTransport(settings, "worker").close()
    said = [r.getMessage() for r in caplog.records if "evicts keys when full" in r.message]
    if policy == "noeviction":
        assert said == []
    else:
        assert len(said) == 1 and f"(maxmemory-policy {policy}, maxmemory 100.00M)" in said[0]
        assert "set maxmemory-policy noeviction" in said[0]


@pytest.mark.parametrize("command", ["BLMOVE", "ZADD"])  # sent as is; called by a script
def test_a_command_renamed_away_is_a_config_error_not_an_outage(
    tmp_path: Path, command: str
) -> None:
    """``rename-command BLMOVE ""``: master and worker said "unknown command ...;
    reconnecting" for good, and a worker with --exit-when-idle left its tasks queued.
    Inside a script Redis words it otherwise ("Unknown Redis command called from
    script"): that one stayed an outage after the first fix."""
    with LocalRedis(tmp_path, extra_args=["--rename-command", command, ""]).start() as server:
        settings = Settings(transport="redis", redis_url=server.url, queue="renamed")
        transport = RedisTransport(settings, "worker")
        try:
            with pytest.raises(ConfigError, match="does not know a command distq uses"):
                # an empty queue: it waits, by BLMOVE. Up to 5 s: with 0.3 s, a claim
                # slower than that (a starved Redis) left no time to wait, nothing raised
                transport.consumer("w").fetch(1, 5.0)
        finally:
            transport.close()


def test_a_full_redis_poll_past_a_retry_already_due_does_not_fail(
    open_transport: OpenTransport,
) -> None:
    """A retry due before the fetch began made its wait negative: while Redis is full,
    time.sleep(-0.5) raised, and the slot took it for an outage."""
    transport = open_transport()
    consumer = transport.consumer("w")
    transport._full_until = time.monotonic() + 5  # as after a refusal for memory
    assert consumer._block_then_claim(-0.5, 5) == []


def test_a_wait_past_a_retry_due_a_second_ago_claims_its_task(
    open_transport: OpenTransport,
) -> None:
    """A consumer keeps its BLMOVE for the last wait it made, and started as if its last
    wait had been -1.0 s with no command: a first wait of exactly -1.0 s (a delayed retry
    due a second before it) sent an empty command, not a BLMOVE. Each wait that changes,
    as when a retry is due sooner, has its own BLMOVE."""
    transport = open_transport()
    transport.producer(transport.reply_queue("j")).submit([b"a", b"b", b"c"])
    consumer = transport.consumer("w")
    for block, body in ((-1.0, b"a"), (0.5, b"b"), (-1.0, b"c")):
        assert [d.body for d in consumer._block_then_claim(block, 1)] == [body]


def test_a_settle_that_went_through_is_said_while_the_wait_for_tasks_goes_on(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A lone task's worker counted the batch it settled only once settle_then_fetch
    returned, with the next task in hand, on the way to running it (7 to 9 µs of each
    round trip, issue 16). Now the consumer says the settle went through (on_settled, on
    the caller's thread) once its answer is read, while the BLMOVE behind it still waits;
    not for a settle by body, which follows the claim."""
    transport = open_transport()
    producer = transport.producer(transport.reply_queue("j"))
    producer.submit([b"a"])
    consumer = transport.consumer("w")
    (task,) = consumer.fetch(5, timeout=1)  # the queue drained: the next fetch waits
    said = threading.Event()
    consumer.on_settled = said.set
    got: list[list[bytes]] = []
    done = Settlement(task, reply_to=producer.reply_to, result=b"r")
    waiting = threading.Thread(
        target=lambda: got.append([d.body for d in consumer.settle_then_fetch([done], 1, 5)])
    )
    waiting.start()
    try:
        assert said.wait(5), "not said while the wait went on"
        assert waiting.is_alive() and not got  # the wait goes on: no task yet
    finally:
        raw.lpush(transport.ready_key, b"b")
        waiting.join(10)
    assert got == [[b"b"]]
    assert producer.results(5, 1) == [b"r"]


def test_a_lone_round_trip_checks_its_replies_in_line(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone task's round trip, both ends: the worker's settle and claim, and the
    master's submit and wait for its result, check their replies where they read them,
    with no list made for ``raise_first`` nor a call asking whether Redis is full of a
    reply that is no error (issue 16); the tasks and results are the same."""
    asked = {"raise_first": 0, "refused_for_memory": 0}
    raise_first, refused = redis_wire.raise_first, RedisTransport.refused_for_memory

    def counted_raise_first(replies: Any) -> None:
        asked["raise_first"] += 1
        raise_first(replies)

    def counted_refused(self: RedisTransport, reply: object) -> bool:
        asked["refused_for_memory"] += 1
        return refused(self, reply)

    transport = open_transport()
    producer = transport.producer(transport.reply_queue("j"))
    consumer = transport.consumer("w")
    producer.submit([b"a", b"b"])
    (task,) = consumer.fetch(1, timeout=1)
    monkeypatch.setattr(redis_transport, "raise_first", counted_raise_first)
    monkeypatch.setattr(RedisTransport, "refused_for_memory", counted_refused)
    done = Settlement(task, reply_to=producer.reply_to, result=b"ra")
    assert [d.body for d in consumer.settle_then_fetch([done], 1, 5)] == [b"b"]
    assert producer.submit_then_results([b"c"], 1, 1) == [b"ra"]
    assert asked == {"raise_first": 0, "refused_for_memory": 0}


def test_a_lone_submit_reads_its_result_without_the_takes_general_checks(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master's lone task (its wire told of its stop, as a job's is): its submit's
    replies, the script's count and the wait's result, neither an error, are read in
    line, not through _taken's questions for every kind of take (a lost script, a full
    Redis, a wait or a read), and each answer that comes within the first look for it
    is read with no loop of looks set up (issue 16). The results and their acks are the
    same, each read once: the next take acks it."""
    asked = {"_taken": 0, "_await_unless_stopped": 0}
    taken, await_unless_stopped = RedisProducer._taken, redis_wire._await_unless_stopped

    def counted_taken(self: RedisProducer, *args: Any, **kwargs: Any) -> list[bytes]:
        asked["_taken"] += 1
        return taken(self, *args, **kwargs)

    def counted_await(*args: Any) -> None:
        asked["_await_unless_stopped"] += 1
        await_unless_stopped(*args)

    transport = open_transport()
    producer = transport.producer(transport.reply_queue("j"))
    producer.stop_waiting_on(threading.Event())
    consumer = transport.consumer("w")
    monkeypatch.setattr(RedisProducer, "_taken", counted_taken)
    monkeypatch.setattr(redis_wire, "_await_unless_stopped", counted_await)
    producer.submit([b"a"])
    (task,) = consumer.fetch(1, timeout=1)
    for body, result in ((b"b", b"ra"), (b"c", b"rb")):  # each result before the submit
        consumer.settle([Settlement(task, reply_to=producer.reply_to, result=result)])
        assert producer.submit_then_results([body], 1, 1) == [result]
        (task,) = consumer.fetch(1, timeout=1)
        assert task.body == body
    assert asked == {"_taken": 0, "_await_unless_stopped": 0}
    assert producer.results(5, 0) == []  # both results acked: none read twice


def test_a_redis_kept_full_by_other_data_still_runs_the_job(tmp_path: Path) -> None:
    """Full for good (another application's keys): the scripts ran, but the BLMOVE of a
    worker's and the master's waits was refused, an outage each time; the results sat
    unread and the worker never went idle (0 of 50 results in 20 s)."""
    args = ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
    with LocalRedis(tmp_path, extra_args=args).start() as server:
        if tuple(int(p) for p in server.version.split(".")[:2]) < (7, 0):
            pytest.skip(f"Redis {server.version}: allow-oom scripts need Redis 7")
        target = _redis_target(server.url)
        client = server.client()
        master = Distq(
            ["master", "--tasks", "50", "--timeout", "25", "--quiet"], target.process_env()
        )
        worker = None
        try:
            deadline = time.monotonic() + 10
            while client.llen(target.settings.queue) < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(redis.ResponseError):  # until Redis refuses: full
                for n in range(400):
                    client.set(f"other{n}", b"z" * 50_000)
            client.config_set("maxmemory", "3mb")  # and full it stays, whatever drains
            worker = Distq(["worker", "--exit-when-idle", "2", "--quiet"], target.process_env())
            assert master.wait(40) == 0, master.output()
            assert worker.wait(30) == 0, worker.output()
            out = master.output() + worker.output()
        finally:
            for process in (master, worker):
                if process is not None:
                    process.stop(grace=0)
            client.close()
    assert "all 50 results in and correct" in out, out
    assert "reconnecting" not in out and "50 ok" in out, out


def _exits_2_after(
    process: Distq, ready: str, change: Callable[[], object], raw: redis.Redis[bytes], queue: str
) -> str:
    """Once ``process`` prints ``ready``, make ``change`` (a setting the broker then
    refuses); ``process`` must exit 2. Its output; the queue's key is deleted after."""
    try:
        process.wait_for(ready)
        change()
        assert process.wait(20) == 2, process.output()
        return process.output()
    finally:
        process.stop(grace=0)
        raw.delete(queue)


@pytest.mark.timeout(240)  # its own waits: 60 s for Redis full, 120 for the job
def test_a_redis_full_to_its_maxmemory_drains_and_the_job_ends(tmp_path: Path) -> None:
    """With ``maxmemory`` and ``noeviction`` a full Redis refused the workers' claim
    script too (its ZADD), so nothing drained: master and workers waited for good (225
    of 60,000 results in 60 s). Redis 7 runs the scripts flagged allow-oom; the master's
    submits stay refused until the workers have made room."""
    args = ["--maxmemory", "6mb", "--maxmemory-policy", "noeviction"]
    with LocalRedis(tmp_path, extra_args=args).start() as server:
        if tuple(int(p) for p in server.version.split(".")[:2]) < (7, 0):
            pytest.skip(f"Redis {server.version}: allow-oom scripts need Redis 7")
        client = server.client()
        for n in range(200):  # room for a few thousand tasks only
            if int(client.info("memory")["used_memory"]) >= 4_500_000:
                break
            client.set(f"filler{n}", b"z" * 50_000)
        client.close()
        target = _redis_target(server.url)
        master = Distq(
            ["master", "--tasks", "60000", "--timeout", "90", "--quiet"], target.process_env()
        )
        workers: list[Distq] = []
        try:  # workers once Redis is full: they kept up with the master on a busy machine
            master.wait_for("command not allowed when used memory > 'maxmemory'", 60)
            # No --exit-when-idle: the master waits up to CAP_SECONDS (5 s) between its
            # attempts, so workers idle for 3 s left it 2,000 tasks no one ran (1 in 10).
            workers += [Distq(["worker", "--quiet"], target.process_env()) for _ in range(2)]
            assert master.wait(120) == 0, master.output()
            out = master.output()
            for worker in workers:
                worker.signal(signal.SIGTERM)
                assert worker.wait(30) == 0, worker.output()
        finally:
            for process in (master, *workers):
                process.stop(grace=0)
    assert "command not allowed when used memory > 'maxmemory'; reconnecting" in out, out
    assert "all 60,000 results in and correct" in out, out


def test_a_master_the_broker_refuses_mid_job_writes_its_report_and_exits_2(
    redis_url: str, raw: redis.Redis[bytes], tmp_path: Path
) -> None:
    """The queue's key made another type mid-job (likewise an ACL taken away): the
    master exited 2 at once, with no report file, no summary, no "master exit"."""
    target = _redis_target(redis_url)
    queue, report = target.settings.queue, tmp_path / "report.json"
    argv = ["master", "--rate", "20", "--tasks", "200", "--report", str(report)]
    master = Distq(argv, target.process_env())
    out = _exits_2_after(master, r"^put task ", lambda: raw.set(queue, "oops"), raw, queue)
    assert out.count(f"Redis key '{queue}' at 127.0.0.1:") == 1 and "Traceback" not in out, out
    assert re.search(r"^job stopped after .* missing$", out, re.M), out
    assert out.rstrip().endswith("master exit"), out
    written = json.loads(report.read_text())
    assert written["problems"][0].startswith(f"stopped: Redis key '{queue}' at 127.0.0.1:")


def test_a_master_the_broker_refuses_while_it_drains_writes_its_report_too(
    redis_url: str, raw: redis.Redis[bytes], tmp_path: Path
) -> None:
    """Stopped, the master waits up to 5 s for results in flight: a refusal then still
    ended it with exit 2 and no summary, no report, no "master exit". A worker runs a
    long task meanwhile: the tasks still queued are taken back at the stop, and with
    none in flight the master does not wait."""
    port = urlsplit(redis_url).port
    with _acl_user(raw, "~*", "+@all") as user:
        target = _redis_target(f"redis://{user}:pw@127.0.0.1:{port}/0")
        report = tmp_path / "report.json"
        argv = ["master", "--rate", "20", "--tasks", "200", "--report", str(report)]
        master = Distq([*argv, "--task-delay", "30"], target.process_env())
        worker = Distq(["worker"], target.process_env())

        def stop_then_refuse() -> None:
            worker.wait_for(r"Get task \d+ from task_queue")
            master.signal(signal.SIGTERM)
            master.wait_for(r"^SIGTERM: stopping the job")
            time.sleep(1.0)  # the job's loop has ended: the master drains (up to 5 s)
            raw.execute_command("ACL", "SETUSER", user, "resetkeys", "~nothing")

        try:
            out = _exits_2_after(
                master, r"^put task ", stop_then_refuse, raw, target.settings.queue
            )
        finally:
            worker.stop(grace=0)
    assert re.search(r"^job stopped after .* missing$", out, re.M), out
    assert out.rstrip().endswith("master exit") and "Traceback" not in out, out
    assert json.loads(report.read_text())["problems"][0].startswith("stopped: Redis at ")


def test_submit_wait_whose_broker_refuses_it_mid_wait_says_so_in_one_line(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    """The executor broke (the user's keys taken away; likewise a broker away for 30 s):
    ``submit --wait`` ended in a Python traceback and exit 1. Now one line, exit 2."""
    port = urlsplit(redis_url).port
    with _acl_user(raw, "~*", "+@all") as user:
        target = _redis_target(f"redis://{user}:pw@127.0.0.1:{port}/0")
        submit = Distq(["submit", "jobs:add", "1", "2", "--wait"], target.process_env())
        try:
            submit.wait_for(r"^[0-9a-f]{32}$")  # queued, no worker: it waits
            raw.execute_command("ACL", "SETUSER", user, "resetkeys", "~distq:*")
            assert submit.wait(20) == 2, submit.output()
            out = submit.output()
        finally:
            submit.stop(grace=0)
            raw.delete(target.settings.queue)
        # stdout and stderr share one pipe: the id is not always its first line
        task_id = re.search(r"^[0-9a-f]{32}$", out, re.M)
        assert task_id is not None, out
        said = f"the executor stopped: Redis at 127.0.0.1:{port} refused user '{user}'"
        assert out.count(said) == 1, out
        assert f"task {task_id[0]} has no result. If it reached the queue, it stays there" in out
        assert "Traceback" not in out, out


@pytest.mark.parametrize("change", ["acl", "type"])
def test_a_worker_exits_2_when_the_broker_refuses_a_setting_mid_run(
    redis_url: str, raw: redis.Redis[bytes], change: str
) -> None:
    """Permissions taken away, or the ready list made another type, while a worker runs:
    it looped on 'reconnecting' / 'reconnected' for good. Now it stops and exits 2."""
    port = urlsplit(redis_url).port
    with _acl_user(raw, "~*", "+@all") as user:
        target = _redis_target(f"redis://{user}:pw@127.0.0.1:{port}/0")
        queue = target.settings.queue
        worker = Distq(["worker", "--concurrency", "2"], target.process_env())

        def refuse() -> None:
            time.sleep(1.0)  # both slots fetch
            if change == "acl":
                raw.execute_command("ACL", "SETUSER", user, "resetkeys", "~distq:*")
            else:
                raw.set(queue, "hello")

        out = _exits_2_after(worker, r"Connect to redis", refuse, raw, queue)
        assert "worker exit." in out
        wanted = "access to a key" if change == "acl" else f"Redis key '{queue}' at 127.0.0.1:"
        assert wanted in out, out
        assert "reconnected" not in out and "Traceback" not in out, out


def test_a_worker_refused_mid_run_exits_2_though_a_task_left_a_thread_running(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    """The exit past a task's threads came only on a normal return: refused (exit 2),
    the worker stayed up for the thread's 60 s, deaf to SIGTERM (diff13)."""
    port = urlsplit(redis_url).port
    with _acl_user(raw, "~*", "+@all") as user:
        target = _redis_target(f"redis://{user}:pw@127.0.0.1:{port}/0")
        queue = target.settings.queue
        raw.lpush(queue, Task(name="jobs:leave_thread", args=[60], reply_to=NO_REPLY).encode())
        env = target.process_env(DISTQ_DRAIN_SECONDS="2")
        worker = Distq(["worker", "--tasks", "jobs"], env)

        def refuse() -> None:
            raw.execute_command("ACL", "SETUSER", user, "resetkeys", "~distq:*")

        started = time.monotonic()
        out = _exits_2_after(worker, r"Get task jobs:leave_thread", refuse, raw, queue)
        assert time.monotonic() - started < 15, out
        assert "access to a key" in out, out
        assert "the worker exits 2 now, without waiting any longer" in out, out


def test_a_worker_refused_while_its_one_slot_runs_a_long_task_stops_at_the_keepers_renewal(
    redis_url: str, raw: redis.Redis[bytes]
) -> None:
    """Only the keeper calls Redis while the slot's 30 s task runs: it took the refusal
    for "a bug in distq", said it once an interval, and the worker went on until the task
    had ended, its 2 s drain of no use. Now it stops as a slot refused does."""
    port = urlsplit(redis_url).port
    with _acl_user(raw, "~*", "+@all") as user:
        target = _redis_target(f"redis://{user}:pw@127.0.0.1:{port}/0")
        queue = target.settings.queue
        raw.lpush(queue, Task(name="jobs:sleep_then", args=[30, 1], reply_to=NO_REPLY).encode())
        worker = Distq(["worker", "--tasks", "jobs"], target.process_env(DISTQ_DRAIN_SECONDS="2"))

        def refuse() -> None:
            raw.execute_command("ACL", "SETUSER", user, "resetkeys", "~distq:*")

        started = time.monotonic()
        out = _exits_2_after(worker, r"Get task jobs:sleep_then", refuse, raw, queue)
        assert time.monotonic() - started < 15, out  # the task had 30 s to run
        assert "bug in distq" not in out, out
        assert out.count(f"refused user '{user}' access to a key") == 1, out


def test_submit_wait_interrupted_twice_on_a_frozen_redis_exits_1_with_lines(
    tmp_path: Path,
) -> None:
    """The first Ctrl-C was handled, but a second one while the executor closed (19 s
    on a frozen broker) ended in a KeyboardInterrupt traceback and exit 130 (signals10)."""
    with LocalRedis(tmp_path).start() as server:
        target = _redis_target(server.url)
        submit = Distq(["submit", "square", "3", "--wait"], target.process_env())
        try:
            submit.wait_for(r"^[0-9a-f]{32}$")  # queued, no worker: it waits
            server.pause()
            try:
                submit.signal(signal.SIGINT)
                submit.wait_for(r"^distq: interrupted$", timeout=10)
                time.sleep(0.5)  # closing, against the frozen broker
                submit.signal(signal.SIGINT)
                assert submit.wait(10) == 1, submit.output()
            finally:
                server.resume()
            out = submit.output()
        finally:
            submit.stop(grace=0)
    assert "interrupted again: exiting without waiting for the close" in out, out
    assert "Traceback" not in out, out


def test_wrong_password_is_refused_without_echoing_it(
    open_transport: OpenTransport, redis_broker: Broker
) -> None:
    with pytest.raises(AuthenticationFailed, match="check the password") as info:
        open_transport(url=redis_broker.bad_credentials_url)
    for url in (redis_broker.url, redis_broker.bad_credentials_url):
        assert str(urlsplit(url).password) not in str(info.value)
    with pytest.raises(AuthenticationFailed):  # no password at all
        open_transport(url=f"redis://127.0.0.1:{urlsplit(redis_broker.url).port}/0")


@pytest.mark.parametrize("queued", [1, 8])
def test_a_late_result_drops_the_copy_its_lapsed_lease_sent_back(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queued: int
) -> None:
    """A task holding the GIL past its lease ran again on another slot, whose lease then
    lapsed in turn (3 runs): a late result left the copy queued. The copy still queued
    goes; one leased again runs (a duplicate result the master drops). Every copy of a
    stalled batch goes: a look at the tail only (mutant R06 of mut14b, ``COPY_LOOK`` 1)
    dropped few, and the batch's other tasks ran again (8 copies: the settle visits them
    in a Lua table's order, which for 4 happened to find each at the tail in turn)."""
    t = open_transport(lease=0.5)
    producer = t.producer(t.reply_queue("j"))
    producer.submit(_bodies(queued + 1))
    stalled = t.consumer("stalled")
    first = stalled.fetch(queued + 1, timeout=1)
    other = t.consumer("other")
    _outlive_lease(raw, t)
    (copy,) = other.fetch(1, timeout=0)  # the claim sweeps: one copy leased again
    assert copy.redelivered and raw.llen(t.ready_key) == queued
    stalled.settle([Settlement(d, reply_to=producer.reply_to, result=b"r") for d in first])
    assert results_n(producer, queued + 1) == [b"r"] * (queued + 1)
    assert raw.llen(t.ready_key) == 0  # the copy still queued is gone
    assert raw.llen(other.inflight_key) == 1  # the one leased again runs
    other.settle([Settlement(copy, reply_to=producer.reply_to, result=b"dup")])
    assert results_n(producer, 1) == [b"dup"] and t.stats().in_flight == 0


def test_a_late_result_drops_the_copy_behind_more_tasks_than_a_look_from_the_claim_end(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A lapse puts the copy behind the tasks queued: at the submit end of the ready
    list, where a look from the claim end only did not reach past a long queue."""
    t = open_transport(lease=0.5)
    producer = t.producer(t.reply_queue("j"))
    producer.submit([b"task"])
    stalled = t.consumer("stalled")
    (delivery,) = stalled.fetch(1, timeout=1)
    others = _bodies(COPY_LOOK + 1)
    producer.submit(others)
    _outlive_lease(raw, t)
    t.sweep(t.client)
    assert raw.lindex(t.ready_key, 0) == b"task"  # behind the others
    stalled.settle([Settlement(delivery, reply_to=producer.reply_to, result=b"ok")])
    assert results_n(producer, 1) == [b"ok"]
    assert raw.lrange(t.ready_key, 0, -1)[::-1] == others  # the copy is gone


def test_a_late_dead_letter_is_not_published_when_the_claim_took_the_copy_back(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A worker's settle rides with its next claim: that claim took the lapsed copy back
    into the same in-flight list before the settle by body, whose gate then found it
    held and published the late dead letter (a task that succeeded failed for good);
    its ack took the new lease too. The new delivery is the copy: it decides."""
    t = open_transport(lease=0.5)
    producer = t.producer(t.reply_queue("j"))
    producer.submit([b"task"])
    stalled = t.consumer("stalled")
    (delivery,) = stalled.fetch(1, timeout=1)
    _outlive_lease(raw, t)
    t.sweep(t.client)  # as another slot's claim does: the lapsed lease goes back
    assert raw.llen(t.ready_key) == 1
    late = Settlement(delivery, reply_to=producer.reply_to, result=b"failed", dead_letter=b"x")
    (again,) = stalled.settle_then_fetch([late], 1)
    assert stalled.late == {b"task"}  # its dead letter was not sent: the worker says so
    assert again.body == b"task" and again.redelivered
    assert raw.lrange(stalled.inflight_key, 0, -1) == [b"task"]  # leased: the copy runs
    stalled.heartbeat()
    assert raw.llen(t.dead_key) == 0 and results_n(producer, 1, within=0.2) == []
    stalled.settle([Settlement(again, reply_to=producer.reply_to, result=b"ok")])
    assert not stalled.late
    assert results_n(producer, 1) == [b"ok"] and raw.llen(stalled.inflight_key) == 0


def test_a_late_result_is_not_run_again_when_the_claim_took_the_copy_back(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """The same with a result: the claim riding with the settle took the lapsed copy
    back, and the worker ran it again; a task holding the GIL past its lease lapsed at
    each run, so one worker ran it 48 times and never the tasks behind it (lease17). The
    task is done: its new delivery is acked and not handed out; the next task is."""
    t = open_transport(lease=0.5)
    producer = t.producer(t.reply_queue("j"))
    producer.submit([b"task", b"next"])
    stalled = t.consumer("stalled")
    (delivery,) = stalled.fetch(1, timeout=1)
    _outlive_lease(raw, t)
    t.sweep(t.client)  # as another slot's claim does: the lapsed lease goes back
    assert raw.lrange(t.ready_key, 0, -1) == [b"task", b"next"]  # the copy: behind "next"
    done = Settlement(delivery, reply_to=producer.reply_to, result=b"ok")
    assert [d.body for d in stalled.settle_then_fetch([done], 2)] == [b"next"]
    assert raw.lrange(stalled.inflight_key, 0, -1) == [b"next"]
    assert results_n(producer, 1) == [b"ok"] and raw.llen(t.ready_key) == 0
    assert stalled.fetch(1, timeout=0) == []  # nothing left: "next" is leased already


def test_a_claim_reclaims_an_expired_lease_however_long_the_backlog(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """No heartbeat, a ready list far longer than the claim: the claim sweeps anyway."""
    t = open_transport(lease=0.5)
    producer = t.producer(t.reply_queue("j"))
    producer.submit(_bodies(2, "old"))
    dead = t.consumer("dead")
    held = dead.fetch(2, timeout=1)
    producer.submit(_bodies(500))
    busy = t.consumer("busy")
    _outlive_lease(raw, t)
    got = busy.fetch(1, timeout=0)  # the claim sweeps first: the expired ones go behind
    assert raw.llen(dead.inflight_key) == 0
    assert [d.body for d in got] == [b"task-0"]
    # at the submit end, the one claimed first nearer the claim end: it runs first of them
    assert raw.lrange(queue, 0, 1) == [d.body for d in reversed(held)]


@pytest.mark.parametrize("idle_lease", [1.0, 10.0])
def test_a_lease_that_ran_out_while_redis_was_frozen_gets_the_time_it_had_left_once(
    tmp_path: Path, idle_lease: float
) -> None:
    """Redis stopped past a lease (SIGSTOP): the first claim after it swept the lease of a
    task still running, and another slot of the worker ran a copy beside it (held19). A
    lease that ran out while Redis stood still now gets the time it had left back, once:
    a worker that died meanwhile has its tasks run again after a second freeze. Also when
    the first claim after it is another worker's, with a longer lease (stood20)."""
    with LocalRedis(tmp_path).start() as server:
        settings = Settings(
            transport="redis", redis_url=server.url, queue="frozen", lease_seconds=1.0
        )
        t = RedisTransport(settings, "worker")
        other = RedisTransport(replace(settings, lease_seconds=idle_lease), "worker")
        try:
            t.producer(t.reply_queue("j")).submit(_bodies(2))
            dead, live, idle = t.consumer("w-0"), t.consumer("w-1"), other.consumer("v-0")
            (held,) = dead.fetch(1, timeout=1)
            assert len(live.fetch(1, timeout=1)) == 1
            assert idle.fetch(1, timeout=0) == []
            for freeze in (1, 2):
                server.pause()
                time.sleep(1.5)
                server.resume()
                got = idle.fetch(2, timeout=0)
                if freeze == 1:
                    assert got == []  # both ran out frozen: both get their time back
                    live.heartbeat()  # its worker lives: the next freeze is its own
            assert [(d.body, d.redelivered) for d in got] == [(held.body, True)]
        finally:
            other.close()
            t.close()


@pytest.mark.parametrize("silence", [62.0, -30.0])
def test_the_shortest_lease_outlives_a_long_freeze_and_a_clock_ahead_is_set_right(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str, silence: float
) -> None:
    """A freeze past a minute forgot the shortest lease in use, so a first sweep with a
    long lease swept a 1 s lease that ran out in it; a clock ahead of Redis's time (a
    snapshot from another host) hid every freeze until Redis's time caught up
    (stood20b). Both told through the clock as a freeze or a snapshot leaves it."""
    short, long_ = open_transport(lease=1.0), open_transport(lease=130.0)
    short.producer(short.reply_queue("j")).submit(_bodies(1))
    dead = short.consumer("w-0")
    assert len(dead.fetch(1, timeout=1)) == 1
    secs, micros = raw.time()
    now = secs * 1000 + micros // 1000
    if silence > 0:  # Redis stood still 62 s, the 1 s lease ran out 0.5 s into it
        at = now - int(silence * 1000)
        raw.hset(short.clock_key, mapping={"at": at, "lease": 1000, "lease_at": at - 1000})
        raw.zadd(f"distq:{queue}:consumers", {dead.consumer_id: at + 500})
        assert long_.consumer("v-0").fetch(1, timeout=0) == []  # given back, not swept
    else:
        raw.hset(short.clock_key, "at", now - int(silence * 1000))
        long_.consumer("v-0").fetch(1, timeout=0)
        assert abs(int(raw.hget(short.clock_key, "at") or 0) - now) < 5_000  # set right
    assert raw.llen(dead.inflight_key) == 1


def test_leases_restored_from_a_snapshot_come_back_within_two_leases(tmp_path: Path) -> None:
    """A restart from a dump restores in-flight lists under the old consumer names; a worker
    that reconnects has a new name, so nobody renews those leases: they run again."""
    with LocalRedis(tmp_path, password="pw") as server:
        server.start()
        settings = Settings(
            transport="redis", redis_url=server.url, queue="snap", lease_seconds=1.0
        )
        before = RedisTransport(settings, "worker")
        producer = before.producer(before.reply_queue("j"))
        producer.submit(_bodies(3))
        held = before.consumer("w-0").fetch(3, timeout=1)
        assert len(held) == 3
        with server.client() as client:
            client.save()
        server.kill()
        server.restart()
        after = RedisTransport(settings, "worker")
        try:
            consumer = after.consumer("w-0")  # the same slot, reconnected
            started = time.monotonic()
            got: list[bytes] = []
            while len(got) < 3 and time.monotonic() - started < 5:
                consumer.heartbeat()
                got += [d.body for d in consumer.fetch(3, timeout=0.2)]
            assert sorted(got) == sorted(d.body for d in held)
            assert time.monotonic() - started < 2 * settings.lease_seconds + 0.5
        finally:
            after.close()
            before.close()


@contextlib.contextmanager
def _master_and_worker(
    server: LocalRedis,
) -> Iterator[tuple[Settings, RedisTransport, RedisTransport]]:
    """``server`` started, its settings (queue "q", leases of 1 s), and a master's and a
    worker's transport on it, closed after the block."""
    server.start()
    settings = Settings(transport="redis", redis_url=server.url, queue="q", lease_seconds=1.0)
    master = RedisTransport(settings, "master")
    worker = RedisTransport(settings, "worker")
    try:
        yield settings, master, worker
    finally:
        worker.close()
        master.close()


def test_a_copy_a_snapshot_restores_after_a_job_with_every_result_in_runs_not_dead_lettered(
    tmp_path: Path,
) -> None:
    """Redis restarts from a snapshot taken while a slot held a task it settled since: the
    restored in-flight list puts a copy of it back once its lease lapses. Its master had
    the result, reconnected, and ended, every result in (``close_answered``, as
    Master.run and the executor's close call it): its close deleted the registration,
    so a worker that reached the copy dead-lettered it unrun, "its master is gone",
    though its result was in (as RabbitMQ did after a restart, ef4821b). The
    registration is left to lapse now, as RabbitMQ leaves its reply queue: the copy runs,
    its result pushed to a list that expires with it."""
    with LocalRedis(tmp_path) as server:
        with _master_and_worker(server) as (settings, master, worker):
            producer = master.producer(master.reply_queue("j"))
            task = Task(name="jobs:add", args=[1, 2], reply_to=producer.reply_to)
            producer.submit([Codec().seal_task(task)])
            consumer = worker.consumer("w-0")
            (held,) = consumer.fetch(1, timeout=1)
            with server.client() as client:
                client.save()  # the snapshot: the task in the slot's in-flight list
            result = ok_result(task, 3)
            consumer.settle([Settlement(held, reply_to=producer.reply_to, result=result)])
            assert len(results_n(producer, 1)) == 1  # every result in
            consumer.close()
            server.kill()
            server.restart()  # from the snapshot: a copy of the task, leased to nobody
            for _ in range(5):  # the master reconnects, as Master._recover does
                with contextlib.suppress(TransportError):
                    assert producer.reconcile() == 1  # the snapshot holds it: none again
                    break
            producer.close_answered()
        env = checkout_env(
            PYTHONPATH=f"{REPO / 'tests'}:{REPO / 'src'}",
            DISTQ_TRANSPORT="redis",
            DISTQ_REDIS_URL=server.url,
            DISTQ_QUEUE="q",
            DISTQ_LEASE_SECONDS="1",
        )
        late = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "4"], env)
        try:
            code, out = late.proc.wait(30), late.output()
        finally:
            late.stop(grace=0)
        assert code == 0, out
        with contextlib.closing(RedisTransport(settings, "master")) as seen:
            letters = seen.dead_letters(10)
        assert [x.reason for x in letters] == [], out
        assert "Get task jobs:add[1, 2]" in out and "1 ok" in out, out


def test_results_pushed_after_a_restore_from_a_snapshot_are_not_dropped_unread(
    tmp_path: Path,
) -> None:
    """Redis restarts from a snapshot older than the master's last take: its ``taken``
    and its results list are older than the master's count, and workers push results the
    master never read onto the restored list. The first take after that trims none by the
    stale count: it reads the list again from the server's count (duplicates, which the
    master drops), so every task's result reaches the master."""
    with LocalRedis(tmp_path) as server:
        server.start()
        settings = Settings(
            transport="redis", redis_url=server.url, queue="snap", lease_seconds=1.0
        )
        master = RedisTransport(settings, "master")
        producer = master.producer(master.reply_queue("j"))
        tasks = _bodies(6)
        producer.submit(tasks)
        before = RedisTransport(settings, "worker")
        try:
            consumer = before.consumer("w")
            got: list[bytes] = []

            def answer(held: Sequence[Any]) -> None:
                done = [
                    Settlement(d, reply_to=producer.reply_to, result=b"r:" + d.body) for d in held
                ]
                consumer.settle(done)

            answer(consumer.fetch(2, timeout=1))  # tasks 0 and 1 answered ...
            got += producer.results(10, timeout=1)  # ... and received
            held = consumer.fetch(2, timeout=1)  # tasks 2 and 3 run during the snapshot
            with server.client() as client:
                client.save()
            answer(held)
            got += producer.results(10, timeout=1)  # received; Redis then restarts
            assert sorted(got) == [b"r:" + t for t in tasks[:4]]
            server.kill()
        finally:
            before.close()
        server.restart()
        after = RedisTransport(settings, "worker")
        try:
            consumer = after.consumer("w")  # 4 and 5 are answered before the master is back
            answer(consumer.fetch(10, timeout=1))
            for _ in range(5):  # the master reconnects, as Master._recover does
                with contextlib.suppress(TransportError):
                    assert producer.reconcile() == 6  # the snapshot holds every task
                    break
            started = time.monotonic()
            while set(got) != {b"r:" + t for t in tasks} and time.monotonic() - started < 5:
                got += producer.results(10, timeout=0.2)
                answer(consumer.fetch(10, timeout=0))  # 2 and 3 again, once their lease lapses
            assert set(got) == {b"r:" + t for t in tasks}
            assert producer.results(10, timeout=0) == []  # acknowledges the last ones
            with server.client() as client:
                assert client.llen(producer.reply_to) == 0
        finally:
            after.close()
            master.close()


def test_a_claim_flags_each_redelivery_by_its_position(open_transport: OpenTransport) -> None:
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    producer.submit([b"a", b"b", b"c", b"d"])
    first = t.consumer("first")
    a, b, c, d = first.fetch(4, timeout=1)
    assert not any(x.redelivered for x in (a, b, c, d))
    first.release([b, d])  # back to the tail, b next, each marked as redelivered
    producer.submit([b"e"])
    second = t.consumer("second")
    got = second.fetch(3, timeout=1)
    assert [(x.body, x.redelivered) for x in got] == [(b"b", True), (b"d", True), (b"e", False)]
    first.release([a, c])
    got = second.fetch(3, timeout=1)  # the set is read only while it has members
    assert [(x.body, x.redelivered) for x in got] == [(b"a", True), (b"c", True)]


def test_settle_publishes_runs_of_mixed_endings_in_order(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport()
    one, two, gone = (t.producer(t.reply_queue(job)) for job in ("one", "two", "gone"))
    gone.close()  # its master is not registered: its results are dropped
    one.submit(_bodies(9))
    consumer = t.consumer("c")
    d = consumer.fetch(9, timeout=1)
    letter = DeadLetter(body=b"x", reason="boom", queue=queue, worker="c").encode()
    consumer.settle(
        [
            Settlement(d[0], reply_to=one.reply_to, result=b"one-1"),
            Settlement(d[1], reply_to=one.reply_to, result=b"one-2"),
            Settlement(d[2], reply_to=two.reply_to, result=b"two-1"),
            Settlement(d[3], reply_to=gone.reply_to, result=b"gone-1"),
            Settlement(d[4], retry=b"now-1"),
            Settlement(d[5], retry=b"now-2"),
            Settlement(d[6], retry=b"later", retry_delay=30),
            Settlement(d[7], reply_to=one.reply_to, result=b"one-3", dead_letter=letter),
            Settlement(d[8], reply_to=two.reply_to, result=b"two-2"),
        ]
    )
    assert one.results(10, timeout=1) == [b"one-1", b"one-2", b"one-3"]
    assert two.results(10, timeout=1) == [b"two-1", b"two-2"]
    assert raw.exists(gone.reply_to) == 0
    assert raw.lrange(queue, 0, -1) == [b"now-2", b"now-1"]  # LPUSHed: now-1 runs first
    assert raw.zrange(f"distq:{queue}:delayed", 0, -1) == [b"later"]
    assert raw.lrange(f"distq:{queue}:dead", 0, -1) == [letter]
    assert raw.llen(consumer.inflight_key) == 0


def test_a_settle_acked_by_body_takes_only_those(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    producer.submit(_bodies(4))
    consumer = t.consumer("c")
    d = consumer.fetch(4, timeout=1)
    consumer.settle([Settlement(d[2], reply_to=producer.reply_to, result=b"r2"), Settlement(d[0])])
    assert sorted(raw.lrange(consumer.inflight_key, 0, -1)) == [d[1].body, d[3].body]
    consumer.settle([Settlement(d[3]), Settlement(d[1], reply_to=producer.reply_to, result=b"r1")])
    assert raw.llen(consumer.inflight_key) == 0
    assert producer.results(10, timeout=1) == [b"r2", b"r1"]


def _results(producer: RedisProducer, n: int) -> list[bytes]:
    consumer = producer._t.consumer("c")
    bodies = [f"r{i}".encode() for i in range(n)]
    producer.submit(bodies)
    got = consumer.fetch(n, timeout=1)
    consumer.settle([Settlement(d, reply_to=producer.reply_to, result=d.body) for d in got])
    consumer.close()
    return bodies


def test_a_take_whose_reply_was_lost_is_answered_again(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    sent = _results(producer, 5)
    assert producer.results(3, timeout=1) == sent[:3]
    before = producer._received
    assert producer.results(3, timeout=1) == sent[3:]
    producer._received = before  # as if that reply never came: the same results again
    assert producer.results(3, timeout=1) == sent[3:]
    assert raw.llen(producer.reply_to) == 2  # received, not acknowledged yet
    assert producer.results(3, timeout=0.1) == []  # acknowledges them
    assert raw.llen(producer.reply_to) == 0


def test_a_take_without_its_count_drops_nothing_unread(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    first = _results(producer, 2)
    assert producer.results(5, timeout=1) == first
    raw.hdel(f"{producer.reply_to}:state", "taken")  # lapsed, or restored from before it
    sent = _results(producer, 3)
    # the count 2 is adopted: the 2 received are sent again, none of the new ones dropped
    got = producer.results(10, timeout=1)
    assert got[-3:] == sent and len(got) == 5
    assert producer.results(10, timeout=0.1) == []
    assert raw.llen(producer.reply_to) == 0


def _kill_connections(raw: redis.Redis[bytes], *ends: RedisProducer | RedisConsumer) -> None:
    """Close the server side of these producers' and consumers' own connections (by their
    CLIENT ID: other tests' connections on a shared Redis carry the same names)."""
    for end in ends:
        client_id = end._w.execute_command("CLIENT", "ID")
        name = next(c.get("name") for c in raw.client_list() if int(c["id"]) == client_id)
        assert name == "distq-worker"  # the name distq gives a worker's connections
        assert raw.client_kill_filter(_id=client_id) == 1


def test_a_take_on_a_new_connection_drops_nothing_and_reads_on_from_the_servers_count(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """The master's count acks only on the connection that counted it: on a new one
    (after a dropped connection; redis-py connecting the one held again fails a call
    first), Redis may be one restarted from an older snapshot, so a take acks nothing and
    reads on from the server's count; the take after it acks by count again."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    sent = _results(producer, 3)
    assert producer.results(2, timeout=1) == sent[:2]
    assert producer.results(2, timeout=1) == sent[2:]  # acks the first 2
    _kill_connections(raw, producer)
    with pytest.raises(TransportError):
        producer.results(2, timeout=0)
    assert producer.results(2, timeout=1) == sent[2:]  # again: none acked, none dropped
    assert raw.llen(producer.reply_to) == 1
    more = _results(producer, 1)
    assert producer.results(2, timeout=1) == more  # the same connection: acks by count
    assert raw.llen(producer.reply_to) == 1
    t.client.connection_pool.disconnect()  # redis-py would connect the one held again
    with pytest.raises(TransportError):
        producer.results(2, timeout=0)
    assert producer.results(2, timeout=1) == more
    assert producer.results(2, timeout=0) == []
    assert raw.llen(producer.reply_to) == 0


def test_a_dropped_connection_fails_one_call_and_the_next_reconnects(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    producer.submit(_bodies(2))
    _kill_connections(raw, consumer, producer)
    with pytest.raises(TransportError):
        consumer.fetch(1, timeout=0)
    with pytest.raises(TransportError):
        producer.submit(_bodies(1, "more"))
    producer.submit(_bodies(1, "more"))  # a new connection, with the client's name
    (delivery,) = consumer.fetch(1, timeout=1)
    consumer.settle([Settlement(delivery, reply_to=producer.reply_to, result=b"r")])
    assert producer.results(5, timeout=1) == [b"r"]
    assert any(c.get("name") == "distq-worker" for c in raw.client_list())


def test_an_error_reply_keeps_the_connection(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport()
    consumer = t.consumer("c")
    before = consumer._w.execute_command("CLIENT", "ID")
    raw.set(queue, "not a list")
    with pytest.raises(ConfigError, match="holds a string"):  # a WRONGTYPE error reply
        consumer.fetch(1, timeout=0)
    raw.delete(queue)
    assert consumer.fetch(1, timeout=0) == []
    assert consumer._w.execute_command("CLIENT", "ID") == before  # one connection served all


def test_settle_then_fetch_settles_in_order_and_leases_the_next_batch(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    producer.submit(_bodies(5))
    consumer = t.consumer("c")
    first = consumer.fetch(2, timeout=1)
    results = [Settlement(d, reply_to=producer.reply_to, result=b"r-" + d.body) for d in first]
    nxt = consumer.settle_then_fetch(results, 2)
    assert [d.body for d in nxt] == [b"task-2", b"task-3"]
    assert not any(d.redelivered for d in nxt)
    assert sorted(raw.lrange(consumer.inflight_key, 0, -1)) == [b"task-2", b"task-3"]
    assert producer.results(5, timeout=1) == [b"r-task-0", b"r-task-1"]
    # the next ones are acked by count as usual: the consumer holds them in order
    last = consumer.settle_then_fetch([Settlement(d) for d in nxt], 5)
    assert [d.body for d in last] == [b"task-4"]
    consumer.settle([Settlement(d) for d in last])
    assert raw.llen(consumer.inflight_key) == 0 and t.stats().ready == 0
    assert consumer.settle_then_fetch([], 5) == []  # nothing to settle: no claim either


def test_settle_then_fetch_acks_by_body_when_the_in_flight_list_changed(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    producer.submit(_bodies(4))
    consumer = t.consumer("c")
    held = consumer.fetch(2, timeout=1)
    raw.execute_command("LMOVE", consumer.inflight_key, queue, "RIGHT", "RIGHT")  # a sweep
    done = [Settlement(d, reply_to=producer.reply_to, result=b"r-" + d.body) for d in held]
    nxt = consumer.settle_then_fetch(done, 3)
    # the settle by count found the list changed: the claim ran, then the acks by body.
    # task-0, taken back by the sweep, is claimed again: its task is done (its result is
    # stored), so that new delivery is acked and not handed out (it ran again: lease17)
    assert sorted(d.body for d in nxt) == [b"task-2", b"task-3"]
    assert producer.results(5, timeout=1) == [b"r-task-0", b"r-task-1"]
    assert sorted(raw.lrange(consumer.inflight_key, 0, -1)) == [b"task-2", b"task-3"]
    consumer.settle([Settlement(d) for d in nxt])
    assert raw.llen(consumer.inflight_key) == 0 and t.stats().ready == 0


def test_a_worker_runs_the_batches_its_settles_claim(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    tasks = [Task(name="square", args=[n], reply_to=producer.reply_to) for n in range(300)]
    producer.submit([task.encode() for task in tasks])
    claimed: list[int] = []
    original = RedisConsumer.settle_then_fetch

    def spy(self: RedisConsumer, settlements: Any, max_count: int, timeout: float = 0) -> Any:
        got = original(self, settlements, max_count, timeout)
        claimed.append(len(got))
        return got

    monkeypatch.setattr(RedisConsumer, "settle_then_fetch", spy)
    options = WorkerOptions(concurrency=2, exit_when_idle=0.5, worker_id="w", prefetch=16)
    out = io.StringIO()
    assert Worker(t, Registry(), options, Console(quiet=True, out=out, err=out)).run() == 0
    results = results_of(producer, 300, within=1)
    assert sorted(r.value for r in results) == sorted(n * n for n in range(300))
    assert sum(claimed) > 0  # batches came with settles, and ran
    assert t.stats().in_flight == 0 and t.stats().ready == 0


class _CountedCalls:
    """A script's stand-in that counts its direct calls (a claim of its own round trip);
    a pipelined use (``command``, ``evaluate``) goes through uncounted."""

    def __init__(self, script: Any) -> None:
        self.script, self.calls = script, 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.script(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.script, name)


def test_a_wait_after_a_claim_that_found_nothing_blocks_at_once(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a claim that found nothing (the settle's, or a wait's), the next fetch waits
    in its first round trip: no claim of its own first. A task that comes meanwhile is
    fetched; a fetch that must not wait still claims."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    producer.submit([b"first"])
    (delivery,) = consumer.fetch(1, timeout=1)
    settled = Settlement(delivery, reply_to=producer.reply_to, result=b"r")
    claims = _CountedCalls(t.claim_script)
    monkeypatch.setattr(t, "claim_script", claims)
    assert consumer.settle_then_fetch([settled], 5) == []  # its claim found nothing
    with _later(0.3, producer.submit, [b"second"]):
        (second,) = consumer.fetch(5, timeout=5)
    assert second.body == b"second" and claims.calls == 0
    consumer.settle([Settlement(second, reply_to=producer.reply_to, result=b"r2")])
    assert consumer.fetch(5, timeout=0.2) == []  # a claim of its own first, then a wait
    assert claims.calls == 1
    assert consumer.fetch(5, timeout=0.2) == []  # waits at once: the last wait found nothing
    assert claims.calls == 1
    assert consumer.fetch(5, timeout=0) == []  # no wait: a claim of its own
    assert claims.calls == 2
    assert producer.results(5, timeout=1) == [b"r", b"r2"]


def test_results_wait_from_the_first_read(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch, raw: redis.Redis[bytes]
) -> None:
    """A read that may wait blocks in its first round trip, and returns at once with the
    results already there; a read that may not wait never blocks."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    takes: list[float | None] = []
    take = producer._take

    def counted(block: float | None, max_count: int) -> list[bytes]:
        takes.append(block)
        return take(block, max_count)

    monkeypatch.setattr(producer, "_take", counted)
    assert producer.results(5, timeout=0) == []
    assert takes == [None]
    sent = _results(producer, 3)
    takes.clear()
    assert producer.results(5, timeout=2) == sent  # there already: one blocking read
    assert len(takes) == 1 and takes[0] is not None
    takes.clear()
    assert producer.results(5, timeout=0.2) == []  # nothing: blocking reads only
    assert takes and None not in takes
    raw.lpush(producer.reply_to, b"early")  # as a worker's settle pushes a result
    assert producer.results(5, timeout=2) == [b"early"]
    takes.clear()
    with _later(0.3, raw.lpush, producer.reply_to, b"late"):
        assert producer.results(5, timeout=2) == [b"late"]
    assert len(takes) == 1  # "early", received, is still in the list: it wakes no wait


def test_a_submit_and_the_wait_for_its_result_are_one_round_trip(
    open_transport: OpenTransport, raw: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone task (``--max-in-flight 1``) is pushed, counted and the take acknowledged by
    one script: 3 commands, where a transaction and the ack were 7 (issue 16); by EVAL on
    a new connection (Redis may have restarted without its scripts), then EVALSHA. More
    bodies still go in a transaction: no large batch is copied through Lua."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    state = f"{producer.reply_to}:state"
    sent = _pipelined(producer, monkeypatch)
    with _later(0.3, _answer, producer, 1):
        assert producer.submit_then_results([b"task"], 5, 2.0) == [b"r:task"]
    assert sent == [["EVAL", "BLMOVE", "LRANGE"]]
    assert t.stats().ready == 0 and t.stats().in_flight == 0
    sent.clear()
    assert producer.submit_then_results([b"later"], 5, 0.0) == []  # no wait: read what is there
    assert sent == [["EVALSHA", "LRANGE"]]
    assert t.stats().ready == 1
    assert raw.hget(state, "submitted") == b"2" and producer.reconcile() == 2
    assert raw.llen(producer.reply_to) == 0  # "r:task", received, was acknowledged
    sent.clear()
    assert producer.submit_then_results([b"x", b"y"], 5, 0.0) == []
    assert sent == [["MULTI", "LPUSH", "EVAL", "EXEC", "EVALSHA", "LRANGE"]]
    assert raw.hget(state, "submitted") == b"4" and t.stats().ready == 3


def _ran_inside(raw: redis.Redis[bytes], call: Callable[[], object]) -> dict[str, int]:
    """The commands Redis ran for ``call`` but the calls sent themselves (EVALSHA, the
    reads): those run by its scripts, by name, with how many times (commandstats)."""

    def counts() -> dict[str, int]:
        stats = raw.info("commandstats")
        return {name[8:]: int(stat["calls"]) for name, stat in stats.items()}

    before = counts()
    call()
    sent = {"evalsha", "eval", "lrange", "blmove", "info"}
    after = counts()
    ran = {name: n - before.get(name, 0) for name, n in after.items() if name not in sent}
    return {name: n for name, n in ran.items() if n}


def test_a_lone_submit_runs_four_commands_in_redis_and_keeps_its_state_s_time_to_live(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """submit.lua, once a lone task's state is there (its master registered it), pushes the
    body, reads both counts in one HMGET and writes both in one HSET, and trims the
    results received: 4 commands, where its HINCRBY, PEXPIRE, HGET, LTRIM and HSET made 6
    (issue 16: 20 µs of Lua per lone task). The state's time to live is the renewal's,
    set again only where the submit found no state (made afresh, it expires)."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    state = f"{producer.reply_to}:state"
    assert producer.submit_then_results([b"a"], 5, 0.0) == []  # by EVAL: its connection
    raw.lpush(producer.reply_to, b"r:a")
    assert producer.results(5, 0) == [b"r:a"]
    ran = _ran_inside(raw, lambda: producer.submit_then_results([b"b"], 5, 0.0))
    assert ran == {"lpush": 1, "hmget": 1, "ltrim": 1, "hset": 1}
    assert raw.hmget(state, "submitted", "taken") == [b"2", b"1"]
    assert raw.llen(producer.reply_to) == 0 and raw.pttl(state) > t.master_ttl_ms
    raw.delete(state)  # lapsed (or lost by a restart): made again, with a time to live
    assert producer.submit_then_results([b"c"], 5, 0.0) == []
    assert raw.hmget(state, "submitted", "taken") == [b"1", b"1"]
    assert t.master_ttl_ms < raw.pttl(state) <= t.master_ttl_ms + REPLY_GRACE_MS


def test_claims_in_a_row_read_the_lapsed_leases_only_when_the_clock_is_due(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """A claim read the leases that lapsed (ZRANGEBYSCORE) every time: a lone task's worker
    claims every 0.3 ms or so, ~6,000 of Redis's ~102,000 instructions in its claim
    (issue 16). Now only a claim that writes the clock (a tenth of a second since the
    last, at most) reads them: ten claims in a row read them as often as they write the
    clock (once or twice), not ten times; a lease that lapsed meanwhile is swept by the
    next claim that is due."""
    t = open_transport()
    t.producer(t.reply_queue("job")).submit(_bodies(11))
    consumer = t.consumer("c1")
    assert [d.body for d in consumer.fetch(1, 1)] == _bodies(1)  # writes the clock
    got: list[bytes] = []
    ran = _ran_inside(
        raw, lambda: got.extend(d.body for _ in range(10) for d in consumer.fetch(1, 1))
    )
    assert got == _bodies(11)[1:]
    # one read per write of the clock (a claim's only HSET), however slow the host: "< 5"
    # failed when each claim took 60 ms, the clock then due at every second one
    assert ran.get("zrangebyscore", 0) == ran.get("hset", 0), ran
    lapsed = t.consumer("c2")
    assert lapsed.fetch(5, 1) == []
    raw.lpush(f"distq:{queue}:inflight:{lapsed.consumer_id}", b"held")
    raw.zadd(t.consumers_key, {lapsed.consumer_id: 1})  # its lease ran out long ago
    _outlive_lease(raw, t, 0.0)  # the clock is due at the next claim
    assert [d.body for d in consumer.fetch(1, 1)] == [b"held"]


def test_a_take_that_finds_no_state_makes_it_with_a_time_to_live(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """Redis restarted empty (no persistence) while a master waited for its results, every
    task submitted: its next take (ack.lua) made the state afresh with its count and no
    time to live, and a master killed before its next renewal left that key for good.
    Now a take that makes the state gives it the renewal's time to live."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    state = f"{producer.reply_to}:state"
    raw.delete(state, producer.reply_to)  # Redis restarted empty: its keys are gone
    raw.zrem(t.masters_key, producer.reply_to)
    assert producer.results(5, 0) == []
    assert raw.hget(state, "taken") == b"0"
    producer.abandon()  # killed before its next renewal
    assert t.master_ttl_ms < raw.pttl(state) <= t.master_ttl_ms + REPLY_GRACE_MS


def test_a_lone_task_s_take_sends_its_script_s_keys_count_and_body_and_a_wait_of_a_slice(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands of a lone task's take, made from parts built once per producer: the
    submit script's keys, the master's reply queue and time to live, the count received
    (-1 on a new connection, by EVAL; then the count, by EVALSHA), the body; the wait's
    BLMOVE of the reply list onto itself, for a block slice at most; an ack alone."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    reply, ttl = producer.reply_to, t.master_ttl_ms
    keys = [t.ready_key, t.masters_key, reply, f"{reply}:state"]
    sent: list[list[tuple[Any, ...]]] = []
    pipeline = producer._w.pipeline

    def spy(commands: Sequence[Sequence[Any]], replies: list[Any] | None = None) -> list[Any]:
        sent.append([tuple(command) for command in commands])
        return pipeline(commands, replies)

    monkeypatch.setattr(producer._w, "pipeline", spy)
    with _later(0.3, _answer, producer, 1):
        assert producer.submit_then_results([b"task"], 1, 60.0) == [b"r:task"]
    with _later(0.05, _answer, producer, 1):
        assert producer.submit_then_results([b"next"], 1, 1.0) == [b"r:next"]
    assert producer.results(5, 0) == []
    submit, ack = t.submit_script, t.ack_script
    assert sent == [
        [
            ("EVAL", submit.source, 4, *keys, reply, ttl, -1, b"task"),
            ("BLMOVE", reply, reply, "RIGHT", "RIGHT", round(t.block_slice, 3)),
        ],
        [
            ("EVALSHA", submit.sha, 4, *keys, reply, ttl, 1, b"next"),
            ("BLMOVE", reply, reply, "RIGHT", "RIGHT", 1.0),
        ],
        [("EVALSHA", ack.sha, 4, *keys, reply, ttl, 2), ("LRANGE", reply, -5, -1)],
    ]


def test_a_wait_for_one_result_reads_it_in_the_wait_s_own_reply(
    open_transport: OpenTransport, raw: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A take of one result that may wait (a lone task's: the master waits for one) reads
    it in the BLMOVE's reply, the list's oldest: no LRANGE after it (issue 16). More
    results there (a task's second copy) wait for the next takes, in order, none dropped
    nor read twice; a take after Redis lost its scripts reads them the same way."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    sent = _pipelined(producer, monkeypatch)
    with _later(0.3, _answer, producer, 1):
        assert producer.submit_then_results([b"task"], 1, 2.0) == [b"r:task"]
    assert sent == [["EVAL", "BLMOVE"]]
    raw.lpush(producer.reply_to, b"first", b"second")  # as workers' settles push them
    sent.clear()
    assert producer.results(1, timeout=2) == [b"first"]
    assert producer.submit_then_results([b"next"], 1, 2.0) == [b"second"]
    assert sent == [["EVALSHA", "BLMOVE"], ["EVALSHA", "BLMOVE"]]
    raw.script_flush()
    raw.lpush(producer.reply_to, b"third")
    assert producer.results(1, timeout=2) == [b"third"]
    assert producer.results(1, timeout=0.2) == []
    assert producer.results(5, timeout=0) == []
    assert raw.llen(producer.reply_to) == 0  # each acknowledged once read


def test_a_collect_waiting_for_one_task_reads_its_result_in_the_wait_s_own_reply(
    open_transport: OpenTransport, raw: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collect while one task waits asks for one result, as the master's submit does:
    a master's collect after its submit's wait ran out, an executor's every wait for a
    lone future (issue 16). Asked for a batch, the BLMOVE's reply held the result and an
    LRANGE read it again. A second result there waits for the next collect, not lost."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    codec = Codec()
    collector: Collector[str] = Collector(lambda *_: None, codec=codec)
    collector.expect([("a", "a"), ("b", "b")])
    answers = [codec.seal_result(Result(i, "ok", "w", 1, 0.0, 0.0, 1)) for i in "ab"]
    raw.lpush(producer.reply_to, answers[0])
    assert collector.collect(producer, 2.0) == 1  # two wait: a batch, as before
    sent = _pipelined(producer, monkeypatch)
    raw.lpush(producer.reply_to, answers[1], answers[0])  # b, and a second copy of a
    assert collector.collect(producer, 2.0) == 1 and collector.outstanding == 0
    assert sent == [["EVALSHA", "BLMOVE"]]
    assert collector.duplicates == 0  # the copy of a waits for the next take
    assert collector.collect(producer, 0) == 0 and collector.duplicates == 1


def test_a_lone_submit_refused_or_without_its_script_pushes_and_counts_it_once(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str, tmp_path: Path
) -> None:
    """The lone task's script (``submit.lua``) pushes, counts and acknowledges all or
    nothing: refused for a queue key of another type or a full Redis (as the transaction
    was: a submit stays refused when full), the body is neither pushed nor counted;
    Redis without the script (SCRIPT FLUSH) runs it once, by EVAL."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    state = f"{producer.reply_to}:state"
    assert producer.submit_then_results([b"a"], 5, 0.0) == []  # its connection: EVALSHA next
    raw.script_flush()
    assert producer.submit_then_results([b"b"], 5, 0.0) == []
    assert raw.lrange(queue, 0, -1) == [b"b", b"a"] and raw.hget(state, "submitted") == b"2"
    raw.delete(queue)
    raw.set(queue, "not a list")
    with pytest.raises(ConfigError, match=f"Redis key '{queue}' .* holds a string"):
        producer.submit_then_results([b"c"], 5, 0.0)
    raw.delete(queue)
    assert raw.hget(state, "submitted") == b"2" and producer.reconcile() == 2
    args = ["--maxmemory", "100mb", "--maxmemory-policy", "noeviction"]
    with LocalRedis(tmp_path, extra_args=args).start() as server:
        full = open_transport(url=server.url)
        producer = full.producer(full.reply_queue("j"))
        client = server.client()
        for n in range(20):
            client.set(f"other{n}", b"z" * 50_000)
        client.config_set("maxmemory", "500kb")  # full, whatever a call frees
        try:
            with pytest.raises(TransportError, match="maxmemory"):
                producer.submit_then_results([b"d"], 5, 0.0)
            assert client.llen(queue) == 0
            assert client.hget(f"{producer.reply_to}:state", "submitted") == b"0"
        finally:
            client.close()


def _answer(producer: RedisProducer, n: int) -> None:
    """A consumer of its own takes ``n`` tasks and answers each with ``r:<body>``."""
    consumer = producer._t.consumer("answers")
    got = consumer.fetch(n, timeout=1)
    done = [Settlement(d, reply_to=producer.reply_to, result=b"r:" + d.body) for d in got]
    consumer.settle(done)
    consumer.close()


def _pipelined(
    end: RedisConsumer | RedisProducer, monkeypatch: pytest.MonkeyPatch
) -> list[list[str]]:
    """The command names of each pipeline ``end`` (a consumer or producer) sends from now on."""
    sent: list[list[str]] = []
    pipeline = end._w.pipeline

    def spy(commands: Sequence[Sequence[Any]], *rest: Any) -> list[Any]:
        sent.append([str(command[0]) for command in commands])
        return pipeline(commands, *rest)

    monkeypatch.setattr(end._w, "pipeline", spy)
    return sent


def test_a_fixed_command_is_packed_once_and_answered_as_any(
    open_transport: OpenTransport, raw: redis.Redis[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command sent again and again as it is (a consumer's claim and wait, a master's
    wait) is packed once: hiredis's packing was ~15,000 instructions for a claim. Its
    replies come in order with the others', and its bytes are redis-py's."""
    raw.rpush("fixed", b"a", b"b")
    wire = open_transport().wire()
    packed: list[str] = []
    pack = redis.connection.AbstractConnection.pack_command

    def spy(conn: Any, *args: Any) -> Any:
        packed.append(str(args[0]))
        return pack(conn, *args)

    monkeypatch.setattr(redis.connection.AbstractConnection, "pack_command", spy)
    fixed = Fixed(("LRANGE", "fixed", 0, -1))
    assert wire.pipeline([("LLEN", "fixed"), fixed]) == [2, [b"a", b"b"]]
    assert wire.pipeline([fixed, ("LINDEX", "fixed", 0)]) == [[b"a", b"b"], b"a"]
    assert wire.pipeline([fixed]) == [[b"a", b"b"]]
    assert packed == ["LLEN", "LRANGE", "LINDEX"]
    assert fixed.packed(None) == b"*4\r\n$6\r\nLRANGE\r\n$5\r\nfixed\r\n$1\r\n0\r\n$2\r\n-1\r\n"
    wire.close()


def test_a_lone_tasks_submit_and_settle_are_packed_by_their_changing_arguments_only(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone task's submit (its body, the count received) and its settle (its result,
    the counts) repeat all their other arguments, packed once: hiredis packed all of
    them each time (~57,000 instructions of a lone task's ~313,000 in both ends'
    transport, issue 16). The bytes sent are redis-py's all the same."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    sent: list[bytes] = []
    packed: list[str] = []
    pack = redis.connection.AbstractConnection.pack_command

    def spy(conn: Any, *args: Any) -> Any:
        packed.append(str(args[0]))
        return pack(conn, *args)

    for end in (producer, consumer):
        conn = end._w._connection()
        send = conn.send_packed_command

        def sends(chunks: Any, check_health: bool = True, send: Any = send) -> None:
            sent.extend(chunks)
            send(chunks, check_health)

        monkeypatch.setattr(conn, "send_packed_command", sends)
    taken: list[bytes] = []

    def submit_then_take(body: bytes) -> None:
        taken.extend(producer.submit_then_results([body], 1, 5))

    monkeypatch.setattr(redis.connection.AbstractConnection, "pack_command", spy)
    with _later(0.2, producer.submit, [b"task-0"]):
        (delivery,) = consumer.fetch(1, timeout=5)  # it waited: its settles wait too
    for i in range(1, 5):
        if i == 3:  # the heads are packed (the first submit is an EVAL): nothing more
            packed.clear()
        settled = Settlement(delivery, reply_to=producer.reply_to, result=f"r{i - 1}".encode())
        with _later(0.2, submit_then_take, f"task-{i}".encode()):
            (delivery,) = consumer.settle_then_fetch([settled], 1, timeout=5)
        assert delivery.body == f"task-{i}".encode()
    assert taken == [b"r0", b"r1", b"r2", b"r3"]  # each taken with the next task's submit
    monkeypatch.undo()
    assert packed == []  # hiredis packed each submit and settle: ["EVALSHA"] * 4
    with redis.Redis.from_url(t.settings.redis_url) as client:
        conn = client.connection_pool.get_connection()
        try:
            for data in sent:  # each send: commands as redis-py packs them
                assert data == b"".join(b"".join(conn.pack_command(*c)) for c in _commands(data))
        finally:
            client.connection_pool.release(conn)


def _commands(data: bytes) -> list[list[bytes]]:
    """The commands of a send's bytes (RESP arrays of bulk strings), for packing again."""
    out, at = [], 0
    while at < len(data):
        end = data.index(b"\r\n", at)
        count, at, args = int(data[at + 1 : end]), end + 2, []
        for _ in range(count):
            end = data.index(b"\r\n", at)
            size = int(data[at + 1 : end])
            args.append(data[end + 2 : end + 2 + size])
            at = end + 4 + size
        out.append(args)
    return out


def test_a_large_settle_goes_out_in_the_sends_redis_py_makes(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle of a 7 KB result then the wait for tasks and the claim: sent as redis-py's
    pack_commands cuts them (the settle alone, the wait and claim joined), not each
    command in a send of its own once the three pass 6,000 bytes."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    producer.submit([b"first"])
    (delivery,) = consumer.fetch(5, timeout=1)  # the ready list is empty now: a wait
    conn = consumer._w._connection()
    sends: list[list[int]] = []
    send = conn.send_packed_command

    def spy(chunks: Any, check_health: bool = True) -> None:
        sends.append([len(chunk) for chunk in chunks])
        send(chunks, check_health)

    monkeypatch.setattr(conn, "send_packed_command", spy)
    sent = _pipelined(consumer, monkeypatch)
    settled = Settlement(delivery, reply_to=producer.reply_to, result=b"r" * 7000)
    assert consumer.settle_then_fetch([settled], 5, timeout=0.2) == []
    assert sent == [["EVALSHA", "BLMOVE", "EVALSHA"]]
    assert producer.results(5, timeout=1) == [b"r" * 7000]
    (lengths,) = sends
    assert len(lengths) == 2 and lengths[0] > 7000 and lengths[1] < 6000, lengths


def test_a_settle_after_the_queue_ran_dry_waits_for_the_next_task_in_its_round_trip(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task at a time: the settle, the wait for the next task and its claim are one
    round trip (not a settle and claim, then a wait and claim)."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    producer.submit([b"first"])
    (delivery,) = consumer.fetch(5, timeout=1)  # 1 of 5: the ready list is empty now
    sent = _pipelined(consumer, monkeypatch)
    settled = Settlement(delivery, reply_to=producer.reply_to, result=b"r")
    with _later(0.3, producer.submit, [b"second"]):
        (second,) = consumer.settle_then_fetch([settled], 5, timeout=5)
    assert second.body == b"second" and not second.redelivered
    assert sent == [["EVALSHA", "BLMOVE", "EVALSHA"]]  # settle, wait, claim: one round trip
    assert producer.results(5, timeout=1) == [b"r"]
    done = Settlement(second, reply_to=producer.reply_to, result=b"r2")
    assert consumer.settle_then_fetch([done], 5, timeout=0.2) == []  # nothing came
    assert producer.results(5, timeout=1) == [b"r2"]
    assert t.stats().in_flight == 0


def test_a_slot_fetching_one_at_a_time_waits_for_the_next_task_in_its_settle(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot whose batches are one task (tasks of 5 ms or more, ``--prefetch 1``) that
    waited for its task: its settle waits for the next in the same round trip. It sent a
    settle and a claim that found nothing (the claim run before the master's result went
    out), then a wait and a claim: two round trips and two claims per lone task."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    with _later(0.3, producer.submit, [b"first"]):
        (delivery,) = consumer.fetch(1, timeout=5)  # the ready list ran dry: it waited
    sent = _pipelined(consumer, monkeypatch)
    for body in (b"second", b"third"):
        settled = Settlement(delivery, reply_to=producer.reply_to, result=b"r")
        with _later(0.3, producer.submit, [body]):
            got = consumer.settle_then_fetch([settled], 1, timeout=5)
        assert [d.body for d in got] == [body]
        (delivery,) = got
    assert sent == [["EVALSHA", "BLMOVE", "EVALSHA"]] * 2  # each one round trip
    assert producer.results(5, timeout=1) == [b"r", b"r"]


def _kill_once_blocked(raw: redis.Redis[bytes], client_id: int) -> None:
    """Close the server side of connection ``client_id`` once it waits in a blocking
    command (``b`` in its CLIENT LIST flags). A kill 0.3 s after the call began came
    before its settle was sent when this process stalled meanwhile: the settle went out
    on a dead connection, a plain TransportError."""
    deadline = time.monotonic() + 10
    while not any(int(c["id"]) == client_id and "b" in c["flags"] for c in raw.client_list()):
        assert time.monotonic() < deadline, "the connection never waited"
        time.sleep(0.01)
    raw.client_kill_filter(_id=client_id)


def test_a_connection_lost_while_a_settle_waits_still_counts_the_settle(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """The settle's reply comes in before the wait: when the connection drops during the
    wait, the caller learns that the batch was settled (a worker counts it ok), and
    that only the next lease failed; a settle whose reply never came raises as before."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    producer.submit([b"first"])
    (delivery,) = consumer.fetch(5, timeout=1)  # 1 of 5: the next settle waits
    client_id = consumer._w.execute_command("CLIENT", "ID")
    settled = Settlement(delivery, reply_to=producer.reply_to, result=b"r")
    kill = _later(0.0, _kill_once_blocked, raw, client_id)
    with kill, pytest.raises(SettledThenFailed, match="Redis at"):
        consumer.settle_then_fetch([settled], 5, timeout=5)
    assert producer.results(5, timeout=1) == [b"r"]
    assert t.stats().in_flight == 0 and consumer._held == []
    producer.submit([b"second"])
    (second,) = consumer.fetch(5, timeout=1)  # a new connection
    _kill_connections(raw, consumer)
    lost = Settlement(second, reply_to=producer.reply_to, result=b"r2")
    with pytest.raises(TransportError) as failed:
        consumer.settle_then_fetch([lost], 5, timeout=5)  # sent on a dead connection
    assert not isinstance(failed.value, SettledThenFailed)


def test_a_settle_by_body_then_a_failed_fetch_says_the_batch_was_settled(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch not the oldest held is settled by body, then fetched after: a fetch that
    failed there raised a plain TransportError, and the worker counted the settled batch
    handed back (late21 F4)."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    producer.submit([b"first", b"second"])
    first, second = consumer.fetch(2, timeout=1)

    def away(max_count: int, timeout: float) -> list[Delivery]:
        raise TransportError("Redis at 127.0.0.1: Connection reset by peer")

    monkeypatch.setattr(consumer, "fetch", away)
    settled = Settlement(second, reply_to=producer.reply_to, result=b"r2")
    with pytest.raises(SettledThenFailed, match="Connection reset"):
        consumer.settle_then_fetch([settled], 5)
    assert producer.results(5, timeout=1) == [b"r2"] and consumer._held == [first.body]


def test_a_settle_that_went_through_before_its_claim_was_refused_says_so(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """The ready list made another type between a worker's tasks: the settle goes through
    (the result is out) and the claim after it is refused. Before, the plain ConfigError
    made the worker count the batch handed back, not done (its summary said 3 ok of the
    4 results its master had)."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    producer.submit([b"first"])
    (delivery,) = consumer.fetch(5, timeout=1)
    raw.delete(queue)
    raw.set(queue, "not a list")
    settled = Settlement(delivery, reply_to=producer.reply_to, result=b"r")
    with pytest.raises(SettledThenRefused, match=f"Redis key '{queue}' .* holds a string"):
        consumer.settle_then_fetch([settled], 5, timeout=0)
    assert producer.results(5, timeout=1) == [b"r"]
    assert consumer._held == []
    raw.delete(queue)
    assert t.stats().in_flight == 0


def test_a_settle_waits_not_after_a_full_claim_nor_after_retries(
    open_transport: OpenTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    consumer = t.consumer("c")
    producer.submit(_bodies(2))
    batch = consumer.fetch(2, timeout=1)  # 2 of 2: more may wait, and retries are unknown
    sent = _pipelined(consumer, monkeypatch)
    done = [Settlement(d, reply_to=producer.reply_to, result=d.body) for d in batch]
    assert consumer.settle_then_fetch(done, 2, timeout=5) == []
    assert sent == [["EVALSHA", "EVALSHA"]]  # settle and claim, no wait
    producer.submit([b"flaky"])
    (flaky,) = consumer.fetch(5, timeout=1)  # the ready list ran dry
    sent.clear()
    retry = Settlement(flaky, retry=b"flaky-2", retry_delay=30.0)
    assert consumer.settle_then_fetch([retry], 5, timeout=5) == []
    assert sent == [["EVALSHA", "EVALSHA"]]  # a batch with a retry: no wait either


def test_a_settle_waits_no_longer_than_until_the_next_retry_is_due(
    open_transport: OpenTransport,
) -> None:
    """A wait ends when a delayed retry is due (the claim after it takes the retry), not
    at the end of the block: nothing else would wake it."""
    t = open_transport(lease=30.0)  # blocks of 5 s
    producer = t.producer(t.reply_queue("j"))
    other, consumer = t.consumer("other"), t.consumer("c")
    producer.submit([b"flaky"])
    (flaky,) = other.fetch(1, timeout=1)
    # due in 1.5 s: with 1 s, this process stalling a second before the claim below
    # found it due, and claimed it with the task
    other.settle([Settlement(flaky, retry=b"flaky-2", retry_delay=1.5)])
    producer.submit([b"task"])
    (task,) = consumer.fetch(5, timeout=1)  # its claim saw the retry due in about 1.5 s
    started = time.monotonic()
    done = Settlement(task, reply_to=producer.reply_to, result=b"r")
    got = consumer.settle_then_fetch([done], 5, timeout=10)
    assert [d.body for d in got] == [b"flaky-2"]
    assert time.monotonic() - started < 4.0  # well before the 5 s block would have ended


def test_a_lapse_found_by_a_calls_own_renewal_makes_the_next_reconcile_hold_none(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A producer's registration lapsed (its thread held up past master_ttl) and the
    next submit's own renewal re-registered it, restarting the count: the bodies counted
    since are not the first of the sequence. Before, the next reconcile said they were
    (2 held of 5): an executor then took the oldest tasks as held, and sent the newest
    again. Now it says none, and the count restarts in step with the caller."""
    transport = open_transport()
    producer = transport.producer(transport.reply_queue("lapsing"))
    producer.submit(_bodies(3))
    assert producer.reconcile() == 3
    raw.zrem(transport.masters_key, producer.reply_to)  # the registration lapses
    producer._renew_at = 0.0  # the next call renews it first, as when one is due
    producer.submit(_bodies(2, "after"))
    assert producer.reconcile() == 0
    producer.submit(_bodies(1, "again"))
    assert producer.reconcile() == 1  # counted from the restart
    producer.close()


def test_a_reconcile_after_a_lapse_makes_a_lost_state_with_a_time_to_live(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A call's own renewal found the registration lapsed, and the state then went (a
    maxmemory volatile-* policy evicts it: it has a time to live) before the next
    reconcile, whose reset of the count (HSET) made the state afresh without one: a
    master killed before its next renewal left that key for good. Now it gets ack.lua's
    time to live."""
    transport = open_transport()
    producer = transport.producer(transport.reply_queue("lapsing"))
    state = f"{producer.reply_to}:state"
    producer.submit(_bodies(3))
    raw.zrem(transport.masters_key, producer.reply_to)  # the registration lapses
    producer._renew_at = 0.0  # the next call renews it first, as when one is due
    producer.submit(_bodies(2, "after"))
    raw.delete(state)  # evicted
    assert producer.reconcile() == 0
    producer.abandon()  # killed before its next renewal
    assert raw.hget(state, "submitted") == b"0"
    ttl = transport.master_ttl_ms
    assert ttl < raw.pttl(state) <= ttl + REPLY_GRACE_MS, raw.pttl(state)


def test_a_redis_url_at_an_amqp_port_says_so_not_tls() -> None:
    """An AMQP broker answers anything with its protocol header: "Protocol error, got "A""
    came with a hint to use rediss:// (drift10)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer() -> None:
            for _ in range(4):  # bounded: each connection attempt of the client
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(1024)
                    conn.sendall(b"AMQP\x00\x00\x09\x01")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        server.settimeout(10)
        settings = Settings(transport="redis", redis_url=f"redis://127.0.0.1:{port}/0")
        with pytest.raises(ConnectionFailed) as caught:
            RedisTransport(settings, "worker").stats()
    said = str(caught.value)
    assert said.startswith(f"cannot reach Redis at 127.0.0.1:{port} (DISTQ_REDIS_URL): "), said
    assert said.endswith(
        "is that port Redis's? It answers as an AMQP broker (RabbitMQ) does: check "
        "DISTQ_TRANSPORT and DISTQ_REDIS_URL"
    ), said


def test_a_lapsed_lease_swept_onto_a_ready_key_made_another_type_loses_no_task(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """The sweep deleted the in-flight list of a lease that ran out (a worker killed),
    then its push onto the ready key failed (WRONGTYPE), and a script's error undoes
    nothing: the tasks were neither leased nor ready, lost once the key was set right.
    A release and a close met the same: the bodies left the in-flight list first."""
    t = open_transport(lease=0.5)
    t.producer("r").submit(_bodies(4))
    killed = t.consumer("killed")
    assert len(killed.fetch(2, timeout=1)) == 2
    held = t.consumer("held")
    kept = held.fetch(2, timeout=1)
    raw.set(queue, "not a list")
    _outlive_lease(raw, t)
    with pytest.raises(ConfigError, match=f"Redis key '{queue}'"), t.errors():
        t.sweep(t.client)  # as a master's idle wait, or any claim
    assert sorted(raw.lrange(killed.inflight_key, 0, -1)) == _bodies(2)
    with pytest.raises(ConfigError, match=f"Redis key '{queue}'"):
        held.release(kept[:1])
    with contextlib.suppress(ConfigError):
        held.close()
    assert sorted(raw.lrange(held.inflight_key, 0, -1)) == _bodies(4)[2:]
    raw.delete(queue)
    _outlive_lease(raw, t)
    t.sweep(t.client)
    assert sorted(raw.lrange(queue, 0, -1)) == _bodies(4)


def test_a_worker_keeps_long_tasks_leased_without_an_outage_under_an_idle_timeout(
    tmp_path: Path,
) -> None:
    """The keeper renews long tasks' leases on a connection of its own, which lies idle
    between long tasks: a Redis with ``timeout`` (idle clients closed, as managed Redis
    and proxies do) closed it, the next renewal failed on it, and the worker said it lost
    the broker and reconnected, twice a long task, though Redis never went away."""
    with LocalRedis(tmp_path, extra_args=["--timeout", "1"]).start() as server:
        target = _redis_target(server.url).fresh(lease_seconds=1.5)
        settings = target.settings
        t = RedisTransport(settings, "master")
        producer = t.producer(t.reply_queue("idle"))
        codec = Codec.from_settings(settings)
        worker = Distq(["worker", "--tasks", "jobs"], target.process_env())
        try:
            for n in range(2):
                task = Task(name="jobs:sleep_then", args=[1.2, n], reply_to=producer.reply_to)
                producer.submit([codec.seal_task(task)])
                got: list[bytes] = []
                deadline = time.monotonic() + 15
                while not got and time.monotonic() < deadline:
                    got = producer.results(1, 1)
                assert got, worker.output()
                # the worker idle: Redis closes the keeper's connection (not this one's,
                # blocked in its wait, nor the slot's)
                assert producer.results(1, 2.5) == []
            worker.signal(signal.SIGTERM)
            assert worker.wait(20) == 0
            out = worker.output()
        finally:
            worker.stop()
            producer.close()
            t.close()
    assert "reconnect" not in out and "lost" not in out, out


def test_a_claim_or_withdraw_meeting_a_redelivered_set_made_another_type_moves_no_task(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """The claim moved tasks into the in-flight list before its SCARD of the redelivered
    set failed (WRONGTYPE): the consumer never learnt it held them. A withdraw took a
    body out of the ready list before its SREM failed: the caller was told it failed,
    and its task was gone all the same (a script's error undoes none of its writes)."""
    t = open_transport()
    producer = t.producer(t.reply_queue("job"))
    consumer = t.consumer("c")
    producer.submit(_bodies(12))
    raw.set(f"distq:{queue}:redelivered", "not a set")
    with pytest.raises(ConfigError, match=f"Redis key 'distq:{queue}:redelivered'"):
        consumer.fetch(2, timeout=0)
    assert raw.llen(consumer.inflight_key) == 0
    for bodies in (_bodies(1), _bodies(40)):  # one LREM each; a pass that marks them
        with pytest.raises(ConfigError, match=f"Redis key 'distq:{queue}:redelivered'"):
            producer.withdraw(bodies)
    assert sorted(raw.lrange(queue, 0, -1)) == sorted(_bodies(12))
    raw.delete(f"distq:{queue}:redelivered")
    assert [d.body for d in consumer.fetch(12, timeout=1)] == _bodies(12)


def _calls(raw: redis.Redis[bytes], *commands: str) -> int:
    """How many times Redis ran ``commands`` so far, from Lua scripts too (commandstats)."""
    stats = raw.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands)


def test_a_withdraw_of_many_bodies_takes_them_out_without_rebuilding_the_ready_list(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """Over 8 bodies, withdraw.lua read the whole ready list into Lua, deleted it and
    pushed every other task back: 9 tasks withdrawn of a million queued held Redis (every
    worker and master) about 2 s. Now a few bodies are one LREM each, and many are marked
    in place as a read from the head finds them (it stops once all are found), then
    removed in one LREM: the other tasks are never pushed again, and keep their order."""
    t = open_transport()
    producer = t.producer(t.reply_queue("job"))
    queued = _bodies(5000)
    for start in range(0, len(queued), 1000):
        producer.submit(queued[start : start + 1000])
    raw.sadd(t.redelivered_key, queued[10], queued[4990])
    for take in (queued[-9:], [queued[10], queued[4990], *queued[-60:-20]]):
        before = _calls(raw, "rpush", "del")
        asked = [*take, take[0], b"never-sent"]  # a body twice: taken once, it is queued once
        assert producer.withdraw(asked) == [True] * len(take) + [False, False]
        assert _calls(raw, "rpush", "del") == before  # the others were not pushed again
    gone = {queued[10], queued[4990], *queued[-60:-20], *queued[-9:]}
    left = [body for body in queued if body not in gone]
    assert raw.lrange(queue, 0, -1) == left[::-1]  # the newest first, in order
    assert raw.smembers(t.redelivered_key) == set()
    twice = [b"dup", b"dup", *_bodies(40, "x")]
    producer.submit(twice)
    assert producer.withdraw([b"dup", *_bodies(40, "x"), b"dup", b"dup"]) == [True] * 42 + [False]
    assert raw.llen(queue) == len(left)


def _idle_dropped(raw: redis.Redis[bytes], consumer: RedisConsumer) -> None:
    """The server drops the consumer's connection (Redis's idle ``timeout``, a restart, a
    proxy), then the consumer's tasks run a while: nothing is sent on it meanwhile."""
    mine = consumer._w.execute_command("CLIENT", "ID")
    assert raw.client_kill_filter(_id=mine) == 1
    time.sleep(1.2)


def test_a_hand_back_after_a_long_task_goes_out_on_a_live_connection(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """The keeper hands back a long batch's tasks not started on the slot's connection,
    idle while the task ran (the keeper renews leases on its own). The release went out
    on the dead connection without the settle's idle check: it failed, the worker said
    the broker was lost ("reconnecting"), then reconnected, and the tasks waited for
    the keeper's next tick."""
    t = open_transport()
    producer = t.producer(t.reply_queue("idle"))
    producer.submit([b"long", b"next", b"other"])
    consumer = t.consumer("c1")
    _, *rest = consumer.fetch(3, timeout=1)
    _idle_dropped(raw, consumer)
    assert consumer.release(rest) == 2
    other = t.consumer("c2")
    assert sorted(d.body for d in other.fetch(5, timeout=1)) == [b"next", b"other"]


def test_a_look_at_a_master_after_a_long_task_goes_out_on_a_live_connection(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A slot asks whether a master is gone before it runs the first task of that
    master's in a batch, on its connection, idle while the tasks before it ran: sent on
    a dead one, the look failed, and the batch stopped (its rest handed back, a lost
    broker said) though Redis was there all along."""
    t = open_transport()
    producer = t.producer(t.reply_queue("idle"))
    producer.submit([b"long", b"next"])
    consumer = t.consumer("c1")
    consumer.fetch(2, timeout=1)
    _idle_dropped(raw, consumer)
    assert consumer.gone([producer.reply_to, t.reply_queue("never")]) == {t.reply_queue("never")}


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "killed"])
def test_a_task_a_blmove_took_before_its_claim_failed_runs_again(
    open_transport: OpenTransport, raw: redis.Redis[bytes], closed: bool
) -> None:
    """The wait's BLMOVE moves a task into the in-flight list, and the claim script after
    it leases it: if that script fails, the consumer never learns it holds the task. The
    worker drops a consumer whose call failed, and its close puts the task back; a worker
    killed there leaves it to its lease, which the sweep takes back. The task is queued
    before that fetch, whose BLMOVE takes it at once: one sent 0.1 s into the wait came
    after the BLMOVE's block slice (a third of the lease) when this process stalled
    0.4 s, and the test found the task still queued."""
    t = open_transport(lease=1.0)
    producer = t.producer(t.reply_queue("job"))
    consumer = t.consumer("c1")
    assert consumer.fetch(1, timeout=0) == []  # leased, found nothing: the next one BLMOVEs
    t.claim_script = Script("return redis.error_reply('the claim failed')")
    producer.submit([b"moved"])
    with pytest.raises(TransportError, match="the claim failed"):
        consumer.fetch(1, timeout=0.3)
    assert raw.lrange(consumer.inflight_key, 0, -1) == [b"moved"]
    if closed:
        consumer.close()
    other = open_transport(lease=1.0).consumer("c2")
    # killed: the lease lapses in a second; a stall that the sweep takes for a frozen
    # Redis gives it its time again (a 1.7 s one ran a 3 s wait out)
    got = other.fetch(1, timeout=0.5 if closed else 10)
    assert [(d.body, d.redelivered) for d in got] == [(b"moved", True)]


def test_a_hand_back_on_a_connection_gone_silent_goes_out_on_a_new_one_within_the_lease(
    open_transport: OpenTransport, redis_url: str
) -> None:
    """A slot's connection, idle while its task ran, that went silent meanwhile (no RST:
    a NAT's state lost, a vanished host) held the idle check's PING before the keeper's
    hand-back for the connection's whole socket timeout (a block slice + 5 s: 6.7 s,
    longer than the 5 s lease; before the check, the hand-back itself, which then
    failed): the keeper, one thread for all the slots, renewed no lease meanwhile, and
    every running task's lease lapsed. The PING now waits a second at most for its
    answer, then the call goes out on a new connection. A settle likewise."""
    relay = SilentRelay.to_url(redis_url)
    try:
        t = open_transport(lease=5.0, url=relay.url)
        producer = t.producer(t.reply_queue("silent"))
        producer.submit([b"long", b"next", b"other"])
        consumer = t.consumer("c1")
        _, *rest = consumer.fetch(3, timeout=1)
        relay.silence()
        time.sleep(1.2)  # the task runs
        started = time.monotonic()
        assert consumer.release(rest) == 2
        # within the 5 s lease with a second to spare (it took 6.7 s): a stall of this
        # process adds to the second the PING waits
        assert time.monotonic() - started < 4.0
        other = open_transport(lease=5.0).consumer("c2")
        assert sorted(d.body for d in other.fetch(5, timeout=1)) == [b"next", b"other"]
    finally:
        relay.close()


def test_a_close_after_a_long_task_hands_back_on_a_live_connection(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A cold stop closes the consumer under a running batch, whose connection lay idle
    while the task ran. On one Redis dropped meanwhile (its idle `timeout`, a restart, a
    proxy's) the close failed (said at debug level only): the tasks it was to hand back
    at once waited for their lease to lapse instead."""
    t = open_transport(lease=30.0)
    producer = t.producer(t.reply_queue("idle"))
    producer.submit([b"long", b"next"])
    consumer = t.consumer("c1")
    consumer.fetch(2, timeout=1)
    _idle_dropped(raw, consumer)
    consumer.close()
    other = t.consumer("c2")
    assert sorted(d.body for d in other.fetch(5, timeout=0.5)) == [b"long", b"next"]


@contextlib.contextmanager
def _calling(call: Callable[[], object], every: float = 0.2) -> Iterator[None]:
    """Make ``call`` every ``every`` s in a thread while the block runs: the rest of a
    live system calling Redis (a Redis nobody calls for half a lease is taken for a
    frozen one: the leases that ran out meanwhile get their time back)."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            call()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)


def test_a_renewal_on_a_connection_gone_silent_in_use_is_made_again_within_the_lease(
    open_transport: OpenTransport, redis_url: str
) -> None:
    """The keeper renews every slot's lease on a connection of its own, used each
    interval, so never idle long enough for the PING check. One that went silent while in
    use (no RST: a NAT's state lost, a partition) held the renewal for the connection's
    whole socket timeout (a block slice + 5 s: 6.7 s, past the 5 s lease): the leases of
    tasks still running lapsed, and another worker's claim took them (they ran twice).
    A renewal now waits a third of the lease for its answer (1 s at least), then fails,
    and the keeper's next try, a tick later, goes out on a new connection."""
    relay = SilentRelay.to_url(redis_url)
    try:
        t = open_transport(lease=5.0, url=relay.url)
        t.producer(t.reply_queue("silent")).submit([b"long"])
        consumer = t.consumer("c1")
        assert [d.body for d in consumer.fetch(1, timeout=1)] == [b"long"]
        t.heartbeat([consumer])  # the keeper's connection, in use
        renewed = time.monotonic()
        relay.silence()
        time.sleep(1.0)  # the next renewal, an interval later: too soon for a check
        live = open_transport(lease=5.0)  # the rest of the system calls on meanwhile
        with _calling(lambda: live.sweep(live.client)):
            started = time.monotonic()
            with pytest.raises(TransportError):
                t.heartbeat([consumer])
            took = time.monotonic() - started
        other = live.consumer("c2")  # a worker claiming meanwhile
        assert other.fetch(1, timeout=0) == [], f"the renewal failed after {took:.1f} s"
        t.heartbeat([consumer])  # the keeper's next tick, on a new connection
        # within the lease with a second to spare (a stall of this process adds to it)
        assert time.monotonic() - renewed < 4.0
        assert other.fetch(1, timeout=0) == []
    finally:
        relay.close()


@pytest.mark.parametrize("call", ["settle", "release"])
def test_a_consumer_call_on_a_connection_gone_silent_in_use_fails_within_the_lease(
    open_transport: OpenTransport, redis_url: str, call: str
) -> None:
    """A settle or a hand-back on a slot's connection that went silent while in use (a
    call less than a second before: no PING check) waited the whole socket timeout (6.7
    s with the 5 s lease). The keeper makes both for a long batch (its hand-back), in
    its one thread: meanwhile it renewed no slot's lease, and every running task's lapsed.
    Each call now waits a third of the lease for its answer (1 s at least); the next one
    goes out on a new connection."""
    relay = SilentRelay.to_url(redis_url)
    try:
        t = open_transport(lease=5.0, url=relay.url)
        producer = t.producer(t.reply_queue("silent"))
        producer.submit([b"ran", b"next"])
        consumer = t.consumer("c1")
        ran, rest = consumer.fetch(2, timeout=1)
        relay.silence()
        started = time.monotonic()
        with pytest.raises(TransportError):
            if call == "settle":
                consumer.settle([Settlement(ran, reply_to=producer.reply_to, result=b"r")])
            else:
                consumer.release([rest])
        took = time.monotonic() - started
        assert took < 3.0  # 5/3 s, and a stall of this process
        if call == "settle":
            consumer.settle([Settlement(ran, reply_to=producer.reply_to, result=b"r")])
        else:
            assert consumer.release([rest]) == 1
    finally:
        relay.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command", ["status", "dead-letters", "requeue-dead"])
def test_a_command_against_a_redis_that_does_not_answer_exits_3_within_a_bound(
    tmp_path: Path, command: str
) -> None:
    """A paused Redis (connections taken, nothing answered): each call waits its socket
    timeout (a third of the lease + 5 s) for an answer, twice at most as the transport
    starts (INFO's silence is forgiven: an ACL may forbid it), then one line, exit 3, as
    the README says."""
    with LocalRedis(tmp_path).start() as server:
        target = _redis_target(server.url)
        server.client().rpush(f"distq:{target.settings.queue}:dead", b"raw")
        server.pause()
        try:
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "distq", command],
                env=target.process_env(),
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            took = time.monotonic() - started
        finally:
            server.resume()
        assert done.returncode == 3, done.stderr
        assert "cannot reach Redis at 127.0.0.1:" in done.stderr, done.stderr
        assert "Timeout reading" in done.stderr and "Traceback" not in done.stderr
        assert took < 2 * (target.settings.lease_seconds / 3 + 5) + 10  # a process's start
        assert server.client().llen(f"distq:{target.settings.queue}:dead") == 1


@pytest.mark.timeout(60)
def test_requeue_dead_on_a_redis_that_stops_answering_half_way_says_so_within_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis paused after the first batch of letters moved: the next call waits its socket
    timeout, then the command says how many moved. It said the rest stayed dead letters,
    but Redis ran the call it had read once it answered again: the letters of that call
    moved too (none lost, none twice), and `dead-letters` showed fewer than it said."""
    with LocalRedis(tmp_path).start() as server:
        settings = Settings(transport="redis", redis_url=server.url, queue="hung")
        server.client().rpush(
            "distq:hung:dead", *[b"raw %d" % n for n in range(MESSAGE_BATCH * 3 // 2)]
        )
        made, paused = commands.reviver, [0.0]

        def pausing(*args: Any, **kwargs: Any) -> Any:
            revive, calls = made(*args, **kwargs), [0]

            def revive_then_pause(letter: DeadLetter) -> bytes:
                calls[0] += 1
                if calls[0] == MESSAGE_BATCH + 1:  # the second batch
                    server.pause()
                    paused[0] = time.monotonic()
                return revive(letter)

            return revive_then_pause

        monkeypatch.setattr(commands, "reviver", pausing)
        err = io.StringIO()
        args = argparse.Namespace(role="requeue-dead", limit=None)
        try:
            assert commands.run(args, settings, Console(out=io.StringIO(), err=err)) == 3
            took = time.monotonic() - paused[0]
        finally:
            server.resume()
        said = err.getvalue()
        assert "Timeout reading" in said, said
        assert f"; {MESSAGE_BATCH:,} dead letters were requeued before that" in said, said
        # Redis ran the call it had read once it answered again: those moved too
        cut = f"(the {MESSAGE_BATCH // 2} of the call it cut off may have been too)"
        assert cut in said, said
        assert took < settings.lease_seconds / 3 + 5 + 3
        client = server.client()
        assert client.llen("distq:hung:dead") in (0, MESSAGE_BATCH // 2)  # one or the other
        assert client.llen("distq:hung:dead") + client.llen("hung") == MESSAGE_BATCH * 3 // 2


def test_a_redis_that_does_not_answer_the_flags_check_is_not_taken_for_redis_6(
    open_transport: OpenTransport,
    redis_url: str,
    raw: redis.Redis[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the transport starts it asks Redis whether it runs a script flagged allow-oom
    (Redis 7; 6.2 refuses the flags line). Any failure was taken for "no": a Redis that
    did not answer that one call (stalled, a link gone silent) had every script of that
    process sent without the flag, the wedge when full (master and workers waiting for
    good), with nothing said. The transport now fails to start as for any broker that
    does not answer (ConnectionFailed: --connect-timeout tries again)."""
    if int(str(raw.info("server")["redis_version"]).split(".")[0]) < 7:
        pytest.skip("allow-oom scripts need Redis 7")
    relay = SilentRelay.to_url(redis_url)
    checked = RedisTransport.check_types

    def then_silent(self: RedisTransport, wire: Any) -> None:
        checked(self, wire)
        relay.silence()  # the connection the flags check goes out on

    monkeypatch.setattr(RedisTransport, "check_types", then_silent)
    try:
        try:
            flagged: bool | None = open_transport(url=relay.url).claim_script.source.startswith(
                ALLOW_OOM
            )
        except ConnectionFailed as exc:
            flagged, said = None, str(exc)
        assert flagged is None, f"it opened, its scripts flagged allow-oom: {flagged}"
        assert said.startswith("cannot reach Redis at 127.0.0.1:") and "Timeout" in said, said
    finally:
        relay.close()


@pytest.mark.parametrize("batch", [1, 2])
def test_tasks_a_snapshot_restores_under_a_live_consumer_it_no_longer_holds_come_back(
    tmp_path: Path, batch: int
) -> None:
    """Redis restarts from a snapshot taken while a slot held tasks it settled since (their
    results, pushed after it, lost with the restart). The slot, in a long task, keeps its
    consumer: its idle link is made again by the check, not failed, so its name stays, and
    the restored in-flight list under it held those tasks. A batch of another length: they
    stayed there, leased by each claim of the slot, for as long as it lived (never run
    again: its master waited until --timeout); of the same length: acked by count in place
    of the batch it held, which ran again. A call on a new connection now first puts back
    what the consumer does not hold."""
    with LocalRedis(tmp_path) as server, _master_and_worker(server) as (settings, master, worker):
        producer = master.producer(master.reply_queue("j"))
        producer.submit([b"a1", b"a2", b"b1", b"b2"])
        consumer = worker.consumer("w-0")
        first = consumer.fetch(2, timeout=1)
        assert [d.body for d in first] == [b"a1", b"a2"]
        with server.client() as client:
            client.save()  # the snapshot: a1, a2 in the consumer's in-flight list
        consumer.settle(
            [Settlement(d, reply_to=producer.reply_to, result=d.body + b"!") for d in first]
        )
        then = consumer.fetch(batch, timeout=1)  # a long task: the slot's link idles
        server.kill()
        server.restart()  # from the snapshot: the results of a1, a2 never read
        time.sleep(1.1)  # idle past the check: the settle goes out on a new connection
        consumer.settle(
            [Settlement(d, reply_to=producer.reply_to, result=d.body + b"!") for d in then]
        )
        got: list[bytes] = []
        deadline = time.monotonic() + 4 * settings.lease_seconds
        while time.monotonic() < deadline and not {b"a1", b"a2"} <= set(got):
            got += [d.body for d in consumer.fetch(4, timeout=0.2)]
        got += [d.body for d in consumer.fetch(4, timeout=0.2)]
        assert sorted(got) == [b"a1", b"a2", *([b"b2"] if batch == 1 else [])]


def test_a_settle_redis_lost_the_script_of_runs_after_its_wait_by_body(tmp_path: Path) -> None:
    """Redis restarts from a snapshot taken before a slot's last claim (the task queued
    there, the slot's in-flight list empty) and loses its scripts. The slot's settle rides
    with a wait for the next task (settle_then_fetch): it met NOSCRIPT and ran again after
    the wait, whose BLMOVE had taken the task's restored copy into that list. The list was
    then as long as the batch settled, and the count of claims the same (the claim after
    the wait met NOSCRIPT too): the settle acked by count the copy the wait had just
    taken, and the slot was handed that copy to run again, in no in-flight list (a retry
    of it was found late, not sent; a worker killed meanwhile lost it; a task other than
    the copy, there, was lost so). A settle Redis did not run acks by body, as after any
    claim: the copy is the task done, acked, and not handed out."""
    with LocalRedis(tmp_path) as server, _master_and_worker(server) as (_, master, worker):
        producer = master.producer(master.reply_queue("j"))
        producer.submit([b"task"])
        consumer = worker.consumer("w-0")
        consumer.heartbeat()  # leased, holding nothing
        with server.client() as client:
            client.save()  # the snapshot: the task queued
        (delivery,) = consumer.fetch(2, timeout=1)  # fewer than asked: its settle waits
        server.kill()
        server.restart()  # from the snapshot, without the scripts
        time.sleep(1.1)  # idle past the check: the settle goes out on a new connection
        done = Settlement(delivery, reply_to=producer.reply_to, result=b"ok")
        assert consumer.settle_then_fetch([done], 2, timeout=0.5) == []
        with server.client() as client:
            assert client.llen(consumer.inflight_key) == 0 and client.llen("q") == 0
            assert client.lrange(producer.reply_to, 0, -1) == [b"ok"]


def test_errors_translates_redis_errors_and_passes_the_rest(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """``errors()`` (a class since every call of a lone task's round trip made a generator
    of it) says what redis-py raised in distq's terms, and leaves any other error as it is."""
    t = open_transport()
    raw.set(queue, "not a list")
    with pytest.raises(ConfigError, match=f"Redis key '{queue}'"), t.errors():
        raw.lpush(queue, b"x")  # WRONGTYPE: the key was made another type
    raw.delete(queue)
    with pytest.raises(ConfigError, match="does not know a command distq uses"), t.errors():
        raw.execute_command("NOSUCHCOMMAND")
    with pytest.raises(TransportError, match=f"^Redis at {t.address}: lost") as caught, t.errors():
        raise redis.ConnectionError("lost")
    assert type(caught.value) is TransportError and caught.value.__suppress_context__
    with pytest.raises(KeyError), t.errors():
        raise KeyError("not redis's")
    with t.errors():
        assert raw.ping()  # nothing raised: nothing said


def test_stats_counts_a_lapsed_lease_as_ready_not_in_flight(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A worker SIGKILLed with tasks leased: ``distq status`` (and the master's queue depth
    by state) showed them in flight until a claim or sweep moved them back, though their
    lease had lapsed and they wait to run again. The slot that holds a live lease still
    counts its tasks in flight, and stats moves nothing (a sweep does). The lapsed lease's
    tasks count as redelivered (a worker had them) before the sweep as after it: a master
    past its --timeout reads that a worker took its tasks, not to check its queue names."""
    t = open_transport(lease=0.5)
    t.producer(t.reply_queue("j")).submit(_bodies(3))
    dead, live = t.consumer("dead"), open_transport(lease=30).consumer("live")
    assert len(dead.fetch(2, timeout=1)) == 2  # then dropped, never settled nor closed
    assert len(live.fetch(1, timeout=1)) == 1
    assert t.stats().redelivered == 0
    _outlive_lease(raw, t)
    assert raw.llen(dead.inflight_key) == 2  # not swept yet
    stats = t.stats()
    assert (stats.ready, stats.in_flight, stats.consumers, stats.redelivered) == (2, 1, 1, 2)
    assert raw.llen(dead.inflight_key) == 2  # stats swept nothing
    t.sweep(t.client)
    after = t.stats()
    assert (after.ready, after.in_flight, after.consumers, after.redelivered) == (2, 1, 1, 2)
    assert raw.llen(dead.inflight_key) == 0


def test_stats_tells_when_the_last_live_lease_holding_tasks_ends(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A master past a --timeout shorter than a SIGKILLed worker's lease found its slot
    attached (the lease live) and said nothing of it: stats tells, by the consumers'
    deadlines, when the last live lease holding a task ends; a lapsed one's, or one that
    holds nothing, does not count."""
    t = open_transport(lease=0.5)
    t.producer(t.reply_queue("j")).submit(_bodies(2))
    assert t.stats().lease_left is None
    dead = t.consumer("dead")
    assert len(dead.fetch(1, timeout=1)) == 1  # then dropped, never settled nor closed
    live = open_transport(lease=30).consumer("live")
    assert len(live.fetch(1, timeout=1)) == 1
    left = t.stats().lease_left
    assert left is not None and 28 < left <= 30, left
    assert len(open_transport(lease=100).consumer("empty").fetch(1, timeout=0.1)) == 0
    left = t.stats().lease_left
    assert left is not None and 28 < left <= 30, left
    live.close()  # handed back: no live lease holds a task; the dead one lapses
    _outlive_lease(raw, t)
    assert t.stats().lease_left is None


def test_two_deliveries_of_one_lapsed_task_settled_by_body_publish_one_retry(
    open_transport: OpenTransport, raw: redis.Redis[bytes]
) -> None:
    """A consumer held a task whose lease lapsed, then claimed its copy: two deliveries of
    one task, one of them in its in-flight list. Settled with a retry each, by body, both
    retries went out (the gate found the body held for each): one task queued twice. Two
    tasks of equal bodies both held are two tasks, and both retry."""
    t = open_transport(lease=0.5)
    t.producer(t.reply_queue("j")).submit([b"task"])
    consumer = t.consumer("c")
    (first,) = consumer.fetch(1, timeout=1)
    _outlive_lease(raw, t)
    t.sweep(t.client)  # the lapsed lease goes back
    (copy,) = consumer.fetch(1, timeout=1)
    assert copy.body == b"task" and raw.lrange(consumer.inflight_key, 0, -1) == [b"task"]
    consumer.settle([Settlement(d, retry=b"retry") for d in (first, copy)])
    assert raw.lrange(t.ready_key, 0, -1) == [b"retry"]
    assert raw.llen(consumer.inflight_key) == 0 and consumer.late == {b"task"}
    # two tasks of one body, both held: both retry
    raw.delete(t.ready_key)
    t.producer(t.reply_queue("j")).submit([b"twin", b"twin"])
    twins = consumer.fetch(2, timeout=1)
    assert [d.body for d in twins] == [b"twin", b"twin"]
    consumer.settle([Settlement(d, retry=b"again") for d in reversed(twins)])
    assert raw.lrange(t.ready_key, 0, -1) == [b"again", b"again"]
    assert raw.llen(consumer.inflight_key) == 0 and not consumer.late


def test_a_master_waiting_on_a_wrong_typed_key_for_one_leased_task_says_it_in_the_singular(
    open_transport: OpenTransport,
    raw: redis.Redis[bytes],
    queue: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It said "waiting for the 1 tasks leased to workers"."""
    t = open_transport()
    producer = t.producer(t.reply_queue("j"))
    producer.submit(_bodies(1))
    worker = t.consumer("w")
    assert len(worker.fetch(1, timeout=1)) == 1
    raw.delete(queue)
    raw.set(queue, "hello")
    with caplog.at_level("WARNING"):
        assert producer.reconcile() == 1  # its lease is live: the master waits for it
    said = [r.getMessage() for r in caplog.records if "leased to" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("; waiting for the 1 task leased to a worker")
    raw.delete(queue)


def test_a_master_stops_on_a_wrong_typed_key_though_a_dead_worker_held_tasks(
    open_transport: OpenTransport, raw: redis.Redis[bytes], queue: str
) -> None:
    """A queue key made another type stops a master once no task is leased: the workers
    finish theirs. A worker SIGKILLed before it, holding tasks, left an in-flight list
    that no sweep can move back (the ready list is of another type), and the master
    counted it leased: it waited for those tasks for ever. A lapsed lease is no worker's."""
    t = open_transport(lease=0.5)
    producer = t.producer(t.reply_queue("j"))
    producer.submit(_bodies(2))
    dead = t.consumer("dead")
    assert len(dead.fetch(2, timeout=1)) == 2  # then SIGKILLed: never settled nor closed
    raw.delete(queue)
    raw.set(queue, "hello")
    assert producer.reconcile() == 2  # its lease is live: the master waits for them
    _outlive_lease(raw, t)
    with pytest.raises(ConfigError, match=queue):
        producer.reconcile()
    raw.delete(queue)
