"""The queues a master hosts for the manager transport: :class:`QueueBroker`, in memory.

Pure data structures under one lock, without any I/O: the manager transport
(:mod:`distq.transport.manager`) serves a ``QueueBroker`` to workers over
``multiprocessing.managers``, and a master or a hosting executor calls it directly.
Leases are per consumer (one deadline for every delivery it holds, pushed back by
``fetch`` and ``heartbeat``); a reaper puts a lapsed lease's deliveries back at the
front of their queue and moves due retries in; a reply queue not renewed for its time
to live goes, with its results. Bodies are bytes the broker never decodes: it reads a
task's ``reply_to`` by its place in the envelope (:func:`_reply_to`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from array import array
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from distq.counts import counted
from distq.envelope import DeadLetter, quoted
from distq.limits import MIN_MESSAGE_BYTES
from distq.retries import MAX_RETRY_DELAY, delay_problem
from distq.transport.base import is_orphan_of

# (token, body, redelivered) as handed to a consumer
Wire = tuple[int, bytes, bool]
# (token, reply_to, result, retry, retry_delay, dead_letter): a Settlement on the wire
WireSettlement = tuple[int, str | None, bytes | None, bytes | None, float, bytes | None]


class Oversized(Protocol):
    """What the master makes of a task too large for the worker that fetches it."""

    def sendable(self, most: int) -> int:
        """The largest body a fetch reply carries to a worker of DISTQ_MAX_MESSAGE_BYTES
        ``most``: what its frame limit reads besides the rest of the reply. The same for the
        same ``most``: the broker keeps the last one asked."""
        ...

    def __call__(
        self, queue: str, body: bytes, most: int
    ) -> tuple[str | None, bytes | None, bytes]:
        """``(reply_to, error result, dead letter)`` for ``body``, not sent."""
        ...

    def results(self, body: bytes, most: int) -> list[bytes]:
        """The error results that stand in for the result message ``body``, too large for
        a producer of DISTQ_MAX_MESSAGE_BYTES ``most`` to read: one for each task it
        carries (none if it names none)."""
        ...


class _Tokens:
    """A set of tokens kept as sorted runs of consecutive ones (``starts[i]`` to
    ``ends[i]``, both in): a consumer's tokens come in batches issued in a row, settled in
    order mostly. A set of ints took 95 bytes a token; a run takes 16 bytes: a token's at
    worst (each its own run, slots taking turns), a whole batch's settled in order."""

    __slots__ = ("count", "ends", "starts")

    def __init__(self) -> None:
        self.starts, self.ends, self.count = array("q"), array("q"), 0

    def __len__(self) -> int:
        return self.count

    def __contains__(self, token: int) -> bool:
        if type(token) is not int:  # a peer's any value: never a token the master issued
            return False
        at = bisect_right(self.starts, token) - 1
        return at >= 0 and token <= self.ends[at]

    def __iter__(self) -> Iterator[int]:
        for start, end in zip(self.starts, self.ends, strict=True):
            yield from range(start, end + 1)

    def extend(self, tokens: list[int]) -> None:
        """Add each of ``tokens``: a batch issued in a row and settled in order (the usual
        settle) as one run, without a call a token."""
        first, ends = tokens[0], self.ends
        if (
            type(first) is int
            and first >= 0
            and first + len(tokens) <= 1 << 63
            and (not ends or first > ends[-1])
            and tokens == list(range(first, first + len(tokens)))
        ):
            last = first + len(tokens) - 1
            if ends and first == ends[-1] + 1:
                ends[-1] = last
            else:
                self.starts.append(first)
                ends.append(last)
            self.count += len(tokens)
            return
        for token in tokens:
            self.add(token)

    def add(self, token: int) -> None:
        if type(token) is not int or not 0 <= token < 1 << 63:  # none the master issued
            return
        starts, ends = self.starts, self.ends
        if not ends or token > ends[-1] + 1:  # past the last run: in order, mostly
            starts.append(token)
            ends.append(token)
            self.count += 1
            return
        if token == ends[-1] + 1:
            ends[-1] = token
            self.count += 1
            return
        at = bisect_right(starts, token) - 1  # the run that starts at or before it
        if at >= 0 and token <= ends[at]:
            return
        self.count += 1
        after = at + 1 < len(starts) and starts[at + 1] == token + 1
        if at >= 0 and ends[at] == token - 1:  # ends the run before it
            if after:  # and joins the one after
                ends[at] = ends[at + 1]
                del starts[at + 1], ends[at + 1]
            else:
                ends[at] = token
        elif after:  # starts the run after it
            starts[at + 1] = token
        else:
            starts.insert(at + 1, token)
            ends.insert(at + 1, token)


@dataclass
class _Lease:
    deadline: float
    queue: str = ""  # the queue this consumer last fetched from
    length: float = 0.0  # the lease its consumer asked for last
    given_back: bool = False  # ran out while the master stood still: time given back once
    held: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    # the tokens it settled lately, for a settle of them sent again (QueueBroker.settle):
    # this window's and the last one's; a window ends a lease on (SETTLED_SECONDS at
    # least) or SETTLED_KEPT tokens on, at a settle. A lease that ended (lapsed, or its
    # consumer left) keeps them until its window_ends (QueueBroker._end)
    settled: _Tokens = field(default_factory=_Tokens)
    settled_before: _Tokens = field(default_factory=_Tokens)
    window_ends: float = -math.inf

    def turn(self, now: float) -> None:
        """Forget the tokens of the window before the last: this one is over."""
        self.settled_before, self.settled = self.settled, _Tokens()
        self.window_ends = now + max(self.length, SETTLED_SECONDS)


def _as_body(value: object) -> bytes:
    """``value`` as the master keeps a body: itself if bytes, else bytes that say what it
    was. A manager peer's request may carry any plain value the unpickler builds; kept
    as it came, it failed whatever touched it later: a big int's or a deep list's repr
    (a worker's slot in a reconnect loop, a master's traceback), pickling it back to a
    worker (a bytearray, a list nested 900 deep: every fetch failed), hashing it (a list
    in the queue broke a hosting Executor's withdraw). A worker dead-letters such a body,
    a master drops it, both saying what it was."""
    if type(value) is bytes:
        return value
    what = f"(not bytes: a {type(value).__name__}: {quoted(value)})"
    return what.encode("utf-8", "backslashreplace")


def _refused(why: str, count: int) -> str:
    """The error of a settle whose settlement named what the master cannot use (``why``:
    a retry's delay that is not seconds, a token not an int, a reply_to not text), and
    so of ``count`` not settled, it and those after it: a peer's bug, said to that peer
    (which drops its connection on an error a master raises); their tasks stay leased,
    to run again: back in the queue once that peer disconnects (a distq worker's close
    does), else as their leases lapse. It said "run again as leases lapse", while a
    distq worker ran them at once."""
    some = counted(count, "task")
    # short: a worker shows the first 200 characters of a master's error
    return (
        f"{why}: {some} not settled, back in the queue once the worker disconnects, or as "
        "leases lapse (another program?)"
    )


