"""The task registry: which names a worker will run (the tutorial's ``square`` built in).

Only registered names run. A user function is registered by its import path,
``module:function`` (``distq worker --task mypkg.jobs:resize``), under that path as
its name; arguments and return values must be JSON values.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from distq import squares
from distq.envelope import Task
from distq.errors import ConfigError, UnknownTask

TaskFunction = Callable[..., Any]
#: How a worker's ``Get task ... from task_queue.`` line names a task.
Show = Callable[[Task], str]


def _positional_range(signature: inspect.Signature) -> tuple[int, int] | None:
    """(fewest, most) positional arguments that fit, when that alone decides a call
    without keyword arguments; None when the signature needs :meth:`~inspect.Signature.bind`.
    """
    fewest = most = 0
    for p in signature.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            most += 1
            fewest += p.default is p.empty
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return None
        elif p.kind is p.VAR_POSITIONAL:
            most = 1 << 30
    return fewest, most


class Registry:
    """Task name -> function, with the signature cached to check arguments cheaply."""

    def __init__(self) -> None:
        self._tasks: dict[str, tuple[TaskFunction, inspect.Signature, tuple[int, int] | None]] = {}
        self._shows: dict[str, Show] = {}
        self._limits: dict[str, float] = {}
        self.register("square", squares.square, show=squares.show)

    def register(
        self,
        name: str,
        function: TaskFunction,
        show: Show | None = None,
        time_limit: float | None = None,
    ) -> None:
        """Run ``function`` for tasks named ``name``; ``show`` names one in the worker's
        lines (by default ``name[args]``); ``time_limit`` (seconds) fails a run that takes
        longer (``DISTQ_TASK_TIME_LIMIT`` may override it: :mod:`distq.timelimits`)."""
        signature = inspect.signature(function)
        self._tasks[name] = (function, signature, _positional_range(signature))
        if show is not None:
            self._shows[name] = show
        else:
            self._shows.pop(name, None)
        if time_limit is not None:
            self._limits[name] = time_limit
        else:
            self._limits.pop(name, None)

    def time_limits(self) -> dict[str, float]:
        """Time limits given at registration, by task name."""
        return dict(self._limits)

    def show(self, task: Task) -> str:
        """How the worker's ``Get task ...`` line names ``task``, registered or not."""
        show = self._shows.get(task.name)
        return show(task) if show is not None else f"{task.name}{task.args}"

    def register_path(self, path: str) -> str:
        """Import ``module:function`` and register it under ``path``; return the name."""
        module_name, sep, attr = path.partition(":")
        if not sep or not module_name or not attr:
            raise ConfigError(f"--task {path!r}: use module:function, e.g. mypkg.jobs:resize")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"--task {path!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?"
            ) from None
        function = getattr(module, attr, None)
        if not callable(function):
            raise ConfigError(f"--task {path!r}: {module_name} has no function {attr!r}")
        self.register(path, function)
        return path

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def resolve(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> TaskFunction:
        """The function for ``name``, once ``args``/``kwargs`` are known to fit it.

        Raises :class:`UnknownTask`, or ``TypeError`` when the arguments do not fit.
        """
        try:
            function, signature, positional = self._tasks[name]
        except KeyError:
            raise UnknownTask(
                f"no task named {name!r} is registered on this worker "
                f"(registered: {', '.join(self.names())}); start the worker with "
                f"--task module:function"
            ) from None
        if kwargs or positional is None or not positional[0] <= len(args) <= positional[1]:
            signature.bind(*args, **kwargs)  # raises TypeError naming what does not fit
        return function
