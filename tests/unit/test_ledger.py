"""The ledger on its own: what it keeps, and what it says to submit again."""

from __future__ import annotations

import random

import pytest

from distq.collector import Collector
from distq.config import MESSAGE_BATCH
from distq.envelope import Result
from distq.ledger import COMPACT_FROM, Ledger, forget_orphans, submit_again


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
    assert said is not None and "removed 2 dead letters that workers made of" in said
    assert said.endswith(": those tasks were submitted again"), said


def test_forget_orphans_of_one_letter_says_it_in_the_singular() -> None:
    """It said "removed 1 dead letter(s) ...: those tasks were submitted again"."""
    said = forget_orphans(_Orphans(1), "r", "the master's")  # type: ignore[arg-type]
    assert said == (
        "removed 1 dead letter that workers made of the master's tasks, unrun, while it "
        "seemed gone (stopped or cut off past its time to live): that task was submitted "
        "again"
    )


def test_forget_orphans_of_thousands_of_letters_says_their_count_with_separators() -> None:
    """It said "removed 20000 dead letters", where the master's end says "20,000"."""
    said = forget_orphans(_Orphans(20_000), "r", "the master's")  # type: ignore[arg-type]
    assert said is not None and said.startswith("removed 20,000 dead letters that "), said


def _result(task_id: str) -> bytes:
    return Result(
        task_id=task_id, status="ok", worker="w", attempt=1, started_at=0.0, duration=0.0, value=1
    ).encode()


def _a_job_against_a_broker_that_loses_what_it_was_sent_last(seed: int) -> None:
    """One job of a master's ledger and collector against a simulated broker, from
    ``seed``: it keeps a prefix of the bodies sent (what reconcile vouches for) and
    loses the rest at random, workers run tasks out of order, some twice, the first one
    only at the end (a long task), and results come twice. Then the losses stop: every
    task must be handed on exactly once, with no reconcile sending anything again, and
    the ledger stay bounded by the tasks open all along."""
    rng = random.Random(seed)
    handed: list[str] = []
    collector: Collector[None] = Collector(lambda r, _e, _t: handed.append(r.task_id))
    ledger = Ledger()
    ids = [f"t{n}" for n in range(rng.randint(1, 3000))]
    queued: list[tuple[int, str]] = []  # (position in the producer's count, task id)
    replies: list[str] = []  # results in the reply queue, oldest first
    count = 0  # bodies the broker counts as submitted (from its last reset)
    made = 0
    waiting = collector.waiting_ids().__contains__

    def reconcile(held: int) -> list[tuple[str, bytes]]:
        nonlocal count
        if held < ledger.total:  # the master reads the results waiting first
            collector.accept([_result(task_id) for task_id in replies])
            replies.clear()
        again = ledger.reconcile(held, waiting, collector.outstanding)
        kept = [task_id for task_id, _ in ledger.waiting(waiting)]
        assert len(set(kept)) == len(kept), "a task in the ledger twice: it would go twice"
        count = held
        for task_id, _ in again:
            queued.append((count, task_id))
            count += 1
        return again

    def run(task_id: str) -> None:
        replies.extend([task_id] * (2 if rng.random() < 0.1 else 1))

    losses = rng.choice([0.005, 0.05])  # rare: a thousand answered behind the long task
    steps = 0
    while made < len(ids) or steps < 200:  # the job's tasks, losses among them
        steps += 1
        step = rng.random()
        if step < 0.3 and made < len(ids):  # submit a batch, as Master._submit
            batch = ids[made : made + rng.randint(1, 20)]
            made += len(batch)
            collector.expect((task_id, None) for task_id in batch)
            ledger.compact(waiting, collector.outstanding)
            ledger.record((task_id, task_id.encode()) for task_id in batch)
            queued.extend((count + n, task_id) for n, task_id in enumerate(batch))
            count += len(batch)
            assert len(ledger) <= max(COMPACT_FROM, 2 * collector.outstanding) + len(batch)
        elif step < 0.6:  # workers run some, not in order, a few twice; not the long one
            short = [at for at, (_, task_id) in enumerate(queued) if task_id != ids[0]]
            for at in sorted(rng.sample(short, min(len(short), rng.randint(1, 40))))[::-1]:
                run(queued[at][1] if rng.random() < 0.05 else queued.pop(at)[1])
        elif step < 0.85:  # the master reads some results
            read = rng.randint(0, len(replies))
            collector.accept([_result(task_id) for task_id in replies[:read]])
            del replies[:read]
        elif step < 0.85 + losses:  # the broker keeps the first ``held`` bodies, loses the rest
            held = rng.randint(0, count)
            queued[:] = [(position, task_id) for position, task_id in queued if position < held]
            reconcile(held)
        else:  # a reconcile that finds every body held sends nothing again
            assert reconcile(count) == []
    while queued or replies:  # no more losses: what is queued runs, and is read
        for _, task_id in queued:
            run(task_id)
        queued.clear()
        assert reconcile(count) == []
        collector.accept([_result(task_id) for task_id in replies])
        replies.clear()
    assert not collector.outstanding, f"seed {seed}: {collector.outstanding} left unanswered"
    assert sorted(handed) == sorted(ids), f"seed {seed}"


@pytest.mark.parametrize("seeds", [range(0, 40), range(40, 80)])
def test_a_job_whose_broker_loses_tasks_at_random_gets_every_result_once(seeds: range) -> None:
    """The ledger's rule (the broker vouches for a prefix; what comes after it and still
    waits goes again), met with losses, reorders and duplicates at random: no task left
    unanswered, none handed on twice, the ledger bounded by the tasks open."""
    for seed in seeds:
        _a_job_against_a_broker_that_loses_what_it_was_sent_last(seed)
