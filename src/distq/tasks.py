"""The task registry: which names a worker will run (the tutorial's ``square`` built in).

Only registered names run. A user function is registered by its import path,
``module:function``, under that path as its name: one at a time
(``distq worker --task mypkg.jobs:resize``), or every function of a module marked with
:func:`task` (``distq worker --tasks mypkg.jobs``). An executor sends a function object
by the same name (:func:`task_name`), so what it submits is what the worker registered.
Arguments and return values must be JSON values. Every worker also runs chunks
(:mod:`distq.chunks`) of its registered tasks.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from distq import squares
from distq.chunks import CHUNK_TASK, chunk_function, show_chunk
from distq.envelope import Task, shown
from distq.errors import ConfigError, SignalExit, UnknownTask
from distq.errortext import describe, message
from distq.timelimits import MAX_SECONDS, MIN_SECONDS, enforceable, shown_limit

TaskFunction = Callable[..., Any]
#: How a worker's ``Get task ... from task_queue.`` line names a task.
Show = Callable[[Task], str]

_F = TypeVar("_F", bound=Callable[..., Any])

#: The attribute :func:`task` sets on a function: its task name.
TASK_ATTRIBUTE = "__distq_task__"


def function_path(function: Callable[..., Any]) -> str:
    """``module:name`` of a module-level function, the name a worker imports it by.

    Raises ``TypeError`` naming the problem for anything else: a lambda, a nested
    function, a method, an object that is not a function, or a function of a script run
    as ``__main__`` (workers cannot import that; ``python -m package.module`` is fine).
    """
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not callable(function) or not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(
            f"{function!r} is neither a task name nor a module-level function; "
            "pass 'module:function' or the function itself"
        )
    if "." in qualname or "<" in qualname:
        raise TypeError(
            f"{module}.{qualname} is not a module-level function; workers import tasks "
            "by module:name, so define it at the top level of a module"
        )
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is None or not spec.name or spec.name == "__main__":
            raise TypeError(
                f"{qualname} is defined in the script being run (__main__), which workers "
                "cannot import; move it into a module (or run the script with python -m)"
            )
        module = spec.name
    return f"{module}:{qualname}"


def task(function: _F) -> _F:
    """Mark a module-level function as a distq task, named ``module:name``.

    ``distq worker --tasks module`` registers every function so marked in ``module``;
    ``Executor.submit(function, ...)`` sends the same name. The function is returned
    unchanged and still runs locally when called. ``TypeError`` for an ``async def`` or
    a generator function (:func:`not_plain`).
    """
    path = function_path(function)
    if inspect.isclass(function):
        raise TypeError(
            f"{path} is a class; a worker sends back what a task returns, as a JSON "
            "value: mark a function that makes the object and returns its data"
        )
    why = not_plain(function)
    if why is not None:
        raise TypeError(f"{path} {why}")
    setattr(function, TASK_ATTRIBUTE, path)
    return function


def _signature(function: TaskFunction) -> inspect.Signature | None:
    """The signature a call of ``function`` must fit: its own, not that of a function it
    wraps (a ``functools.wraps`` decorator may inject, add or take arguments: a task
    wrapped to be handed a database was refused every call that worked in Python, and a
    call that did not ran, input17); the wrapped one's where it has none Python can read
    (``functools.cache``'s wrapper); None when neither has (some C functions): called
    unchecked, and arguments that do not fit fail in the call."""
    try:
        return inspect.signature(function, follow_wrapped=False)
    except (ValueError, TypeError):
        pass
    try:
        return inspect.signature(function)
    except (ValueError, TypeError):
        return None


def not_plain(function: Callable[..., Any]) -> str | None:
    """Why ``function`` cannot be a task, or None: a worker calls a task and sends back
    what the call returns, and calling an ``async def`` or a generator function runs
    none of its body (each call failed for good, saying its value could not be sent)."""
    own = getattr(function, "__func__", None)  # a staticmethod's, a bound method's
    if own is not None:
        function = own
    elif callable(function) and not (
        inspect.isroutine(function) or isinstance(function, functools.partial)
    ):
        function = type(function).__call__  # an object's own call
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return (
            "is an async def, and a worker calls a task without awaiting it; register a "
            "plain function that runs it, e.g. def fetch_now(url): return asyncio.run(fetch(url))"
        )
    if inspect.isgeneratorfunction(function):
        return (
            "is a generator function, whose call returns before its body runs; register a "
            "plain function that returns a list, e.g. def rows_list(n): return list(rows(n))"
        )
    return None


def task_name(function: str | Callable[..., Any]) -> str:
    """The task name to send for ``function``: a name as is, a function by its path."""
    if isinstance(function, str):
        if not function:
            raise TypeError("the task name is empty; use 'module:function'")
        return function
    marked = getattr(function, TASK_ATTRIBUTE, None)
    return marked if isinstance(marked, str) else function_path(function)


def bound(
    function: str | Callable[..., Any],
) -> tuple[str | Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """``function`` without the ``functools.partial`` objects around it, and the
    arguments they bind (none otherwise): the task to send, and what goes before a
    call's own arguments and keywords. A partial nests another when Python did not
    flatten them (the inner one has attributes). Raises ``TypeError`` for a partial
    subclass with its own ``__call__``: a worker would call the function, not that."""
    args: tuple[Any, ...] = ()
    keywords: dict[str, Any] = {}
    while isinstance(function, functools.partial):
        if type(function).__call__ is not functools.partial.__call__:
            raise TypeError(
                f"{type(function).__qualname__} is a functools.partial with a __call__ of "
                "its own, which a worker would not run; submit the function it wraps, or "
                "a module-level function that does what that __call__ does"
            )
        args, keywords = (*function.args, *args), {**function.keywords, **keywords}
        function = function.func
    return function, args, keywords


def _import(module_name: str, flag: str) -> ModuleType:
    """Import ``module_name`` for ``flag`` (``--task 'mod:fn'``, ``--tasks 'mod'``), or
    raise :class:`ConfigError` naming both: the module cannot be found, its name is not
    a module's full name, or its own code failed while importing (its error and where)."""
    if not module_name or module_name.startswith("."):
        raise ConfigError(
            f"{flag}: {module_name!r} is not a module's full name; use e.g. mypkg.jobs "
            "(no relative import: nothing to be relative to)"
        )
    try:
        return importlib.import_module(module_name)
    except SignalExit:  # SIGTERM while a slow module imports: the worker's stop, no error
        raise
    except ImportError as exc:
        if exc.name is not None and f"{module_name}.".startswith(f"{exc.name}."):
            raise ConfigError(
                f"{flag}: cannot import {module_name!r} ({message(exc)}); is it on PYTHONPATH?"
            ) from None
        raise ConfigError(  # found, and its code imports what is not there
            f"{flag}: importing {module_name!r} raised {_raised(exc)}; install what it "
            "imports, or fix the module"
        ) from None
    except (Exception, SystemExit) as exc:  # the module's own code: a bug, not distq's
        raise ConfigError(
            f"{flag}: importing {module_name!r} raised {_raised(exc)}; fix the module"
        ) from None


def _raised(exc: BaseException) -> str:
    """``Type: message``, and where the module's code raised it, in one line."""
    if isinstance(exc, SyntaxError):  # where the parser stopped: no frame of the module
        return f"{type(exc).__name__}: {exc.msg} (at {exc.filename}:{exc.lineno})"
    text = describe(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{text} (at {frames[-1].filename}:{frames[-1].lineno})" if frames else text


def _mark(value: object) -> str | None:
    """The task name ``value`` was marked with by :func:`task`, if it is a marked
    callable: a function, or a wrapper of one such as ``functools.cache``'s (marked
    above it). Classes and other objects are skipped, as are attributes that cannot be
    read (a lazy object's own ``__getattr__`` may raise anything)."""
    try:  # a lazy proxy answers even isinstance() and callable() with its own code
        if inspect.isclass(value) or not callable(value):
            return None
        name = inspect.getattr_static(value, TASK_ATTRIBUTE, None)
    except Exception:
        return None
    return name if isinstance(name, str) else None


def _marked_as(
    name: str, functions: dict[int, tuple[str, TaskFunction]], flag: str
) -> TaskFunction:
    """The function to run as task ``name``, of the module's ``functions`` (by id: their
    attribute names and themselves) marked with it: the one its path names. A wrapper made
    with ``functools.wraps`` carries its function's mark, and an earlier definition kept
    under another name carries the same mark as the later one: whichever came later in the
    module ran instead of the task, unsaid."""
    module_name, _, attr = name.partition(":")
    own = getattr(sys.modules.get(module_name), attr, None)
    if id(own) in functions:
        return functions[id(own)][1]
    if len(functions) == 1:  # its path names something else now: still the one so marked
        return next(iter(functions.values()))[1]
    attrs = ", ".join(sorted(attr for attr, _ in functions.values()))
    raise ConfigError(
        f"{flag}: {attrs} are each marked as task {name!r} (a copy or a wrapper of it), "
        f"and {name} is none of them; keep one in the module, or register the one to "
        "run with --task module:function"
    )


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
        self._tasks: dict[
            str, tuple[TaskFunction, inspect.Signature | None, tuple[int, int] | None]
        ] = {}
        self._shows: dict[str, Show] = {CHUNK_TASK: show_chunk}
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
        longer (``DISTQ_TASK_TIME_LIMIT`` may override it: :mod:`distq.timelimits`).
        ``TypeError`` for an ``async def`` or a generator function (:func:`not_plain`);
        ``ValueError`` for a ``time_limit`` that is not seconds in the setting's range."""
        why = not_plain(function)
        if why is not None:
            raise TypeError(f"task {name} {why}")
        if time_limit is not None:
            _check_limit(name, time_limit)
        signature = _signature(function)
        positional = None if signature is None else _positional_range(signature)
        self._tasks[name] = (function, signature, positional)
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
        show = self._shows.get(task.name)  # its text escaped: it may quote the wire
        if show is None:
            return f"{shown(task.name)}{task.args}"
        text = show(task)  # shown()'s call only for a text it escapes: one a task less
        return text if text.isprintable() else shown(text)

    def register_path(self, path: str) -> str:
        """Import ``module:function`` and register it under ``path``; return the name."""
        module_name, sep, attr = path.partition(":")
        if not sep or not module_name or not attr:
            raise ConfigError(f"--task {path!r}: use module:function, e.g. mypkg.jobs:resize")
        module = _import(module_name, f"--task {path!r}")
        function = getattr(module, attr, None)
        if not callable(function):
            raise ConfigError(f"--task {path!r}: {module_name} has no function {attr!r}")
        why = not_plain(function)
        if why is not None:
            raise ConfigError(f"--task {path!r}: {module_name}.{attr} {why}")
        self.register(path, function)
        return path

    def register_module(self, module_name: str) -> list[str]:
        """Import ``module_name`` and register every function in it marked with
        :func:`task`, each under its task name; return the names."""
        flag = f"--tasks {module_name!r}"
        module = _import(module_name, flag)
        marked: dict[str, dict[int, tuple[str, TaskFunction]]] = {}
        for attr, value in vars(module).items():
            name = _mark(value)
            if name is not None:
                marked.setdefault(name, {}).setdefault(id(value), (attr, value))
        if not marked:
            raise ConfigError(
                f"{flag}: the module has no function marked @distq.task; "
                "mark them, or register one with --task module:function"
            )
        for name, functions in marked.items():
            self.register(name, _marked_as(name, functions, flag))
        return sorted(marked)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._tasks)

    def runnable(self) -> list[str]:
        """Every task name this worker runs: the registered ones and chunks of them."""
        return [*self.names(), CHUNK_TASK]

    def resolve(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> TaskFunction:
        """The function for ``name``, once ``args``/``kwargs`` are known to fit it.

        Raises :class:`UnknownTask`, or ``TypeError`` when the arguments do not fit.
        """
        if name == CHUNK_TASK:
            return chunk_function(self.resolve, args, kwargs)
        try:
            function, signature, positional = self._tasks[name]
        except KeyError:
            raise UnknownTask(
                f"no task named {name!r} is registered on this worker "
                f"(registered: {', '.join(self.names())}); start the worker with "
                f"--task module:function or --tasks module"
            ) from None
        if signature is not None and (
            kwargs or positional is None or not positional[0] <= len(args) <= positional[1]
        ):
            signature.bind(*args, **kwargs)  # raises TypeError naming what does not fit
        return function


def _check_limit(name: str, time_limit: object) -> None:
    """Refuse a registered limit the keeper cannot enforce as given: NaN was no limit at
    all (no run is past it), 0 or less failed every run at once, a str broke the
    keeper's comparison; the range is ``DISTQ_TASK_TIME_LIMIT``'s."""
    if enforceable(time_limit):
        return
    raise ValueError(
        f"task {name}: time_limit={shown_limit(time_limit)} cannot be enforced; give "
        f"seconds from {MIN_SECONDS:g} to {MAX_SECONDS:g}, or None for no limit"
    )