#: The attributes of a settle's :func:`_refused` ``ValueError`` that say how many of its
#: settlements, from the first, the master took, and the tokens of those it found late
#: (as settle returns them): plain data in the pickled error, which a worker reads
#: (``manager._taken``) and one before it leaves alone.
TAKEN, LATE = "taken", "late"


def _refused_error(why: str, count: int, taken: int, late: list[int]) -> ValueError:
    """A settle's :func:`_refused` error, saying as :data:`TAKEN` that it took ``taken``
    settlements and as :data:`LATE` which of them were late: its text had been read for
    that, a number a master of 94c73d7 meant otherwise (it settled those after the
    refused one too), one of 5,000 digits raised ValueError out of the worker's settle,
    and a late one was counted settled, as if its retry had gone."""
    error = ValueError(_refused(why, count))
    setattr(error, TAKEN, taken)
    setattr(error, LATE, late)
    return error


def _unusable(field: str, value: object) -> str:
    """Why a settlement's ``field`` (its token, its reply_to), as a worker's peer sent it
    (any plain value the unpickler builds), is refused. Kept as they came, a list raised
    mid-settle (a reply_to's after its task's lease was dropped: the task lost), and a
    token of another type was settled but never remembered (a settle sent again
    published its result twice)."""
    wanted = "an int" if field == "token" else "text or None"
    return f"a {field} of {type(value).__name__}, not {wanted}"


def _not_a_settlement(item: object) -> str:
    """Why ``item``, a peer's settlement, is refused for its shape: a worker sends a tuple
    of 6 fields."""
    wanted = "6 fields" if isinstance(item, tuple | list) else "a tuple of 6 fields"
    return f"a settlement of {type(item).__name__}, not {wanted}"


def _refusal(item: object, why: str) -> str:
    """``why`` a settle refuses ``item``, or, if ``item`` is no tuple or list, that: a str
    or bytes of 6 unpacks, and was refused as "a retry delay of str", "a reply_to of
    int". Every other value that unpacks into 6 fields a worker's could be is settled
    as that tuple would be (a dict as its keys): a check of each settlement's type cost
    about 190 instructions a settlement (1.7 % of a task's put, fetch and settle)."""
    return why if isinstance(item, tuple | list) else _not_a_settlement(item)


def _misshapen(item: object) -> str | None:
    """Why a settle raised on ``item`` (a peer's settlement: any plain value the unpickler
    builds), before its lease was touched: it is not 6 fields, or its token (looked up
    as a lease's) or reply_to (for its result) is not hashable; None if it is none such,
    the error no peer's to be told of. Only the settlement the error struck is judged: a
    look at the whole call found another's mistake, took an error of the master's own
    for it, and took n * n looks at a call of n misshapen settlements. Judged by its
    unpacking, as the settle unpacked it: a dict of 6 keys, judged "not 6 fields" by its
    type, took an error of the master's own after its lease was dropped for the peer's
    ("run again": its task never did)."""
    token: object
    reply_to: object
    result: object
    try:
        token, reply_to, result, _, _, _ = item  # type: ignore[misc]
    except (TypeError, ValueError):  # None, 5 fields
        return _not_a_settlement(item)
    named = [("token", token)] + ([("reply_to", reply_to)] if result is not None else [])
    for name, value in named:
        try:
            hash(value)
        except TypeError:
            return _refusal(item, _unusable(name, value))
    return None


#: The longest lease a master takes from a worker: far past any distq sends
#: (DISTQ_LEASE_SECONDS: 0.3 to 3600 s), short of one that never ends (inf, NaN, 1e300:
#: the tasks of a worker that died never put back).
MAX_LEASE = 24 * 3600.0


def _lease_seconds(lease: object) -> float:
    """``lease``, as a worker's peer named it (any plain value the unpickler builds), as
    seconds; ValueError or TypeError when it is none from 0 (not in) to :data:`MAX_LEASE`."""
    if type(lease) is float and 0.0 < lease <= MAX_LEASE:  # every lease distq sends
        return lease
    if type(lease) is bool or not isinstance(lease, int | float):
        raise TypeError(f"a lease of {type(lease).__name__}, not seconds (another program?)")
    if not 0 < lease <= MAX_LEASE:  # NaN is in no range; an int of 400 digits compares
        raise ValueError(
            f"a lease of {quoted(lease)} s, not seconds from 0 to {MAX_LEASE:g}: nothing "
            "leased or renewed (distq sends 0.3 to 3600 s: another program?)"
        )
    return float(lease)


#: The longest a fetch or a get waits for its first body: far past any distq asks (a
#: worker's fetch: 1 s at most; a producer's get: 0.5 s), short of a wait the lock cannot
#: make (inf, 1e300: OverflowError) or one that never ends (NaN, None: a get's thread
#: held until a body comes).
MAX_WAIT = MAX_LEASE


def _asked(max_count: object, wait: object, field: str) -> None:
    """Refuse a get's or fetch's ``max_count`` that is not an int (a float raised in
    ``range`` after the wait, a settle-then-fetch's after its settle ran), and its
    ``wait`` (its ``field``: timeout or wait) that is not seconds up to :data:`MAX_WAIT`,
    as a peer named them (any plain value the unpickler builds). A wait below 0 waits not
    at all: a distq master's last read of results past its deadline asks one
    (``deadline - now``), this process's or a remote one's."""
    if type(max_count) is not int:  # bool refused: True is no count distq asks
        raise TypeError(
            f"a max_count of {type(max_count).__name__}, not an int: nothing taken or "
            "settled (another program?)"
        )
    error: type[Exception] = TypeError  # None (a get's: no end), a str, a bool
    what = type(wait).__name__
    if type(wait) is float or type(wait) is int:
        if wait <= MAX_WAIT:  # NaN is in no range; an int of 400 digits compares
            return
        error, what = ValueError, f"{quoted(wait)} s"
    raise error(
        f"a {field} of {what}, not seconds up to {MAX_WAIT:g}: nothing taken or settled "
        "(distq waits 1 s at most: another program?)"
    )


def _no_limit(most: object) -> Exception:
    """The error for a fetch's or get's ``most`` (its caller's DISTQ_MAX_MESSAGE_BYTES, as
    a peer named it: any plain value the unpickler builds) that is no limit of a distq's."""
    wanted = f"{MIN_MESSAGE_BYTES:,} or more (DISTQ_MAX_MESSAGE_BYTES)"
    if type(most) is int:
        return ValueError(
            f"a limit of {quoted(most)} bytes, not {wanted}: nothing taken or settled "
            "(another program?)"
        )
    return TypeError(
        f"a limit of {type(most).__name__}, not an int of {wanted}: nothing taken or "
        "settled (another program?)"
    )


