"""Child processes of the benchmark, started so they die with us (their free ports come
from ``tests/launch/``)."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the process that started it dies.

    Linux ``prctl(PR_SET_PDEATHSIG)``, so nothing the benchmark started outlives it even
    if it is SIGKILLed; a no-op where libc has no ``prctl``.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 == PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
