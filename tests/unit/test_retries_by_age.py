"""How far a take-back looks for a task's retries: only up to the last attempt that can
exist by now, from the task's age and the delays waited out before each attempt."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from distq.codec import Codec
from distq.collector import Collector
from distq.envelope import MOST_ATTEMPTS, Task
from distq.ledger import Entry
from distq.retries import SLACK_SECONDS, SPARE_ATTEMPTS, retries_by_attempt, retry_delay


def _looked_for(sent_ago: float, max_attempts: int = MOST_ATTEMPTS) -> list[int]:
    """The attempts a take-back looked for, by body, of one task of ``max_attempts`` sent
    ``sent_ago`` seconds ago, none of them found (a fake ``found``: logic, no broker)."""
    codec = Codec(queue="q")
    task = Task(name="jobs:add", args=[1, 2], reply_to="r", max_attempts=max_attempts)
    entries: list[Entry] = [(task.id, codec.seal_task(task))]
    looked: Iterator[list[Entry]] = retries_by_attempt(
        codec, entries, lambda _task_id: False, lambda _task_id, _task: sent_ago
    )
    return [codec.open_task(body).attempt for attempt in looked for _, body in attempt]


def _possible(sent_ago: float) -> int:
    """The last attempt that can exist ``sent_ago`` s after the first was sent: attempt
    k + 1 is made once attempt k ran, after the delays of attempts 1 to k - 1."""
    last, waited = 2, 0.0
    while waited + retry_delay(last - 1) <= sent_ago:
        waited += retry_delay(last - 1)
        last += 1
    return last


def test_a_task_sent_a_second_ago_has_its_first_few_retries_looked_for() -> None:
    """A take-back of a task of 10,000 attempts looked for attempts 2 to 10,000 whatever
    its age: a cancel() of one a worker held took 0.5 s on Redis, each. Sent 1 s ago it
    can be at attempt 3 at most (attempt 3 exists from 0.5 s, attempt 4 from 1.5 s)."""
    assert _possible(1.0) == 3
    looked = _looked_for(1.0)
    assert looked == [2, 3, 4, 5]  # 3 can exist; 4 within the clocks' second; one spare
    assert looked[-1] == _possible(1.0 + SLACK_SECONDS) + SPARE_ATTEMPTS


def test_a_task_sent_an_hour_ago_has_its_doubling_steps_and_every_30_s_looked_for() -> None:
    """An hour: the doubling steps (0.5 s to 16 s, 31.5 s in all), then one attempt
    every 30 s: about 120 more, not 10,000."""
    assert _possible(3600.0) == 8 + int((3600.0 - 31.5) // 30)  # 126
    looked = _looked_for(3600.0)
    assert looked == list(range(2, _possible(3601.0) + SPARE_ATTEMPTS + 1))
    assert len(looked) == 126


@pytest.mark.parametrize("sent_ago", [math.inf, math.nan, 10.0 * 24 * 3600])
def test_a_task_of_unknown_or_great_age_has_every_retry_looked_for(sent_ago: float) -> None:
    """Not waited for (inf), a clock that says nothing (NaN), or days old: up to its
    max_attempts, as before."""
    assert _looked_for(sent_ago, max_attempts=500) == list(range(2, 501))


def test_the_age_is_asked_again_before_each_attempt() -> None:
    """A search that takes time (a broker slow to answer) looks further as the task ages:
    a retry made meanwhile is looked for, and the spare attempt past the last that fits
    by the age asked last (10 by 101 s: 91.5 s of delays before it). The spare was spent
    once, at attempt 4 while the age said 0 s, and 11 was never looked for."""
    codec = Codec(queue="q")
    task = Task(name="jobs:add", args=[1, 2], reply_to="r", max_attempts=MOST_ATTEMPTS)
    asked: list[float] = []

    def sent_ago(_task_id: str, _task: Task) -> float:
        asked.append(0.0 if len(asked) < 3 else 100.0)  # 0 s for attempts 2 to 4
        return asked[-1]

    looked = retries_by_attempt(
        codec, [(task.id, codec.seal_task(task))], lambda _id: False, sent_ago
    )
    attempts = [codec.open_task(body).attempt for attempt in looked for _, body in attempt]
    assert _possible(100.0 + SLACK_SECONDS) == 10
    assert attempts == list(range(2, 10 + SPARE_ATTEMPTS + 1))  # past 4 once it says 100 s


def test_a_tasks_age_is_the_longer_of_the_submit_clock_and_its_created_at() -> None:
    """The collector's submit time (perf_counter: stands still while the host sleeps) and
    the task's created_at (time.time(): a clock step can set it back) each bound the age
    from below; the longer is taken. A task not waited for has no age: inf."""
    collector: Collector[str] = Collector(lambda *_: None)
    fresh = Task(name="jobs:add", args=[1], reply_to="r")
    old = Task(name="jobs:add", args=[1], reply_to="r", created_at=time.time() - 3600)
    collector.expect([(fresh.id, "a")], since=time.perf_counter() - 60)
    collector.expect([(old.id, "b")])
    assert 60 <= collector.sent_ago(fresh.id, fresh) < 70
    assert 3600 <= collector.sent_ago(old.id, old) < 3610
    assert collector.sent_ago("not waited for", fresh) == math.inf
