"""``micro.py``: every step runs against the code as it is and measures a cost."""

from __future__ import annotations

import micro


def test_every_step_measures_a_positive_cost() -> None:
    costs = micro.measure(rounds=1)
    assert "signing floor: one MAC of a task (two per task)" in costs
    assert all(cost > 0 for cost in costs.values()), costs


def test_every_step_runs_untimed_as_an_instruction_count_runs_it() -> None:
    for name, (_, per, calls) in micro.steps().items():
        assert per >= 1 and calls >= 1, name
        micro.run(name, 2)