#: What a call's batch is: a list, or a tuple (a caller of this process's may pass one).
_LISTS = (list, tuple)


def _listed(batch: object, what: str, then: str) -> None:
    """Refuse ``batch``, a call's ``what`` as a peer sent it (any plain value the unpickler
    builds), if it is not a list (or a tuple): a put of one body's bytes queued a task a
    byte, each dead-lettered by a worker ("not bytes: a int: 116"), of a str a task a
    character; an int raised "'int' object is not iterable". ``then``: what that leaves
    undone."""
    if not isinstance(batch, _LISTS):  # a peer's: plain data, no subclass
        raise ValueError(f"{what} of {type(batch).__name__}, not a list: {then} (another program?)")


def _consumer_id(consumer: object, then: str) -> None:
    """Refuse ``consumer``, a consumer a peer named (any plain value the unpickler builds),
    if it is not text, as distq's ids are: a list raised from inside ("unhashable type"),
    in heartbeats after the consumers before it were renewed; an int was a consumer of
    its own, whose fetch's tasks were not handed back when its peer left before the
    reply. ``then``: what that leaves undone."""
    if type(consumer) is not str:
        raise ValueError(
            f"a consumer id of {type(consumer).__name__}, not text: {then} (another program?)"
        )


def _queue_name(name: object, then: str = "") -> None:
    """Refuse ``name``, a queue a peer named (any plain value the unpickler builds), if it
    is not text: a master's close counts its queues by name (``endswith``), and failed on
    an int's before it stopped serving. ``then``: what that leaves undone, said after."""
    if type(name) is not str:
        raise TypeError(f"a queue name of {type(name).__name__}, not text{then} (another program?)")


def _reply_to(body: object) -> str | None:
    """The reply queue a task body names, read without decoding it: the envelope's
    ``reply_to`` is its last string field, so its last match (an argument may hold one)."""
    if not isinstance(body, bytes):
        return None
    at = body.rfind(b'"reply_to":"')
    if at < 0:
        return None
    start = at + len(b'"reply_to":"')
    end = body.find(b'"', start)
    return body[start:end].decode(errors="replace") if end > 0 else None


#: The bytes of bodies a reply of :meth:`QueueBroker.fetch`, ``get`` or ``peek`` holds
#: besides its last, however many are asked for: over the manager wire a reply stays
#: within a message's limit (``manager_wire.frame_limit``). About what a Redis worker
#: claims at once.
BATCH_BYTES = 4 << 20


#: How many deliveries of lapsed leases a master remembers, for their late settles, and
#: at most how many bytes of them (a count alone let 1 MiB tasks keep 10 GiB alive).
LAPSED_KEPT = 10_000
LAPSED_BYTES = 64 << 20
#: How long a task a late settle found done is not put back when a lease of it lapses.
DONE_SECONDS = 600.0
#: How far from the back and the front a late settle looks for the copy its lapsed lease
#: sent back.
COPY_LOOK = 1000
#: A consumer's settled tokens are remembered a lease (this long at least: a keeper's
#: wait is 1 s at least) and the latest this many at least (a whole batch's: MAX_PREFETCH).
SETTLED_SECONDS = 10.0
SETTLED_KEPT = 10_000


