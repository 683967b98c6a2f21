"""Chunks: many calls of one task function sent as one task (``Executor.map(chunksize=N)``).

A chunk is the built-in task :data:`CHUNK_TASK` with the arguments ``[name, calls]``:
the registered task ``name`` and a list of positional argument lists. The worker checks
every call against ``name``'s registration first (an unknown name or arguments that do
not fit fail the whole chunk at once, like any task that cannot run), then runs them in
order and returns the list of their values. A call that raises fails the chunk, which
is retried as one task. Only registered names run inside a chunk, as outside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distq.envelope import Task

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
        return [function(*call) for function, call in runs]

    return run_chunk


def show_chunk(task: Task) -> str:
    """How a worker's ``Get task`` line names a chunk: ``name x N``."""
    if len(task.args) == 2 and isinstance(task.args[1], list):
        return f"{task.args[0]} x{len(task.args[1])}"
    return f"{task.name}{task.args}"
