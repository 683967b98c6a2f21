"""The tutorial's job: square random numbers, check every answer.

Everything specific to squares is here: the ``square`` task (every worker's registry
has it), how a worker's line names one (``Get task 733 from task_queue.``), and the
master's side: the tasks it makes, how it checks a result, and its lines
(``put task 733 into task_queue ....``, ``Get result 733 * 733 = 537289 from
result_queue.``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence
from typing import Any

from distq.envelope import MAX_ATTEMPTS, Result, Task
from distq.master import Workload


def square(n: int, delay: float = 0.0) -> int:
    """The tutorial's task: ``n * n``, after sleeping ``delay`` seconds."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"square() needs an integer, got {n!r}")
    if delay:
        time.sleep(delay)
    return n * n


def show(task: Task) -> str:
    """How a worker's ``Get task`` line names a squares task: by its number."""
    return str(task.args[0]) if task.args else f"{task.name}{task.args}"


_NUMBERS = range(1, 1001)
_HOW_MANY = float(len(_NUMBERS))  # as random.choices() counts them


class Squares(Workload[int]):
    """Random numbers 1..1000 to square (each task's entry is its number).

    ``task_delay`` makes each task sleep first (the tutorial's worker sleeps 1 s);
    ``seed`` fixes the numbers.
    """

    def __init__(
        self, task_delay: float = 0.0, seed: int | None = None, max_attempts: int = MAX_ATTEMPTS
    ) -> None:
        self.max_attempts = max_attempts
        self._rng = random.Random(seed)
        self._kwargs: dict[str, Any] = {"delay": task_delay} if task_delay else {}

    def tasks(self, count: int, reply_to: str) -> list[tuple[Task, int]]:
        kwargs, attempts = self._kwargs, self.max_attempts
        if count == 1:  # a lone task (--max-in-flight 1): the number choices() would draw
            n = _NUMBERS[math.floor(self._rng.random() * _HOW_MANY)]
            return [(Task("square", [n], reply_to, kwargs, max_attempts=attempts), n)]
        return [
            (Task("square", [n], reply_to, kwargs, max_attempts=attempts), n)
            for n in self._rng.choices(_NUMBERS, k=count)  # one call per batch, not per task
        ]

    def name(self, entry: int) -> str:
        return f"square({entry})"

    def check(self, result: Result, entry: int) -> bool:
        # an int: 65536.0, or True for square(1), is equal to it and wrong all the same
        return type(result.value) is int and result.value == entry * entry

    def submitted_lines(self, tasks: Sequence[tuple[Task, int]]) -> Iterable[str]:
        return (f"put task {n} into task_queue ...." for _, n in tasks)

    def result_line(self, result: Result, entry: int) -> str:
        return f"Get result {entry} * {entry} = {result.value} from result_queue."

    def waiting_line(self) -> str:
        return "try to get result...."
