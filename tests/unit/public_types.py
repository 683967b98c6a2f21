"""What a type checker makes of the public API (checked by ``make lint``'s mypy, never
run): ``Executor.submit`` and ``map`` are typed as the standard library's executors, so
a user's ``mypy --strict`` sees a function's result type and checks its arguments.

Each ``# type: ignore[...]`` below marks a mistake mypy must report: mypy's strict mode
fails on an ignore that is not needed, so an API typed ``Any`` again fails the lint.
"""

from __future__ import annotations

import functools
from collections.abc import Generator
from typing import Any, assert_type

import distq
import jobs


def _typed(ex: distq.Executor) -> int:
    assert_type(ex.submit(jobs.add, 1, 2), distq.DistqFuture[int])
    assert_type(ex.submit(jobs.add, 1, b=2).result(), int)
    assert_type(ex.submit("jobs:add", 1, 2), distq.DistqFuture[Any])  # a name: untyped
    assert_type(ex.map(jobs.add, [1], [2]), Generator[int, None, None])
    assert_type(ex.map("jobs:add", [1], [2]), Generator[Any, None, None])
    assert_type(ex.submit(functools.partial(jobs.add, 1), 2), distq.DistqFuture[int])
    assert_type(ex.map(functools.partial(jobs.add, b=1), [1]), Generator[int, None, None])
    ex.submit(jobs.add, 1)  # type: ignore[call-overload]
    ex.submit(jobs.add, 1, "2")  # type: ignore[call-overload]
    ex.submit(jobs.add, 1, b="2")  # type: ignore[arg-type]
    wrong: str = ex.submit(jobs.add, 1, 2).result()  # type: ignore[assignment]
    del wrong
    future: distq.DistqFuture[int] = ex.submit(jobs.add, 1, 2)
    return future.result()  # an int: no "returning Any" under --strict
