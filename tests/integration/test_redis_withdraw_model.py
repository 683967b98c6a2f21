"""withdraw.lua (a chunked read from the head, marks set in place, one LREM of the mark)
against a reference model: LREM of each body in turn, from the head."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from brokers import Broker
from distq.transport.redis_scripts import source
from distq.transport.redis_wire import Script
from launch import LocalRedis

pytestmark = pytest.mark.integration

Outcome = tuple[list[int], list[bytes], set[bytes]]


@pytest.fixture
def raw(redis_broker: Broker) -> Iterator[redis.Redis[bytes]]:
    client = redis.Redis.from_url(redis_broker.url)
    yield client
    client.close()


def _model(
    ready: list[bytes], again: set[bytes], bodies: list[bytes], leave: bool = False
) -> Outcome:
    """``leave``: a body queued redelivered (in ``again``) stays, each copy, answered -1."""
    ready, again, out = list(ready), set(again), list[int]()
    for body in bodies:
        if leave and body in again:
            out.append(-1)
        elif body in ready:
            ready.remove(body)  # the first from the head, as LREM 1
            again.discard(body)
            out.append(1)
        else:
            out.append(0)
    return out, ready, again


def _run(
    raw: redis.Redis[bytes],
    script: Script,
    ready: list[bytes],
    again: set[bytes],
    bodies: list[bytes],
    leave: bool = False,
) -> Outcome:
    key = f"c30-{uuid.uuid4().hex[:8]}"
    keys = [f"{key}:ready", f"{key}:again", f"{key}:delayed"]
    raw.delete(*keys)
    for start in range(0, len(ready), 1000):
        raw.rpush(keys[0], *ready[start : start + 1000])  # head first
    if again:
        raw.sadd(keys[1], *again)
    out = script(raw, keys, [b"1" if leave else b"0", *bodies])
    left = raw.lrange(keys[0], 0, -1)
    kept = set(raw.smembers(keys[1]))
    raw.delete(*keys)
    return list(out), left, kept


def _case(rng: random.Random) -> tuple[list[bytes], set[bytes], list[bytes]]:
    length = rng.choice([0, 1, 5, 999, 1000, 1001, 1999, 2000, 2001, 3000])
    pool = [b"t%d" % i for i in range(rng.choice([1, 3, 50, 5000]))]
    ready = [rng.choice(pool) for _ in range(length)]
    again = {b for b in rng.sample(ready, min(len(ready), 10))} | {b"absent"}
    n = rng.choice([1, 8, 9, 16, 17, 18, 40, 200])
    bodies: list[bytes] = []
    for _ in range(n):
        pick = rng.random()
        if pick < 0.6 and ready:
            bodies.append(rng.choice(ready))
        elif pick < 0.8 and bodies:
            bodies.append(rng.choice(bodies))  # twice
        else:
            bodies.append(b"not-%d" % rng.randrange(100))
    return ready, again, bodies


def test_withdraw_matches_the_model_on_random_cases(raw: redis.Redis[bytes]) -> None:
    new = Script(source("withdraw", allow_oom=False))
    rng = random.Random(30)
    for i in range(150):
        ready, again, bodies = _case(rng)
        for leave in (False, True):
            want = _model(ready, again, bodies, leave)
            got = _run(raw, new, ready, again, bodies, leave)
            assert got == want, (i, leave, len(ready), len(bodies))


@pytest.mark.parametrize("n", [16, 17, 1001])
def test_withdraw_edges(raw: redis.Redis[bytes], n: int) -> None:
    new = Script(source("withdraw", allow_oom=False))
    prefix = b"\0distq withdrawn "
    cases = [
        ([], set(), [b"a"] * n),
        ([b"x"] * 2500, {b"x"}, [b"x"] * n),
        ([prefix, b"a", prefix + b"1.2", *[b"b"] * 1200, prefix], {prefix}, [prefix] * n),
        ([b"a", b"b"] * 1000, set(), [b"b"] * n + [b"a"]),
    ]
    for ready, again, bodies in cases:
        for leave in (False, True):
            got = _run(raw, new, ready, again, bodies, leave)
            assert got == _model(ready, again, bodies, leave)


def test_withdraw_of_many_on_a_full_redis_without_the_allow_oom_flag(tmp_path: Path) -> None:
    """On Redis 6.2 (no script flags) a full Redis (maxmemory, noeviction) refuses a
    script's first write if it may take memory (LSET), not the writes after one: the
    withdraw of more than 16 bodies marked them (LSET) first and was refused, where the
    rebuild before it (DEL first) and the LREMs of 16 or fewer went through. Redis 7
    runs an unflagged script (as distq sends it to 6.2) by the same rule."""
    script = Script(source("withdraw", allow_oom=False))
    local = LocalRedis(tmp_path)
    with local.start():
        raw = local.client()
        try:
            ready = [b"b%d" % i for i in range(100)]
            raw.rpush("ready", *ready)
            raw.sadd("again", b"b3", b"b50")
            raw.set("filler", b"x" * 3_000_000)
            raw.config_set("maxmemory-policy", "noeviction")
            raw.config_set("maxmemory", raw.info("memory")["used_memory"] - 1000)
            bodies = [b"b%d" % i for i in range(17)]
            assert script(raw, ["ready", "again", "delayed"], [b"0", *bodies]) == [1] * 17
            raw.config_set("maxmemory", 0)
            assert raw.lrange("ready", 0, -1) == ready[17:]
            assert raw.smembers("again") == {b"b50"}
        finally:
            raw.close()


@pytest.mark.parametrize("n", [3, 30])
def test_withdraw_takes_what_the_list_lacks_from_the_delayed_retries(
    raw: redis.Redis[bytes], n: int
) -> None:
    """A body not in the ready list is taken from the retries waiting out their delay
    (stop33), one each, in the few-bodies path (7) and the chunked one (21) alike."""
    script = Script(source("withdraw", allow_oom=False))
    key = f"c33-{uuid.uuid4().hex[:8]}"
    keys = [f"{key}:ready", f"{key}:again", f"{key}:delayed"]
    ready = [b"r%d" % i for i in range(n)]
    raw.rpush(keys[0], *ready, b"both")
    raw.zadd(keys[2], {b"d1": 1, b"d2": 2, b"both": 3, b"kept": 4})
    bodies = [*ready[: n // 2], b"d1", b"both", b"both", b"both", b"absent", b"d2"]
    try:
        out = script(raw, keys, [b"0", *bodies])
        assert list(out) == [1] * (n // 2) + [1, 1, 1, 0, 0, 1]
        assert raw.lrange(keys[0], 0, -1) == ready[n // 2 :]
        assert raw.zrange(keys[2], 0, -1) == [b"kept"]
    finally:
        raw.delete(*keys)
