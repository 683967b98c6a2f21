"""The ledger on its own: what it keeps, and what it says to submit again."""

from __future__ import annotations

from distq.ledger import Ledger


def entries(*ids: str) -> list[tuple[str, bytes]]:
    return [(tid, tid.encode()) for tid in ids]


def test_compact_forgets_answered_tasks_behind_one_still_running() -> None:
    """A long task at the front no longer keeps every later body: an executor (or a
    --rate master) running for hours holds its outstanding tasks, not its history."""
    ledger = Ledger()
    ledger.record(entries("long", *(f"t{n}" for n in range(1000))))
    ledger.compact({"long", "t999"}.__contains__)
    assert len(ledger) == 2 and ledger.total == 1001


def test_lost_sends_again_the_waiting_tasks_after_what_the_broker_holds() -> None:
    ledger = Ledger()
    ledger.record(entries("a", "b", "c", "d", "e"))
    waiting = {"a", "c", "e"}.__contains__
    ledger.compact(waiting)
    # the broker holds the first 2 bodies (a, b): c and e go again, as bodies 3 and 4
    assert ledger.lost(2, waiting) == entries("c", "e")
    assert ledger.total == 4
    assert ledger.lost(4, waiting) == []  # it holds them now
    ledger.record(entries("f"))
    # restarted empty: every task still waited for goes again, in order
    assert ledger.lost(0, {"a", "e", "f"}.__contains__) == entries("a", "e", "f")
    assert ledger.total == 3
