"""A producer's ledger: each task body a master or executor submitted, in order, until answered.

A broker may lose tasks: restarted empty, restored from an older snapshot, or a publish
never confirmed before the connection went. :meth:`distq.transport.Producer.reconcile`
says how many of the bodies submitted so far, counted from the first, the broker still
holds; the ledger turns that number into the tasks to submit again: those after it that
still wait for a result. That rule cannot lose a task (anything the broker does not
vouch for and the master still needs goes again) and sends a duplicate only when the
broker held a task it could not vouch for (an unconfirmed publish that did arrive, or a
task of a master the broker had declared gone); the master counts a task's result once.

Answered tasks leave the front of the ledger at each :meth:`Ledger.compact`, and the
rest of it too once it holds more than twice the open tasks: so it holds about the
outstanding tasks, even behind one that runs for hours (each entry keeps its position in
the sequence, which is all an answered task's place was for), and each task is looked
at a bounded number of times, however many are outstanding. A master and an executor
keep one each.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

from distq.config import MESSAGE_BATCH
from distq.counts import counted
from distq.errors import DistqError

if TYPE_CHECKING:
    from distq.transport.base import Producer, Transport

#: (task id, encoded task) as submitted.
Entry = tuple[str, bytes]
#: The ledger is scanned whole only past this many entries (and twice the open tasks).
COMPACT_FROM = 1024


class Ledger:
    """The bodies still waiting for a result, each with its position in the producer's
    sequence of bodies (``total`` of them so far)."""

    def __init__(self) -> None:
        self._total = 0
        self._entries: deque[tuple[int, str, bytes]] = deque()  # positions ascending

    @property
    def total(self) -> int:
        """How many bodies the producer was given, as it counts them."""
        return self._total

    def __len__(self) -> int:
        """Entries held: the tasks submitted and not known answered at the last compact."""
        return len(self._entries)

    def record(self, entries: Iterable[Entry]) -> None:
        """These bodies go to the producer now (record first: a failed submit may have
        reached the broker, and the count is the broker's)."""
        total = self._total
        for task_id, body in entries:
            self._entries.append((total, task_id, body))
            total += 1
        self._total = total

    def compact(self, waiting: Callable[[str], bool], open_tasks: int) -> None:
        """Forget the answered tasks at the front, and every answered one once the ledger
        holds more than twice ``open_tasks`` (their positions stay counted in ``total``)."""
        entries = self._entries
        while entries and not waiting(entries[0][1]):
            entries.popleft()
        if len(entries) > max(COMPACT_FROM, 2 * open_tasks):
            self._entries = deque(entry for entry in entries if waiting(entry[1]))

    def waiting(self, waiting: Callable[[str], bool]) -> list[Entry]:
        """The entries still ``waiting`` for a result, oldest first."""
        return [(tid, body) for _, tid, body in self._entries if waiting(tid)]

    def reconcile(self, held: int, waiting: Callable[[str], bool], open_tasks: int) -> list[Entry]:
        """What a producer's reconcile found (the broker holds the first ``held`` bodies)
        made into the tasks to submit again: :meth:`compact`, then :meth:`lost`."""
        self.compact(waiting, open_tasks)
        return self.lost(held, waiting)

    def lost(self, held: int, waiting: Callable[[str], bool]) -> list[Entry]:
        """The broker holds the first ``held`` bodies: the tasks after them still
        ``waiting`` for a result, to submit again. The ledger counts them as submitted
        right after position ``held``, as the producer will."""
        if held >= self._total:
            return []
        kept = [entry for entry in self._entries if entry[0] < held]
        again = [(tid, body) for at, tid, body in self._entries if at >= held and waiting(tid)]
        self._entries = deque(kept)
        self._total = held
        self.record(again)
        return again


def withdraw_once(
    producer: Producer,
    batch: list[Entry],
    taken: set[str],
    copies: Counter[str],
    resubmitted: Collection[str],
    redelivered: bool = True,
) -> list[Entry]:
    """One withdraw of ``batch``'s bodies, the ids found added to ``taken`` and counted
    in ``copies``; those found of a task submitted again (``resubmitted``), to withdraw
    again: one withdraw takes one copy. What a stopping master and a cancelling
    executor do, each with its own bounds around it (``redelivered``: see
    :meth:`~distq.transport.base.Producer.withdraw`)."""
    bodies = [body for _, body in batch]
    # the keyword only when it says something: a stopping master's call is as it was
    gone = producer.withdraw(bodies) if redelivered else producer.withdraw(bodies, False)
    found = [entry for entry, out in zip(batch, gone, strict=True) if out]
    taken.update(task_id for task_id, _ in found)
    copies.update(task_id for task_id, _ in found)
    return [entry for entry in found if entry[0] in resubmitted]


def submit_again(submit: Callable[[list[bytes]], None], entries: list[Entry]) -> None:
    """``entries`` (from :meth:`Ledger.reconcile`) through ``submit``, a batch at a time."""
    for start in range(0, len(entries), MESSAGE_BATCH):
        submit([body for _, body in entries[start : start + MESSAGE_BATCH]])


def forget_orphans(transport: Transport, reply_to: str, whose: str) -> str | None:
    """Remove the dead letters workers made of ``whose`` tasks (those of the master or
    executor holding ``reply_to``) while it seemed gone, once it has submitted them again
    (:meth:`~distq.transport.base.Transport.forget_orphans`). The line it says: how many
    went, or why none could (the job goes on); None when there were none."""
    try:
        forgotten = transport.forget_orphans(reply_to)
    except DistqError as exc:
        return (
            f"could not remove the dead letters workers made of {whose} tasks while it "
            f"seemed gone: {exc}; `distq dead-letters` lists them"
        )
    if not forgotten:
        return None
    letters = counted(forgotten, "dead letter")
    those = "that task was" if forgotten == 1 else "those tasks were"
    return (
        f"removed {letters} that workers made of {whose} tasks, unrun, while it seemed "
        f"gone (stopped or cut off past its time to live): {those} submitted again"
    )
