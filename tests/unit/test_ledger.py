"""The ledger on its own: what it keeps, and what it says to submit again."""

from __future__ import annotations

from distq.config import MESSAGE_BATCH
from distq.ledger import Ledger, forget_orphans, submit_again


def entries(*ids: str) -> list[tuple[str, bytes]]:
    return [(tid, tid.encode()) for tid in ids]


def test_compact_forgets_answered_tasks_behind_one_still_running() -> None:
    """A long task at the front no longer keeps every later body: an executor (or a
    --rate master) running for hours holds its outstanding tasks, not its history."""
    ledger = Ledger()
    ledger.record(entries("long", *(f"t{n}" for n in range(3000))))
    ledger.compact({"long", "t2999"}.__contains__, open_tasks=2)
    assert len(ledger) == 2 and ledger.total == 3001


def test_compact_scans_the_whole_ledger_only_when_most_of_it_is_answered() -> None:
    """With every task open, a compact looks at the front only: before, a master or
    executor with 1 M tasks outstanding scanned them all every 2 s (0.18 s each time)."""
    ledger = Ledger()
    ledger.record(entries(*(f"t{n}" for n in range(5000))))
    asked: list[str] = []

    def waiting(task_id: str) -> bool:
        asked.append(task_id)
        return True

    ledger.compact(waiting, open_tasks=5000)
    assert asked == ["t0"] and len(ledger) == 5000


def test_lost_sends_again_the_waiting_tasks_after_what_the_broker_holds() -> None:
    ledger = Ledger()
    ledger.record(entries("a", "b", "c", "d", "e"))
    waiting = {"a", "c", "e"}.__contains__
    ledger.compact(waiting, open_tasks=3)
    # the broker holds the first 2 bodies (a, b): c and e go again, as bodies 3 and 4
    assert ledger.lost(2, waiting) == entries("c", "e")
    assert ledger.total == 4
    assert ledger.lost(4, waiting) == []  # it holds them now
    ledger.record(entries("f"))
    # restarted empty: every task still waited for goes again, in order
    assert ledger.lost(0, {"a", "e", "f"}.__contains__) == entries("a", "e", "f")
    assert ledger.total == 3


def test_submit_again_sends_every_entry_across_batches() -> None:
    """What a reconcile finds lost goes out again, all of it, whatever the batches: a
    mutant that dropped one task per batch passed every test (mut17)."""
    entries = [(f"t{n}", b"t%d" % n) for n in range(2 * MESSAGE_BATCH + 7)]
    sent: list[bytes] = []
    submit_again(sent.extend, entries)
    assert sent == [body for _, body in entries]


class _Orphans:
    def __init__(self, forgotten: int) -> None:
        self.forgotten = forgotten

    def forget_orphans(self, reply_to: str) -> int:
        return self.forgotten


def test_forget_orphans_says_nothing_when_none_went() -> None:
    """The master and the Executor print the line it returns: "removed 0 dead letter(s)"
    at each reconcile after a lapse would be noise (mut17)."""
    assert forget_orphans(_Orphans(0), "r", "the master's") is None  # type: ignore[arg-type]
    said = forget_orphans(_Orphans(2), "r", "the master's")  # type: ignore[arg-type]
    assert said is not None and "removed 2 dead letter(s)" in said
