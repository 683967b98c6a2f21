"""Chunks: many calls of one task function sent as one task (``Executor.map(chunksize=N)``).

A chunk is the built-in task :data:`CHUNK_TASK` with the arguments ``[name, calls]``:
the registered task ``name`` and a list of positional argument lists. The worker checks
every call against ``name``'s registration first (an unknown name or arguments that do
not fit fail the whole chunk at once, like any task that cannot run), then runs them in
order and returns the list of their values. A call that raises fails the chunk, which
is retried as one task. Only registered names run inside a chunk, as outside.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from distq.envelope import Task
from distq.errors import TimeLimitExceeded

#: The name of the built-in task that runs a chunk; every worker has it.
CHUNK_TASK = "distq:chunk"

TaskFunction = Callable[..., Any]
Resolve = Callable[[str, list[Any], dict[str, Any]], TaskFunction]


def chunk_arguments(name: str, calls: Sequence[Sequence[Any]]) -> list[Any]:
    """The arguments of a chunk task that calls ``name`` once per entry of ``calls``."""
    return [name, [list(args) for args in calls]]


def chunk_function(resolve: Resolve, args: list[Any], kwargs: dict[str, Any]) -> TaskFunction:
    """A function running the chunk ``args`` describes, every call checked by ``resolve``.

    Raises ``TypeError`` for arguments that are not a chunk, and whatever ``resolve``
    raises for a call that cannot run.
    """
    if kwargs or len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], list):
        raise TypeError(f"{CHUNK_TASK} takes (task name, [[arguments], ...]) and no keywords")
    name, calls = args
    if name == CHUNK_TASK:
        raise TypeError(f"a {CHUNK_TASK} cannot run chunks")
    runs: list[tuple[TaskFunction, list[Any]]] = []
    for call in calls:
        if not isinstance(call, list):
            raise TypeError(f"{CHUNK_TASK} of {name}: each call is a list of arguments")
        runs.append((resolve(name, call, {}), call))

    def run_chunk(*_chunk_arguments: Any) -> list[Any]:
        values = []
        pid = os.getpid()
        for function, call in runs:
            if threading.current_thread() in _given_up:
                raise TimeLimitExceeded(f"{CHUNK_TASK} of {name}: its slot gave up on it")
            values.append(function(*call))
            if os.getpid() != pid:  # a process a call forked returned out of it: it ran
                return values  # the chunk's other calls again (the worker ends it there)
        return values

    return run_chunk


#: Threads whose slot gave up on the task they run (past its time limit): a chunk there
#: starts none of its remaining calls (they ran beside its retry, and after its failure).
_given_up: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def give_up(thread: threading.Thread) -> None:
    """``thread``'s slot left it in its task: a chunk it runs stops before its next call
    (the call running now cannot be stopped: Python cannot stop a thread)."""
    _given_up.add(thread)


def show_chunk(task: Task) -> str:
    """How a worker's ``Get task`` line names a chunk: ``name x N``."""
    if len(task.args) == 2 and isinstance(task.args[1], list):
        return f"{task.args[0]} x{len(task.args[1])}"
    return f"{task.name}{task.args}"
