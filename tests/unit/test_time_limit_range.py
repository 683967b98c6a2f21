"""The ends of a time limit's documented range, 0.1 to 604800 s, are accepted (mut17b)."""

from __future__ import annotations

import pytest

from distq.timelimits import MAX_SECONDS, MIN_SECONDS, TimeLimits


def test_the_shortest_and_longest_limits_are_accepted_and_no_further() -> None:
    """The refusal says "use 0.1 to 604800": DISTQ_TASK_TIME_LIMIT=0.1 must not be
    refused with that very message (mut17b)."""
    assert (MIN_SECONDS, MAX_SECONDS) == (0.1, 604800.0)
    assert TimeLimits.parse("0.1,square=604800") == TimeLimits(0.1, (("square", 604800.0),))
    for outside in ("0.09", "604800.5"):
        with pytest.raises(ValueError, match=r"out of range; use 0\.1 to 604800"):
            TimeLimits.parse(outside)
