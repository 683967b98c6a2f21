"""Task functions that misbehave, for the worker's review tests: ``--task worker_tasks:NAME``."""

from __future__ import annotations

import os
from pathlib import Path


def exit_once(code: int, marker: str) -> str:
    """Ends its whole process with ``os._exit(code)`` the first time it runs for
    ``marker`` (a file it creates), as a task that ends its worker; then returns."""
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return "ran"
    os._exit(code)
