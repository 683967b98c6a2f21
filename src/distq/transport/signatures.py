"""Whether a library's internal function still takes what distq passes it.

:mod:`distq.transport.pika_internals` and :mod:`distq.transport.manager_wire` check
the private parts of pika and of ``multiprocessing`` they rely on; each raises its own
error, naming the library and what to do, from what this finds.
"""

from __future__ import annotations

import inspect


def parameters_differ(
    function: object, names: tuple[str, ...], *, skip: int, kind: str
) -> tuple[str, str] | None:
    """``(found, expected)`` when ``function`` is not a callable (``kind`` says what it
    should be) whose parameters, after its first ``skip``, begin with ``names``; else
    None."""
    if not callable(function):
        return type(function).__name__, kind
    have = tuple(inspect.signature(function).parameters)[skip : skip + len(names)]
    return None if have == names else (f"parameters {have}", f"parameters {names}")
