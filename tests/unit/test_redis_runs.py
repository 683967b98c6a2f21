"""The run-length arguments of the Redis settle script (``settle.lua``'s ARGV[6..])."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis

from distq.transport.base import Delivery, Settlement
from distq.transport.redis import RedisConsumer, RedisTransport
from distq.transport.redis_wire import Runs


def _runs(items: list[tuple[str, int, bytes]]) -> list[object]:
    runs = Runs()
    for op, arg, item in items:
        runs.add(op, arg, item)
    return list(runs.args())


def test_nothing_added_makes_no_arguments() -> None:
    assert _runs([]) == []


def test_items_with_the_same_op_and_arg_share_one_run() -> None:
    items = [("r", 8, b"a"), ("r", 8, b"b"), ("r", 8, b"c")]
    assert _runs(items) == ["r", 8, 3, b"a", b"b", b"c"]


def test_a_new_op_or_arg_starts_a_run_and_order_is_kept() -> None:
    items = [
        ("r", 8, b"a"),
        ("r", 9, b"b"),
        ("r", 9, b"c"),
        ("t", 0, b"d"),
        ("t", 500, b"e"),
        ("d", 0, b"f"),
        ("r", 8, b"g"),
    ]
    assert _runs(items) == [
        *("r", 8, 1, b"a"),
        *("r", 9, 2, b"b", b"c"),
        *("t", 0, 1, b"d"),
        *("t", 500, 1, b"e"),
        *("d", 0, 1, b"f"),
        *("r", 8, 1, b"g"),
    ]


def test_the_first_run_may_have_arg_zero() -> None:
    assert _runs([("d", 0, b"x"), ("d", 0, b"y")]) == ["d", 0, 2, b"x", b"y"]


def _publish(settlements: list[Settlement]) -> tuple[list[str], list[object]]:
    consumer = object.__new__(RedisConsumer)  # only its KEYS matter here
    consumer._keys = [f"k{i}" for i in range(1, 8)]
    keys, args = consumer._publish(settlements)
    return keys, list(args)


def _general(settlements: list[Settlement]) -> list[object]:
    """What the general loop makes: one run per stretch of equal (op, arg)."""
    runs, index = Runs(), dict[str, int]()
    for s in settlements:
        if s.result is not None and s.reply_to is not None:
            runs.add("r", index.setdefault(s.reply_to, 8 + len(index)), s.result)
        if s.retry is not None:
            runs.add("t", round(s.retry_delay * 1000), s.retry)
        if s.dead_letter is not None:
            runs.add("d", 0, s.dead_letter)
    return list(runs.args())


D = [Delivery(f"t{i}".encode(), f"t{i}".encode()) for i in range(4)]


def test_a_batch_of_ok_results_for_one_master_is_one_run() -> None:
    batch = [Settlement(d, "a", b"r" + d.body) for d in D]
    keys, args = _publish(batch)
    assert keys[7:] == ["a"]
    assert args == ["r", 8, 4, b"rt0", b"rt1", b"rt2", b"rt3"] == _general(batch)


@pytest.mark.parametrize(
    "odd",
    [
        Settlement(D[3], "b", b"rt3"),  # another master
        Settlement(D[3], "a", b"rt3", dead_letter=b"dead"),  # failed for good
        Settlement(D[3], retry=b"again", retry_delay=0.5),  # retried
        Settlement(D[3], dead_letter=b"dead"),  # malformed or orphaned
        Settlement(D[3]),  # nobody waits for it
        Settlement(D[3], "a", retry=b""),  # an empty body is still a retry
    ],
)
def test_any_other_batch_makes_the_same_runs(odd: Settlement) -> None:
    batch = [*(Settlement(d, "a", b"r" + d.body) for d in D[:3]), odd]
    keys, args = _publish(batch)
    assert args == _general(batch)
    assert keys[7:] == (["a", "b"] if odd.reply_to == "b" else ["a"])


@pytest.mark.parametrize(
    "lone",
    [
        Settlement(D[0], "a", b"rt0"),  # a lone task's result: made on a shorter way
        Settlement(D[0], "a", b""),  # an empty result is still one
        Settlement(D[0], "a", b"rt0", dead_letter=b"dead"),
        Settlement(D[0], retry=b"again", retry_delay=0.5),
        Settlement(D[0], "a", b"rt0", retry=b"again", retry_delay=0.5),
        Settlement(D[0], dead_letter=b"dead"),
        Settlement(D[0], "a"),  # a reply queue but no result
        Settlement(D[0], None, b"rt0"),  # a result but nobody to send it to
        Settlement(D[0]),
    ],
)
def test_a_settlement_alone_makes_the_runs_and_keys_of_any_batch(lone: Settlement) -> None:
    keys, args = _publish([lone])
    assert args == _general([lone])
    assert keys[7:] == (["a"] if lone.reply_to == "a" and lone.result is not None else [])


@pytest.mark.parametrize(("db", "where"), [("0", "127.0.0.1:6379"), ("3", "127.0.0.1:6379 (db 3)")])
def test_start_lines_name_a_redis_database_other_than_0(db: str, where: str) -> None:
    """Master and workers on different databases waited in silence, and their start
    lines read alike (drift10)."""
    client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{db}")  # connects to nothing yet
    fake = SimpleNamespace(tls=False, client=client, address="127.0.0.1:6379", role="worker")
    assert RedisTransport.describe(fake) == f"redis at {where}"  # type: ignore[arg-type]
