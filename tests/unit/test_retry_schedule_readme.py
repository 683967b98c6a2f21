"""The retry delays README.md gives are the worker's (:func:`distq.retries.retry_delay`)."""

from __future__ import annotations

import re

from conftest import REPO
from distq.retries import retry_delay

README = (REPO / "README.md").read_text()


def test_the_readme_gives_the_retry_delays_and_their_cap() -> None:
    """README said "exponential backoff (0.5 s, 1 s, 2 s, ...)" and no more: the 8th
    attempt on waits 30 s, not the 64 s, 128 s ... that schedule reads as, and a job's
    worst case with --max-attempts 10 was off by minutes."""
    said = re.search(r"exponential backoff \(([^)]*)\) up to `--max-attempts`", README)
    assert said is not None
    first = [retry_delay(attempt) for attempt in (1, 2, 3)]
    assert first == [0.5, 1.0, 2.0]
    cap = max(retry_delay(attempt) for attempt in range(1, 200))
    assert said.group(1) == f"0.5 s, 1 s, 2 s, ... at most {cap:g} s", said.group(0)
    assert retry_delay(10**30) == cap  # an attempt the wire may say
