"""A report as bench/run.py writes it, made up for the tests of what reads it."""

from __future__ import annotations

from typing import Any


def made_up_report(
    rows: list[dict[str, Any]],
    scaling: list[dict[str, Any]],
    *,
    tasks: int = 1000,
    repeat: int = 2,
    packages: dict[str, str] | None = None,
    brokers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A report of ``rows`` and ``scaling`` runs on a made-up machine, ``tasks`` tasks a
    trial and ``repeat`` trials a row (what its tables show of the settings)."""
    return {
        "date": "d",
        "finished": "f",
        "command": "bench/run.sh",
        "interrupted": None,
        "machine": {
            "nproc": 2,
            "cpu": "cpu",
            "ram_gib": 1.0,
            "os": "os",
            "kernel": "k",
            "python": "3.11",
            "packages": packages or {},
            "distq_commit": "abc",
        },
        "settings": {
            "tasks": tasks,
            "repeat": repeat,
            "latency_tasks": 10,
            "workers": 2,
            "timeout": 300.0,
            "memory_tasks": None,
            "scaling": [1, 2],
            "scaling_repeat": 2,
        },
        "brokers": brokers or {},
        "load_average_start": (1.0, 1.0, 1.0),
        "load_average_end": (1.0, 1.0, 1.0),
        "rows": rows,
        "memory": [],
        "scaling": scaling,
        "logs": "/tmp/x",
    }
