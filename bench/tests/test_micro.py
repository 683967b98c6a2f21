"""``micro.py``: every step runs against the code as it is and measures a cost."""

from __future__ import annotations

import micro


def test_every_step_measures_a_positive_cost() -> None:
    costs = micro.measure(rounds=1)
    assert "signing floor: one HMAC-SHA256 of a task (two per task)" in costs
    assert all(cost > 0 for cost in costs.values()), costs
