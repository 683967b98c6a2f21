"""The blocking timeouts the Redis transport sends with its BLMOVEs."""

from __future__ import annotations

import builtins

import pytest

from distq.transport.redis import _seconds


def test_a_blocking_timeout_is_whole_milliseconds_and_one_at_least_without_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """0 would make Redis wait for ever, so 1 ms at least; else the nearest millisecond.
    Not by ``round(value, 3)``, which goes through a decimal string: 3,800 of the 58,800
    instructions of a lone task's settle_then_fetch in the worker (issue 16)."""

    def no_round(*args: object) -> object:
        raise AssertionError(f"round{args} on a lone task's path")

    monkeypatch.setattr(builtins, "round", no_round)
    sent = {2.0: 2.0, 5.0: 5.0, 4.98765: 4.988, 1.2344: 1.234, 0.0015: 0.002, 0.0004: 0.001}
    sent |= {0.0: 0.001, -1.0: 0.001, 1e-9: 0.001}
    assert {value: _seconds(value) for value in sent} == sent
