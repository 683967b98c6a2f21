"""How a line says a count (distq.counts): one in the singular, past 999 with separators."""

from __future__ import annotations

import pytest

from distq.counts import counted


@pytest.mark.parametrize(
    ("count", "noun", "plural", "said"),
    [
        (1, "task", "", "1 task"),
        (0, "task", "", "0 tasks"),
        (2, "dead letter", "", "2 dead letters"),
        (2_200, "task", "", "2,200 tasks"),
        (1_000_000, "character", "", "1,000,000 characters"),
        (1, "body", "bodies", "1 body"),
        (3, "body", "bodies", "3 bodies"),
    ],
)
def test_a_count_is_said_singular_for_one_and_with_separators(
    count: int, noun: str, plural: str, said: str
) -> None:
    assert counted(count, noun, plural) == said