class QueueBroker:
    """In-memory queues with per-consumer leases; thread-safe; lives in the master.

    ``clock`` (monotonic seconds) times leases, retry delays and reply queues; tests pass
    their own and call :meth:`reap` instead of starting the reaper thread. A reply queue
    not renewed (:meth:`open`) for ``reply_ttl`` seconds is gone, with the results it
    held (``None``: never). Reaps more than ``stood_still`` seconds (and half a lease)
    apart mean the process stood still (see :meth:`_resume`).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        reply_ttl: float | None = None,
        stood_still: float = math.inf,
        oversized: Oversized | None = None,
        most: int | None = None,
    ) -> None:
        """``most``: the master's DISTQ_MAX_MESSAGE_BYTES (:meth:`message_limit`)."""
        self._clock = clock
        self._oversized = oversized
        self._most = most
        # (most, sendable): the last worker's limit, asked at each of its fetches
        self._last_sendable: tuple[int, int] | None = None
        self._reply_ttl = reply_ttl
        self._stood_still = stood_still
        self._reaped: float | None = None  # when the last reap ran
        self._lock = threading.Lock()
        self._queues: dict[str, deque[tuple[bytes, bool]]] = {}
        self._ready: dict[str, threading.Condition] = {}
        self._leases: dict[str, _Lease] = {}
        # leases that ended, for the settles their consumers' calls still make (_end)
        self._ended: dict[str, _Lease] = {}
        self._delayed: list[tuple[float, int, str, bytes]] = []
        self._own: set[str] = set()  # the reply queues the hosting process ever held
        self._replies: dict[str, float] = {}  # reply queues whose producer lives: renewed at
        self._tokens = itertools.count(1)
        # the deliveries of leases that lapsed, by token: the latest, within LAPSED_KEPT
        # and LAPSED_BYTES; and the bodies of tasks done meanwhile, until when to remember
        self._lapsed: dict[int, tuple[str, bytes]] = {}
        self._lapsed_bytes = 0
        self._done: dict[bytes, float] = {}
        self._done_bytes = 0
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def start_reaper(self, interval: float) -> None:
        """Expire leases and release due retries every ``interval`` seconds."""
        self._reaper = threading.Thread(
            target=self._reap_loop, args=(interval,), name="distq-reaper", daemon=True
        )
        self._reaper.start()

    def stop(self) -> None:
        """Stop the reaper, and end the waits of settle-then-fetches
        (:meth:`settle_fetch`): their settles ran, and their workers are told so."""
        with self._lock:
            self._stop.set()
            for ready in self._ready.values():
                ready.notify_all()

    def serve(self, queue: str) -> None:
        """Make the task queue ``queue`` and its dead-letter queue, empty: a peer's
        :meth:`open` of either, as its reply queue, is refused from the start (not exposed
        to remote callers)."""
        with self._lock:
            self._queue(queue)
            self._queue(f"{queue}.dead")

    def dead_counts(self) -> dict[str, int]:
        """The dead letters held, by queue: they end with this process."""
        with self._lock:
            return {
                name.removesuffix(".dead"): len(items)
                for name, items in self._queues.items()
                if name.endswith(".dead") and items
            }

    def task_counts(self) -> dict[str, int]:
        """Other clients' tasks held, by task queue: ready, waiting out a retry's delay,
        or leased. They end with this process: ``distq submit``'s, another executor's
        (this process's own master or executor knows of its own)."""
        with self._lock:
            bodies = [
                (name, body)
                for name, items in self._queues.items()
                if not name.endswith(".dead") and ".results." not in name
                for body, _ in items
            ]
            bodies += [(queue, body) for _, _, queue, body in self._delayed]
            bodies += [item for lease in self._leases.values() for item in lease.held.values()]
            own = set(self._own)
        counts: dict[str, int] = {}
        for queue, body in bodies:
            if _reply_to(body) not in own:
                counts[queue] = counts.get(queue, 0) + 1
        return counts

    # -- producer side -------------------------------------------------------
    def put(self, queue: str, bodies: Sequence[bytes]) -> None:
        _listed(bodies, "bodies", "nothing queued")
        if not set(map(type, bodies)) <= {bytes}:  # in C: one look at a batch's types
            bodies = [_as_body(body) for body in bodies]
        with self._lock:
            self._push(queue, bodies)

    def get(
        self, queue: str, max_count: int, timeout: float, most: int | None = None
    ) -> list[bytes]:
        """Remove and return up to ``max_count`` bodies (and :data:`BATCH_BYTES` of them
        before the last), waiting up to ``timeout`` s. ``most``: the DISTQ_MAX_MESSAGE_BYTES
        of the producer that gets them (a distq before getlim33 names none): a result too
        large for it to read in a reply is not sent, but error results for its tasks are
        (``oversized.results``). Sent, the producer refused every reply holding it, the
        results behind it waiting for good."""
        _asked(max_count, timeout, "timeout")  # before anything is taken
        sendable = self._sendable(most)
        over: dict[int, bytes] = {}  # by place in the reply
        _queue_name(queue)
        with self._lock:
            items = self._reply_queue(queue, "get", "read")
            if items is not None:
                if not items and timeout > 0:  # below 0 no wait, as a fetch's: an int past
                    # a float's range, made a deadline by the lock's wait, raised OverflowError
                    self._ready[queue].wait_for(lambda: bool(items), timeout)
                out = self._take_results(items, max_count, sendable, over)
        if items is None:  # a reply queue that lapsed: nothing, as before, and none made
            if timeout > 0:
                self._stop.wait(timeout)
            return []
        if not over:
            return out
        assert most is not None and self._oversized is not None
        made = {at: self._oversized.results(body, most) for at, body in over.items()}
        return [sent for at, body in enumerate(out) for sent in made.get(at, [body])]

    @staticmethod
    def _take_results(
        items: deque[tuple[bytes, bool]],
        max_count: int,
        sendable: int | None,
        over: dict[int, bytes],
    ) -> list[bytes]:
        """Up to ``max_count`` bodies off a reply queue's ``items`` (and
        :data:`BATCH_BYTES` of them before the last); one over ``sendable`` is put in
        ``over`` by its place, an empty body in its place. Lock held."""
        out: list[bytes] = []
        room = BATCH_BYTES
        for _ in range(min(max_count, len(items))):
            body = items.popleft()[0]
            if sendable is not None and len(body) > sendable:  # counted: fewer sent
                over[len(out)] = body
                out.append(b"")
                continue
            out.append(body)
            room -= len(body)
            if room < 0:
                break
        return out

    def _sendable(self, most: int | None) -> int | None:
        """The largest body a reply carries to a peer of DISTQ_MAX_MESSAGE_BYTES ``most``
        (None: any, the peer named no limit). Refused before any body is taken when it
        is no limit a distq peer has (an int of :data:`MIN_MESSAGE_BYTES` or more): one of
        -1e9 made every body too large for the peer, each task a fetch took dead-lettered
        (a get's results replaced by errors)."""
        if most is None or self._oversized is None:
            return None
        if type(most) is not int or most < MIN_MESSAGE_BYTES:  # a bool, a float too
            raise _no_limit(most)
        last = self._last_sendable
        if last is not None and last[0] == most:
            return last[1]
        sendable = self._oversized.sendable(most)
        self._last_sendable = (most, sendable)
        return sendable

    def open(self, reply_to: str) -> bool:
        """Open or renew a producer's reply queue: results addressed to it are kept for
        ``reply_ttl`` seconds from now. Whether it was open already (False: new, or it
        had lapsed, its results dropped and its queued tasks left to be dead-lettered)."""
        _queue_name(reply_to, ": no reply queue opened")
        with self._lock:
            live = reply_to in self._replies
            if not live and reply_to in self._queues:  # opened, its tasks read as results
                raise ValueError(
                    f"open of queue {quoted(reply_to)} refused: it holds tasks or dead "
                    "letters, not results; a producer opens a reply queue of its own, "
                    "'<queue>.results.<id>' (another program?)"
                )
            self._queue(reply_to)
            if self._replies.get(reply_to) != math.inf:  # one hold() made stays so
                self._replies[reply_to] = self._clock()
            return live

    def hold(self, reply_to: str) -> None:
        """Open a reply queue that never lapses: the hosting process's own producer's,
        which lives exactly as long as these queues do (not exposed to remote callers)."""
        with self._lock:
            self._replies[reply_to] = math.inf
            self._queue(reply_to)
            self._own.add(reply_to)

    def delete(self, queue: str) -> None:
        """Drop a producer's reply queue, with the results it holds (its producer closes).
        A name that is no queue is left alone (a reply queue that lapsed); another queue
        is refused (:meth:`_reply_queue`)."""
        _queue_name(queue)
        with self._lock:
            if self._reply_queue(queue, "delete", "deleted") is not None:
                self._drop(queue)

    def _reply_queue(self, queue: str, call: str, done: str) -> deque[tuple[bytes, bool]] | None:
        """The reply queue ``queue`` (one :meth:`open` or :meth:`hold` made), for ``call``;
        None if no queue is so named (a reply queue that lapsed: none made); refused if
        another is, of tasks or dead letters (``done``: what the call does to it). A
        peer's get took their tasks with no lease (lost if that peer died) and its delete
        dropped them all: a name check was not enough, as a queue of any name can be
        put to. Lock held."""
        if queue in self._replies:
            return self._queue(queue)
        if queue in self._queues:
            raise ValueError(
                f"{call} of queue {quoted(queue)} refused: it holds tasks or dead letters, "
                f"and only a producer's reply queue may be {done} so; a worker fetches "
                "tasks under a lease (another program?)"
            )
        return None

    def gone(self, reply_to: Sequence[str]) -> list[str]:
        """Those of ``reply_to`` that no producer holds."""
        _listed(reply_to, "reply queue names", "none looked up")
        with self._lock:
            return [name for name in reply_to if name not in self._replies]

    def withdraw(self, queue: str, bodies: Sequence[bytes], redelivered: bool = True) -> list[bool]:
        """Remove these bodies from the ready queue or, not found there, from the retries
        waiting out their delay, one each; True for each one removed. ``redelivered=
        False``: each copy of a body queued redelivered is left (a worker had it)."""
        _listed(bodies, "bodies", "nothing removed")
        with self._lock:
            wanted = Counter(bodies)
            items = self._queues.get(queue)  # not made: a read of any name keeps nothing
            for body, again in items if items and not redelivered else ():
                if again and wanted[body]:  # the copy its worker had may still run
                    wanted[body] = 0
            takeable = +wanted
            if items:
                kept = [item for item in items if not _take(wanted, item[0])]
                if len(kept) < len(items):
                    items.clear()  # the same deque: waiting fetches hold it
                    items.extend(kept)
            if self._delayed and any(n > 0 for n in wanted.values()):
                waits = [d for d in self._delayed if d[2] != queue or not _take(wanted, d[3])]
                if len(waits) < len(self._delayed):
                    heapq.heapify(waits)
                    self._delayed[:] = waits
            removed = takeable
            removed.subtract(wanted)  # what was found, per body
            return [_take(removed, body) for body in bodies]

    def requeue_dead(self, queue: str, letter: bytes, body: bytes) -> bool:
        """If ``letter`` is the oldest dead letter of ``queue``, replace it by the task
        ``body`` at the end of ``queue``; False when someone else took it first."""
        _queue_name(queue)  # "5.dead"'s letter taken off for a task put in queue 5: lost
        with self._lock:
            dead = self._queues.get(f"{queue}.dead")
            if not dead or dead[0][0] != letter:
                return False
            dead.popleft()
            self._push(queue, [_as_body(body)])
            return True

    def forget_orphans(self, queue: str, reply_to: str) -> int:
        """Remove the dead letters of ``queue`` that workers made of ``reply_to``'s tasks
        while its master seemed gone (:func:`~distq.transport.base.is_orphan_of`); how
        many. Every letter is looked at: they are in this process's memory."""
        _queue_name(queue, ": no dead letter removed")
        if type(reply_to) is not str:  # encode() raised from inside
            raise ValueError(
                f"a reply_to of {type(reply_to).__name__}, not text (a producer's reply "
                "queue): no dead letter removed (another program?)"
            )
        needle = reply_to.encode()
        with self._lock:
            dead = self._queues.get(f"{queue}.dead")
            if not dead:
                return 0
            kept = [
                item
                for item in dead
                if not (
                    isinstance(item[0], bytes)
                    and needle in item[0]
                    and is_orphan_of(DeadLetter.read(item[0], queue), reply_to, queue)
                )
            ]
            removed = len(dead) - len(kept)
            if removed:
                dead.clear()
                dead.extend(kept)
            return removed

    # -- consumer side -------------------------------------------------------
    def fetch(
        self,
        queue: str,
        consumer: str,
        max_count: int,
        timeout: float,
        lease: float,
        most: int | None = None,
    ) -> list[Wire]:
        """:meth:`_lease`, waiting up to ``timeout`` s for the first body."""
        _asked(max_count, timeout, "timeout")  # before anything is leased or renewed
        _consumer_id(consumer, "nothing leased or renewed")
        return self._lease(queue, consumer, max_count, timeout, lease, most)

    def _lease(
        self,
        queue: str,
        consumer: str,
        max_count: int,
        timeout: float,
        lease: float,
        most: int | None = None,
        until_stop: bool = False,
    ) -> list[Wire]:
        """Lease up to ``max_count`` bodies (and :data:`BATCH_BYTES` of them before the
        last), waiting up to ``timeout`` s (or until :meth:`stop`, ``until_stop``).
        ``most``: the DISTQ_MAX_MESSAGE_BYTES of the worker that fetches (a distq before
        limits33 names none): a body too large for that worker to read in a reply
        (``oversized.sendable``) is not sent, but dead-lettered and answered
        (``oversized``). Sent, the worker refused every reply holding it, the tasks
        behind it waiting for good. One within it and over ``most``
        is sent, and the worker dead-letters and answers it, as on Redis and RabbitMQ."""
        sendable = self._sendable(most)
        over: list[bytes] = []
        with self._lock:
            items = self._queue(queue)  # a name that is not text: refused before a renewal
            owner = self._renew(consumer, lease)
            owner.queue = queue
            if not items and timeout > 0:
                stop = self._stop if until_stop else None
                self._ready[queue].wait_for(
                    lambda: bool(items) or (stop is not None and stop.is_set()), timeout
                )
                owner = self._renew(consumer, lease)  # the reaper may have dropped us meanwhile
                owner.queue = queue
            out: list[Wire] = []
            room = BATCH_BYTES  # bodies before the last: a batch of large tasks is cut
            for _ in range(min(max_count, len(items))):
                body, redelivered = items.popleft()
                if sendable is not None and len(body) > sendable:  # counted: fewer sent
                    over.append(body)
                    continue
                token = next(self._tokens)
                owner.held[token] = (queue, body)
                out.append((token, body, redelivered))
                room -= len(body)
                if room < 0:
                    break
        if over:
            assert most is not None
            self._refuse(queue, over, most)
        return out

    def _refuse(self, queue: str, bodies: Sequence[bytes], most: int) -> None:
        """Dead-letter ``bodies``, over ``most`` bytes, and answer whoever waits for them:
        made outside the lock (a signature checked over a large body takes a while)."""
        assert self._oversized is not None
        made = [self._oversized(queue, body, most) for body in bodies]
        with self._lock:
            for reply_to, result, dead in made:
                if reply_to is not None and result is not None and reply_to in self._replies:
                    self._push(reply_to, [result])
                self._push(f"{queue}.dead", [dead])

    def heartbeat(self, consumer: str, lease: float) -> None:
        _consumer_id(consumer, "no lease renewed")
        with self._lock:
            self._renew(consumer, lease)

    def heartbeats(self, consumers: Sequence[str], lease: float) -> None:
        """Renew the leases of a worker's slots at once (its keeper's one round trip); a
        consumer gone meanwhile (disconnected, or reaped past its deadline) stays gone."""
        deadline = self._clock() + _lease_seconds(lease)
        _listed(consumers, "consumers", "no lease renewed")
        for consumer in consumers:  # each before any is renewed
            _consumer_id(consumer, "no lease renewed")
        with self._lock:
            for consumer in consumers:
                owner = self._leases.get(consumer)
                if owner is not None:
                    owner.deadline, owner.length, owner.given_back = deadline, lease, False

    def settle(self, queue: str, consumer: str, items: Sequence[WireSettlement]) -> list[int]:
        """Publish results, retries and dead letters, and drop the settled leases; the
        tokens of those found late (below), whose retries and dead letters were not.

        A delivery whose lease lapsed meanwhile (its worker stalled: stopped, paused, a
        task holding the GIL) went back to the queue: its retry or dead letter (and that
        one's error result) is not published, the copy decides (it would have started the
        task again after its result, or failed a task that succeeded); its result is, and
        the task is done: its copy is dropped if it still waits near the front, where the
        lapse put it, and not put back again when a lease of it lapses in turn (a task
        holding the GIL past its lease ran again and again, each run's lease lapsing).

        A token its consumer settled already (within a lease, :class:`_Lease`) is left
        alone, not found late: a settle the master ran after its worker stopped waiting
        for the answer (a keeper's, 1.7 s with the default lease), which the worker sends
        again. Run again, its results reached the master twice, and its retries were
        found late ("not retried"), though they had gone. So too for a while once its
        lease ended (:meth:`_end`): a settle that ran after its consumer's close (a
        keeper's, waiting on a busy master while the worker stopped), or sent again
        after it, is taken as one past a lapse is."""
        # its retries and dead letters go there: to a name that is not text, none can
        _queue_name(queue, ": nothing settled, run again as leases lapse")
        _consumer_id(consumer, "nothing settled, run again as leases lapse")
        _listed(items, "settlements", "nothing settled, run again as leases lapse")
        now = self._clock()
        late: list[int] = []  # not list[int](): see test_manager_lone_task
        refused: str | None = None  # why a settlement was not taken, nor those after it
        not_taken = 0  # those settlements: their tasks left leased, to run again
        fresh: list[int] = []
        seen: set[int] | None = None  # fresh's tokens, once a token not held comes
        with self._lock:
            owner = self._leases.get(consumer)
            if owner is None:
                owner = self._ended.get(consumer)  # its window_ends: when it is forgotten
            elif now >= owner.window_ends or len(owner.settled) >= SETTLED_KEPT:
                owner.turn(now)
            # the owner's held deliveries looked up once a call, not once a settlement
            held_by: dict[int, tuple[str, bytes]] = owner.held if owner is not None else {}
            rest = iter(items)  # what is left of it once a settlement is refused
            try:
                for item in rest:
                    try:  # a peer's settlement that raises: judged before its lease goes
                        token, reply_to, result, retry, delay, dead = item
                        if type(result) is not bytes and result is not None:
                            result = _as_body(result)
                        if retry is not None:
                            retry = _as_body(retry)
                            if type(delay) is not float or not 0.0 <= delay <= MAX_RETRY_DELAY:
                                why = delay_problem(delay)
                                if why is not None:  # before its lease goes: it runs again
                                    refused = _refusal(item, f"{why} (distq sends 0 to 30 s)")
                                    break
                                delay = float(delay)  # an int's: a heap of floats
                        if dead is not None:
                            dead = _as_body(dead)
                        if result is not None and reply_to is not None:
                            # before the lease goes: a list raises here (refused below)
                            reply = reply_to in self._replies
                            if not reply and type(reply_to) is not str:  # bytes, an int
                                refused = _refusal(item, _unusable("reply_to", reply_to))
                                break
                        else:
                            reply = False
                        # a token that is a list raises here, its lease untouched
                        held = held_by.pop(token, None) is not None
                        if not held:  # an int's type is checked here only: 2.0 is token 2
                            if type(token) is not int:
                                refused = _refusal(item, _unusable("token", token))
                                break
                            if owner is not None:
                                if seen is None:  # a late settle: looked up in a set
                                    seen = set(fresh)
                                if (
                                    token in owner.settled
                                    or token in owner.settled_before
                                    or token in seen
                                ):
                                    continue
                            if retry is not None or dead is not None:
                                late.append(token)  # not remembered: late again if sent again
                                continue
                        fresh.append(token)  # remembered by its owner after the loop, as runs
                        if seen is not None:
                            seen.add(token)
                        if reply:  # both not None: no cast called per item
                            self._push(reply_to, [result])  # type: ignore[arg-type, list-item]
                        if not held:
                            self._done_elsewhere(token, now)
                        if retry is not None:
                            if delay > 0:
                                heapq.heappush(self._delayed, (now + delay, token, queue, retry))
                            else:
                                self._push(queue, [retry])
                        if dead is not None:
                            self._push(f"{queue}.dead", [dead])
                    except (TypeError, ValueError):
                        why = _misshapen(item)  # the one it struck, not another's
                        if why is None:  # no peer's mistake: said as it is
                            raise
                        refused = why  # its lease untouched: it runs again
                        break
                # those after a refused settlement are not taken: their results may ride on
                # it (a batch's, packed in one message by its earliest settlement), and
                # settled with none, their tasks never ran again, their producers waiting
                if refused is not None:
                    not_taken = 1 + sum(1 for _ in rest)
            finally:  # remembered though an error of the master's own ended the loop: a
                # settle sent again published the results already out a second time
                if owner is not None and fresh:
                    owner.settled.extend(fresh)
        if refused is not None:  # those before it settled: a settle sent again leaves them
            raise _refused_error(refused, not_taken, len(items) - not_taken, late)
        return late

    def _done_elsewhere(self, token: int, now: float) -> None:
        """The task of ``token``, whose lease lapsed, is done (its late result is out):
        drop its copy if still queued near the back, where a lapse puts it, or the front,
        where a consumer that left does (a bounded look at each: a scan of a long queue
        held the lock for seconds), and remember it for :data:`DONE_SECONDS`, so that a
        copy leased again is not put back when that lease lapses. Lock held."""
        lapsed = self._lapsed.pop(token, None)
        if lapsed is None:
            return
        queue, body = lapsed
        self._lapsed_bytes -= len(body)
        if self._done.pop(body, None) is None:
            self._done_bytes += len(body)
        self._done[body] = now + DONE_SECONDS  # at the end: expiries stay in order
        items = self._queues.get(queue, deque())
        for at, (queued, _) in enumerate(itertools.islice(reversed(items), COPY_LOOK)):
            if queued == body:
                del items[len(items) - 1 - at]
                return
        for at, (queued, _) in enumerate(itertools.islice(items, COPY_LOOK)):
            if queued == body:
                del items[at]
                return

    def settle_fetch(
        self,
        queue: str,
        consumer: str,
        items: Sequence[WireSettlement],
        max_count: int,
        lease: float,
        most: int | None = None,
        wait: float = 0.0,
    ) -> list[Wire]:
        """:meth:`settle`, then :meth:`fetch` up to ``max_count``, waiting up to ``wait``
        s for the first (an older worker names none: no wait), or until
        :meth:`stop`: a worker's batch settled and its next one claimed in one call. A
        lone task's worker settled, was answered "none yet", and fetched again: the
        master's next task waited for that fetch (45 µs of a 190 µs round trip)."""
        _lease_seconds(lease)  # refused before the settle runs, as the fetch would be
        _asked(max_count, wait, "wait")
        self._sendable(most)
        self.settle(queue, consumer, items)
        return self._lease(queue, consumer, max_count, wait, lease, most, until_stop=True)

    def settle_fetch_late(
        self,
        queue: str,
        consumer: str,
        items: Sequence[WireSettlement],
        max_count: int,
        lease: float,
        most: int | None = None,
    ) -> tuple[list[int], list[Wire]]:
        """:meth:`settle_fetch`, with the tokens :meth:`settle` found late: a batch with
        retries or dead letters, whose worker says which were not published."""
        _lease_seconds(lease)  # refused before the settle runs, as the fetch would be
        _asked(max_count, 0.0, "wait")
        self._sendable(most)
        late = self.settle(queue, consumer, items)
        return late, self.fetch(queue, consumer, max_count, 0.0, lease, most)

    def unget(self, queue: str, bodies: Sequence[bytes]) -> None:
        """Put ``bodies``, taken by a :meth:`get` whose producer left before its reply,
        back at the front of ``queue`` in their order; not if that reply queue lapsed
        meanwhile (its results went with it): made again, a queue no producer opened, it
        was refused as the producer opened it again (:meth:`open`)."""
        with self._lock:
            if queue not in self._replies:  # it lapsed meanwhile: its results went with it
                return
            self._queue(queue).extendleft((body, False) for body in reversed(bodies))
            self._ready[queue].notify(len(bodies))

    def release(self, consumer: str, tokens: Sequence[int]) -> None:
        """Put back the tasks of ``tokens``, leased to ``consumer`` and not started (a
        worker's hand-back), in their order at the front; refused whole at a token that
        is not hashable (:meth:`_requeue`)."""
        _consumer_id(consumer, "nothing handed back: it goes back as its lease lapses")
        _listed(tokens, "tokens", "nothing handed back: it goes back as its lease lapses")
        with self._lock:
            owner = self._leases.get(consumer)
            if owner is not None:
                self._requeue(owner, tokens)

    def unsent(self, consumer: str, leased: Sequence[Wire]) -> None:
        """Put back the tasks a fetch's reply leased to a worker that left before it was
        sent, each flagged redelivered only if it was before: it reached no worker."""
        with self._lock:
            owner = self._leases.get(consumer)
            if owner is not None:
                fresh = {token for token, _, again in leased if not again}
                self._requeue(owner, [token for token, _, _ in leased], fresh)

    def disconnect(self, consumer: str) -> None:
        """The consumer is leaving: everything it holds goes back to the front of its
        queue (:meth:`_end`)."""
        _consumer_id(consumer, "nothing put back: it goes back as its lease lapses")
        with self._lock:
            if consumer in self._leases:
                self._end(consumer, self._clock(), lapsed=False)

    # -- inspection ----------------------------------------------------------
    def peek(self, queue: str, limit: int) -> list[bytes]:
        """The first ``limit`` bodies of ``queue`` at most, :data:`BATCH_BYTES` of them
        before the last. A ``limit`` that is no count is refused: islice raised from
        inside at a float or -1, and read one body at True."""
        if type(limit) is not int or limit < 0:
            what = type(limit).__name__ if type(limit) is not int else f"int {quoted(limit)}"
            raise ValueError(f"a limit of {what}, not a count of 0 or more (another program?)")
        _queue_name(queue)
        with self._lock:
            items = self._queues.get(queue, ())  # a read of any name keeps nothing
            out: list[bytes] = []
            room = BATCH_BYTES
            for body, _ in itertools.islice(items, min(limit, len(items))):
                out.append(body)
                room -= len(body)
                if room < 0:
                    break
            return out

    def message_limit(self) -> int | None:
        """The master's DISTQ_MAX_MESSAGE_BYTES: a worker sends no result too large for
        its frames (twice that plus 64 MiB), but an error result in its place."""
        return self._most

    def stats(self, queue: str) -> tuple[int, int, int, int]:
        _queue_name(queue)
        with self._lock:
            # not made: `distq status --queue <any name>` kept a queue for each (4 KB)
            ready = len(self._queues.get(queue, ())) + sum(
                1 for d in self._delayed if d[2] == queue
            )
            in_flight = sum(
                1 for lease in self._leases.values() for q, _ in lease.held.values() if q == queue
            )
            consumers = sum(1 for lease in self._leases.values() if lease.queue == queue)
            return ready, in_flight, len(self._queues.get(f"{queue}.dead", ())), consumers

    def redelivered(self, queue: str) -> int:
        """How many of ``queue``'s tasks are queued again after a worker had them (its
        lease lapsed, or it handed them back): in the hosting process only, as its
        transport's :meth:`~distq.transport.base.Transport.stats` asks; not on the wire."""
        with self._lock:
            return sum(1 for _, again in self._queues.get(queue, ()) if again)

    def lease_left(self, queue: str) -> float | None:
        """Seconds until the last lease holding a task of ``queue`` lapses unless its
        consumer renews it (a worker SIGKILLed holds its tasks that long), None when no
        live lease holds one: in the hosting process only, as :meth:`redelivered`. A lease
        past its deadline, not reaped yet, has lapsed (as Redis's ``stats`` counts one).
        Plain loops, under the lock: with 10,000 leases of a task each, 1.0 ms a call,
        where a generator for each lease took 4.6 ms."""
        with self._lock:
            now = self._clock()
            last = now
            for lease in self._leases.values():
                if lease.deadline > last:
                    for q, _ in lease.held.values():
                        if q == queue:
                            last = lease.deadline
                            break
            return last - now if last > now else None

    # -- internals (lock held) ------------------------------------------------
    def _queue(self, name: str) -> deque[tuple[bytes, bool]]:
        items = self._queues.get(name)
        if items is None:
            _queue_name(name)  # before it is made
            items = self._queues[name] = deque()
            self._ready[name] = threading.Condition(self._lock)
        return items

    def _push(self, queue: str, bodies: Sequence[bytes]) -> None:
        if len(bodies) == 1:  # a lone task's, a result's: no generator
            self._queue(queue).append((bodies[0], False))
            self._ready[queue].notify(1)
            return
        self._queue(queue).extend((body, False) for body in bodies)
        self._ready[queue].notify(len(bodies))

    def _drop(self, queue: str) -> None:
        self._replies.pop(queue, None)
        self._queues.pop(queue, None)
        self._ready.pop(queue, None)

    def _renew(self, consumer: str, lease: float) -> _Lease:
        lease = _lease_seconds(lease)  # before anything is leased or renewed
        owner = self._leases.get(consumer)
        if owner is None:  # an ended one leased anew keeps what it settled
            owner = self._ended.pop(consumer, None) or _Lease(deadline=0.0)
            self._leases[consumer] = owner
        owner.deadline, owner.length, owner.given_back = self._clock() + lease, lease, False
        return owner

    def _end(self, consumer: str, now: float, lapsed: bool) -> None:
        """The lease of ``consumer`` ended: it ``lapsed``, or its consumer left. What it held
        goes back to its queue, each remembered for a late settle of it
        (:meth:`settle`: its copy is dropped if still queued), but a task done meanwhile;
        the lease, with the tokens it settled, is kept a window more (a lease, 10 s at
        least) for its consumer's calls under way or sent again. A close that ran before
        its keeper's settle (the master busy) put back what that settled, and the task ran
        twice; sent again after it, a settle's results reached the master twice.

        A consumer that left hands back to the front of the queue (what it had not run
        runs next); a lapsed lease's tasks go behind the tasks queued: its worker died
        or froze, maybe for one of them, and at the front a task that ends its worker's
        process each time it runs went to each worker that started next, which took it
        and ended (8 starts of a worker ran none of 6 tasks queued after it). A RabbitMQ
        consumer moves such tasks behind too
        (:meth:`~distq.transport.rabbitmq.RabbitMQConsumer._move_behind`). Lock held."""
        owner = self._leases.pop(consumer)
        for token, (queue, body) in list(owner.held.items()):
            if body in self._done:  # its task is done: not put back again
                del owner.held[token]
                continue
            self._lapsed[token] = (queue, body)  # for a late settle of it (settle)
            self._lapsed_bytes += len(body)
        while len(self._lapsed) > LAPSED_KEPT or self._lapsed_bytes > LAPSED_BYTES:
            _, oldest = self._lapsed.pop(next(iter(self._lapsed)))
            self._lapsed_bytes -= len(oldest)
        self._requeue(owner, sorted(owner.held), behind=lapsed)
        owner.window_ends = now + max(owner.length, SETTLED_SECONDS)
        self._ended[consumer] = owner

    def _requeue(
        self,
        owner: _Lease,
        tokens: Sequence[int],
        fresh: Collection[int] = (),
        behind: bool = False,
    ) -> None:
        """Put ``tokens`` back, at the front of their queue in their order (``behind``: at
        its back), flagged redelivered but those in ``fresh`` (sent nowhere).
        All are taken off the lease first: one a peer sent that is not hashable (a list)
        raised with those after it put back; now none is (ValueError). In C, a call a
        token (a worker's hand-back: a hot path): a check of each token's type first
        cost about 240 instructions a token, this 175."""
        held = owner.held
        entries: list[tuple[str, bytes] | None] = []
        try:  # list.extend keeps what it took before the error
            entries.extend(map(held.pop, tokens, itertools.repeat(None)))
        except TypeError:
            for token, entry in zip(tokens, entries, strict=False):
                if entry is not None:
                    held[token] = entry
            bad = tokens[len(entries)]
            raise ValueError(
                f"a token of {type(bad).__name__}, not an int: nothing handed back: it goes "
                "back as its lease lapses (another program?)"
            ) from None
        woken: dict[str, int] = {}  # one notify a queue: a notify() a task cost 1,500
        pairs = (
            zip(tokens, entries, strict=True)
            if behind
            else zip(reversed(tokens), reversed(entries), strict=True)
        )
        for token, entry in pairs:
            if entry is not None:
                queue, body = entry
                items = self._queue(queue)
                (items.append if behind else items.appendleft)((body, token not in fresh))
                woken[queue] = woken.get(queue, 0) + 1
        for queue, count in woken.items():
            self._ready[queue].notify(count)

    def reap(self) -> None:
        """Requeue what consumers past their deadline hold; move due retries in; drop the
        reply queues (and the results they hold) that were not renewed in time."""
        now = self._clock()
        with self._lock:
            self._resume(now)
            if self._reply_ttl is not None:
                lapsed = now - self._reply_ttl
                for name in [q for q, renewed in self._replies.items() if renewed < lapsed]:
                    self._drop(name)
            while self._done and (
                next(iter(self._done.values())) < now or self._done_bytes > LAPSED_BYTES
            ):  # oldest first: one window for all
                self._done_bytes -= len(next(iter(self._done)))
                del self._done[next(iter(self._done))]
            for name in [c for c, lease in self._ended.items() if lease.window_ends <= now]:
                del self._ended[name]
            for name in [c for c, lease in self._leases.items() if lease.deadline < now]:
                self._end(name, now, lapsed=True)
            while self._delayed and self._delayed[0][0] <= now:
                _, _, queue, body = heapq.heappop(self._delayed)
                self._push(queue, [body])

    def _resume(self, now: float) -> None:
        """Reaps over ``stood_still`` s and half a lease apart: this process was stopped
        (SIGSTOP, a paused VM) and no worker could renew that lease meanwhile, while the
        clock ran on. A lease that ran out in that gap gets the time it had left back,
        once (until its own renewal): reaped at once, a slot of a worker got a copy of a
        task still running in another, and ran it too (held19); once only, a dead
        worker's tasks wait one lease more at most, however often a starved reaper
        stretches the gap. Half of each lease's own length: by the master's, a 1 s lease
        ran out unseen in a stop of 0.9 s (stood20).

        A remote producer's reply queue that lapsed in that gap gets it back too, when the
        gap is over half of ``reply_ttl``: no producer could renew it either, and dropped
        as the master resumed, with the results it held and those settled next, its
        producer found it lapsed and submitted its tasks again (each ran twice)."""
        last, self._reaped = self._reaped, now
        if last is None or now - last <= self._stood_still:
            return
        ttl = self._reply_ttl
        if ttl is not None and now - last > ttl / 2:
            for name, renewed in self._replies.items():
                if last < renewed + ttl <= now:
                    self._replies[name] = renewed + (now - last)
        for lease in self._leases.values():
            if (
                last < lease.deadline <= now
                and not lease.given_back
                and now - last > lease.length / 2
            ):
                lease.deadline += now - last
                lease.given_back = True

    def _reap_loop(self, interval: float) -> None:
        while not self._stop.wait(self.next_reap(interval)):
            self.reap()

    def next_reap(self, interval: float) -> float:
        """Seconds until the next reap: ``interval``, or less when a retry falls due
        sooner (a retry waited up to a whole interval more than its delay: 0.63 s for
        0.5). One added meanwhile is due at least 0.5 s on, after the next reap."""
        with self._lock:
            due = self._delayed[0][0] if self._delayed else None
        if due is None:
            return interval
        return min(interval, max(0.0, due - self._clock()))


def _take(counts: Counter[bytes], body: bytes) -> bool:
    """Count one ``body`` off ``counts``; whether there was one to count."""
    if counts[body] > 0:
        counts[body] -= 1
        return True
    return False
