"""The run-length arguments of the Redis settle script (``_SETTLE``'s ARGV[6..])."""

from __future__ import annotations

from distq.transport.redis import _Runs


def _runs(items: list[tuple[str, int, bytes]]) -> list[object]:
    runs = _Runs()
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
