"""How long a task that failed waits before its next attempt: capped exponential backoff.

The worker's endings give each retry its delay (:mod:`distq.ending`), which a transport
takes from the retry's settlement. RabbitMQ also names its retry queues by the delays
of this schedule, and counts the tasks in them as ready
(:mod:`distq.transport.rabbitmq_retries`).
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Iterator, Sequence

from distq.codec import Codec
from distq.envelope import Task, quoted
from distq.errors import EnvelopeError
from distq.ledger import Entry

#: The longest retry delay a master takes from a worker (a manager master's, which
#: holds retries itself): far past any a worker sends (:func:`retry_delay`: 30 s at
#: most), short of one that never comes due (inf, 1e300: its task lost, counted ready).
MAX_RETRY_DELAY = 24 * 3600.0
#: Taking a task back looks for its retries up to the last attempt that can exist by
#: now (:func:`retry_bodies`): attempt k + 1 is made only once attempt k ran, after the
#: delays of the attempts before it were waited out, each by the broker's clock (Redis
#: TIME, a RabbitMQ TTL, a manager master's own), not the one that times the task. So
#: one attempt more than fits is looked for (a broker's clock stepped forward once
#: skips one delay), and the delays that fit are summed against the task's age plus
#: ``SLACK_SECONDS`` (a millisecond's rounding, clocks that drift apart). No path makes
#: a new attempt sooner: :meth:`distq.ending.Endings.failed` makes each, with its
#: delay (0.5 s at least: an attempt is 1 or more); a hand-back, a lapsed lease, a time
#: limit's late settle, a RabbitMQ deferral or refused dead letter send the same body.
SPARE_ATTEMPTS = 1
SLACK_SECONDS = 1.0


def retry_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff before attempt ``attempt + 1``: 0.5 s, 1 s, 2 s, ... capped."""
    return float(min(cap, base * 2 ** min(attempt - 1, 64)))  # the wire may say 10**30


def delay_problem(delay: object) -> str | None:
    """Why ``delay``, a retry's delay as a worker sent it, is not seconds a master can
    wait out; None when it is. Redis and RabbitMQ never read one: a worker turns its
    own into milliseconds (a key or a queue name); a manager master gets it as the
    worker's peer sent it, any plain value the unpickler builds."""
    if type(delay) is bool or not isinstance(delay, int | float):
        return f"a retry delay of {type(delay).__name__}, not seconds"
    if not 0 <= delay <= MAX_RETRY_DELAY:  # NaN is in no range; an int of 400 digits compares
        return f"a retry delay of {quoted(delay)} s, not 0 to {MAX_RETRY_DELAY:g}"
    return None


def retry_bodies(
    codec: Codec, body: bytes, sent_ago: Callable[[Task], float] = lambda _task: math.inf
) -> Iterator[list[bytes]]:
    """The task ``body``'s retries, attempt by attempt, as a worker sends them
    (:meth:`distq.ending.Endings.failed`): each attempt's signed by every key ``codec``
    accepts, its own first (a worker mid-rotation signs with another first key). What a
    stopped master takes back by body. None for a body that does not open, nor past a
    retry too large to send (the worker sends none).

    Up to the last attempt that can exist by now (:func:`can_exist`), the task sent
    ``sent_ago(task)`` seconds ago (asked again before each attempt, as they are looked
    for), and :data:`SPARE_ATTEMPTS` more; to its last when that is not known (inf)."""
    try:
        task = codec.open_task(body)
    except EnvelopeError:
        return
    # when each of the next attempt and the SPARE_ATTEMPTS before it can be made, the
    # next's last: each once the one before failed, its own delay waited out
    dues = collections.deque([0.0], maxlen=SPARE_ATTEMPTS + 1)
    while task.attempt < task.max_attempts:
        # looked for while the attempt SPARE_ATTEMPTS before it can exist by the age now:
        # the spare counted from the last that fits at each ask, not once for the search
        if not can_exist(dues[0], sent_ago(task)):
            return
        task = task.next_attempt()
        try:
            yield codec.seal_each(task.encode(), "task")
        except EnvelopeError:
            return
        dues.append(dues[-1] + retry_delay(task.attempt - 1))  # its own run waited that out


def can_exist(due: float, sent_ago: float) -> bool:
    """Whether a retry made at the earliest ``due`` seconds after its task was first sent
    (the delays of the attempts before it, summed) can exist, the task sent ``sent_ago``
    seconds ago: :data:`SLACK_SECONDS` allowed for the clocks (NaN: it can)."""
    return not due > sent_ago + SLACK_SECONDS


def retries_by_attempt(
    codec: Codec,
    entries: Sequence[Entry],
    found: Callable[[str], bool],
    sent_ago: Callable[[str, Task], float],
) -> Iterator[list[Entry]]:
    """The retries of ``entries`` (task id, body as sent) that are not ``found``, asked
    again before each attempt, so one attempt's are taken back before the next is
    made: every task's next attempt before any task's one after (:func:`retry_bodies`),
    up to the last that can exist by now, each task sent ``sent_ago(task_id, task)``
    seconds ago. Most retries waiting are second attempts; with ``--max-attempts 100``,
    attempts 2 to 100 of one task before the next one's ran a stop of 20,000 tasks out
    of its time. What a stopped master and a cancelled executor take back by body."""
    looking = [
        (task_id, retry_bodies(codec, body, functools.partial(sent_ago, task_id)))
        for task_id, body in entries
    ]
    while looking:
        going, attempt = [], []
        for task_id, attempts in looking:
            if found(task_id):
                continue
            bodies = next(attempts, None)
            if bodies is not None:
                going.append((task_id, attempts))
                attempt += [(task_id, retry) for retry in bodies]
        if attempt:
            yield attempt
        looking = going
