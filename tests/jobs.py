"""Task functions the tests register on workers with ``--task jobs:NAME``."""

from __future__ import annotations


def always_fail(n: int) -> int:
    """A poison task: fails on every attempt."""
    raise RuntimeError(f"always_fail({n}) fails on purpose")


def echo(value: object) -> object:
    return value
