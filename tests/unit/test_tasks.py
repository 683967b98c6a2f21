from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import distq
import jobs
from distq.chunks import CHUNK_TASK
from distq.ending import Endings
from distq.envelope import Task
from distq.errors import ConfigError, UnknownTask
from distq.squares import square
from distq.tasks import Registry, bound, task_name
from distq.transport import Delivery
from seam import dead_letter_reason


def test_square() -> None:
    assert square(733) == 537289
    with pytest.raises(TypeError):
        square("3")  # type: ignore[arg-type]


def test_unknown_names_and_bad_arguments() -> None:
    registry = Registry()
    with pytest.raises(UnknownTask, match="no task named 'nope'"):
        registry.resolve("nope", [], {})
    with pytest.raises(TypeError):
        registry.resolve("square", [1, 2, 3], {})
    assert registry.resolve("square", [2], {"delay": 0}) is square


def test_worker_lines_name_squares_by_number_and_others_by_name_and_arguments() -> None:
    registry = Registry()
    registry.register_path("jobs:echo")

    def task(name: str, *args: object) -> Task:
        return Task(name=name, args=list(args), reply_to="r")

    assert registry.show(task("square", 733)) == "733"
    assert registry.show(task("jobs:echo", 5, "x")) == "jobs:echo[5, 'x']"
    assert registry.show(task("nowhere:nothing", 1)) == "nowhere:nothing[1]"  # not registered
    forged = registry.show(task("x\nGet task square\x1b[8m", 1))  # no forged line, no escape
    assert forged == r"x\nGet task square\x1b[8m[1]"
    registry.register("square", square)  # registered again without its own way to show
    assert registry.show(task("square", 733)) == "square[733]"
    registry.register("jobs:echo", print, show=lambda t: f"echo of {t.args[0]}")
    assert registry.show(task("jobs:echo", 5)) == "echo of 5"


def test_register_by_import_path() -> None:
    registry = Registry()
    assert registry.register_path("jobs:echo") == "jobs:echo"
    assert registry.resolve("jobs:echo", ["x"], {})("x") == "x"
    for bad in ("jobs", "no_such_module_xyz:f", "jobs:missing"):
        with pytest.raises(ConfigError, match="--task"):
            registry.register_path(bad)


def _a(x: int, y: int = 0) -> None: ...
def _b(x: int, *rest: int) -> None: ...
def _c(x: int, *, key: int) -> None: ...
def _d(x: int, /, y: int, *, key: int = 1, **more: int) -> None: ...


@pytest.mark.parametrize("function", [_a, _b, _c, _d])
def test_argument_checks_agree_with_inspect_bind(function: Callable[..., None]) -> None:
    import inspect

    registry = Registry()
    registry.register("f", function)
    for args, kwargs in [
        ([], {}),
        ([1], {}),
        ([1, 2], {}),
        ([1, 2, 3], {}),
        ([1], {"y": 2}),
        ([1], {"key": 2}),
        ([1, 2], {"key": 3}),
        ([1], {"nope": 1}),
    ]:
        try:
            inspect.signature(function).bind(*args, **kwargs)
            fits = True
        except TypeError:
            fits = False
        if fits:
            registry.resolve("f", args, kwargs)
        else:
            with pytest.raises(TypeError):
                registry.resolve("f", args, kwargs)


def test_a_function_without_a_signature_python_can_read_is_registered_and_called_unchecked() -> (
    None
):
    registry = Registry()
    assert registry.register_path("builtins:max") == "builtins:max"  # was: ValueError
    function = registry.resolve("builtins:max", [3, 9, 4], {})
    assert function(3, 9, 4) == 9
    function = registry.resolve("builtins:max", [], {})  # unchecked: max() raises when run
    with pytest.raises(TypeError):
        function()


@pytest.mark.parametrize(
    ("source", "raised"),
    [
        ("def f(:\n", "raised SyntaxError: invalid syntax (at {path}:1)"),
        (
            "x = 1\nraise RuntimeError('boom at import')\n",
            "RuntimeError: boom at import (at {path}:2)",
        ),
        ("import sys\nsys.exit(0)\n", "raised SystemExit: 0 (at {path}:2)"),
        ("1 / 0\n", "raised ZeroDivisionError: division by zero (at {path}:1)"),
    ],
    ids=["syntax", "raises", "exits", "zero"],
)
def test_a_task_module_that_fails_to_import_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, raised: str
) -> None:
    """A traceback and exit 1 ("the job failed") before; a misconfigured worker exits 2."""
    name = f"failing_{tmp_path.name.replace('-', '_')}"
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        Registry().register_module(name)
    assert str(caught.value).startswith(f"--tasks {name!r}: importing {name!r} raised ")
    assert raised.format(path=path) in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        Registry().register_path(f"{name}:f")
    assert str(caught.value).startswith(f"--task '{name}:f': importing {name!r} raised ")


def test_an_import_error_that_cannot_be_printed_is_still_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error whose ``__str__`` raises crashed the start: two tracebacks, exit 1."""
    name = f"unprintable_{tmp_path.name.replace('-', '_')}"
    source = (
        "class E(Exception):\n    def __str__(self):\n        raise ValueError('x')\nraise E()\n"
    )
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"raised E: <exception str\(\) failed> \(at "):
        Registry().register_module(name)


def test_a_module_that_imports_what_is_not_installed_is_not_said_to_be_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module was found; a package it imports was not: "is it on PYTHONPATH?" sent
    the operator after the wrong module."""
    name = f"needs_{tmp_path.name.replace('-', '_')}"
    path = tmp_path / f"{name}.py"
    path.write_text("import no_such_dependency_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        Registry().register_module(name)
    text = str(caught.value)
    assert f"importing {name!r} raised ModuleNotFoundError: No module named " in text
    assert f"'no_such_dependency_here' (at {path}:1); install what it imports" in text
    assert "PYTHONPATH" not in text
    with pytest.raises(ConfigError, match=r"cannot import 'absent_module_x' .*on PYTHONPATH"):
        Registry().register_module("absent_module_x")
    with pytest.raises(ConfigError, match=r"cannot import 'absent_module_x\.sub' .*PYTHONPATH"):
        Registry().register_module("absent_module_x.sub")  # its package is not there either


@pytest.mark.parametrize("name", ["", ".", ".x", "..x"])
def test_an_empty_or_relative_module_name_is_refused(name: str) -> None:
    """``importlib`` raised ValueError (empty) or TypeError (relative) past the check."""
    with pytest.raises(ConfigError) as caught:
        Registry().register_module(name)
    assert str(caught.value).startswith(f"--tasks {name!r}: {name!r} is not a module's full name")
    if name:
        with pytest.raises(ConfigError) as caught:
            Registry().register_path(f"{name}:f")
        assert str(caught.value).startswith(f"--task '{name}:f': {name!r} is not a module's")


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stem: str, source: str) -> str:
    name = f"{stem}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(source.replace("MOD", name))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


WRAPPED = """
import functools
import math
import importlib
import distq

def logged(fn):
    @functools.wraps(fn)  # copies the mark too
    def wrapper(*args, **kwargs):
        return {"logged": fn(*args, **kwargs)}
    return wrapper

@distq.task
def resize(width):
    return width

resize_logged = logged(resize)

@distq.task
def dup(n):
    return "first"

first = dup

@distq.task
def dup(n):
    return "second"

@logged
@distq.task
def decorated(n):
    return n
"""


def test_tasks_runs_the_function_its_name_names_not_a_wrapper_or_an_alias_marked_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``functools.wraps`` wrapper, and an earlier definition kept under another name,
    carry the task's mark: whichever came later in the module ran instead, unsaid."""
    name = _module(tmp_path, monkeypatch, "wrapped", WRAPPED)
    registry = Registry()
    assert registry.register_module(name) == [f"{name}:decorated", f"{name}:dup", f"{name}:resize"]
    assert registry.resolve(f"{name}:resize", [320], {})(320) == 320
    assert registry.resolve(f"{name}:dup", [1], {})(1) == "second"
    # a decorator over the mark is the module's function: it runs, decorated
    assert registry.resolve(f"{name}:decorated", [1], {})(1) == {"logged": 1}


def test_tasks_refuses_a_name_marked_on_several_functions_none_of_them_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = WRAPPED + "\nkept = resize\nresize = None\n"  # neither the function nor its wrapper
    name = _module(tmp_path, monkeypatch, "lost", source)
    with pytest.raises(ConfigError) as caught:
        Registry().register_module(name)
    assert str(caught.value) == (
        f"--tasks {name!r}: kept, resize_logged are each marked as task '{name}:resize' "
        f"(a copy or a wrapper of it), and {name}:resize is none of them; keep one in the "
        "module, or register the one to run with --task module:function"
    )


CACHED = """
import functools
import math
import importlib
import distq

@distq.task
@functools.cache
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

@functools.lru_cache(maxsize=16)
@distq.task
def halve(n):
    return n // 2

class Lazy:  # an object whose every attribute read raises
    def __getattr__(self, name):
        raise RuntimeError(name)
    def __call__(self):
        return 0

lazy = Lazy()

class Proxy:  # a lazy proxy: even its __class__ is read through code that raises
    @property
    def __class__(self):
        raise RuntimeError("settings are not configured")

proxy = Proxy()
"""


def test_tasks_registers_a_marked_cached_function_as_the_executor_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``@distq.task`` above (or below) ``functools.cache`` marks the cache's wrapper,
    not a plain function: ``--tasks`` skipped it, so every call the Executor sent failed
    as UnknownTask, or the worker refused to start: "the module has no function marked"."""
    name = _module(tmp_path, monkeypatch, "cached", CACHED)
    registry = Registry()
    assert registry.register_module(name) == [f"{name}:fib", f"{name}:halve"]
    module = importlib.import_module(name)
    assert task_name(module.fib) == f"{name}:fib"  # what the Executor sends
    assert registry.resolve(f"{name}:fib", [20], {})(20) == 6765
    assert registry.resolve(f"{name}:halve", [9], {})(9) == 4
    with pytest.raises(TypeError):  # its signature is still checked
        registry.resolve(f"{name}:fib", [1, 2], {})


def test_a_wrapper_that_changes_the_arguments_is_checked_as_it_is_called() -> None:
    """A ``functools.wraps`` decorator that injects an argument or takes a keyword of its
    own: the check followed ``__wrapped__`` to the inner function, so every call that
    worked in Python failed for good ("cannot run"), and one that did not ran (input17)."""
    database = {"k": "value-of-k"}

    def with_db(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(key: str) -> Any:
            return function(database, key)

        return wrapper

    def with_retries(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, retries: int = 1) -> Any:
            return {"value": function(*args), "retries": retries}

        return wrapper

    @with_db
    def lookup(db: dict[str, str], key: str) -> str | None:
        return db.get(key)

    @with_retries
    def add(x: int, y: int) -> int:
        return x + y

    registry = Registry()
    registry.register("lookup", lookup)
    registry.register("add", add)
    assert registry.resolve("lookup", ["k"], {})("k") == "value-of-k"
    with pytest.raises(TypeError):  # as the call itself would
        registry.resolve("lookup", [database, "k"], {})
    assert registry.resolve("add", [1, 2], {"retries": 5})(1, 2, retries=5)["retries"] == 5


def test_task_refuses_a_class() -> None:
    class Point:
        pass

    Point.__qualname__ = "Point"  # as if at a module's top level
    with pytest.raises(TypeError, match=r":Point is a class; a worker sends back what"):
        distq.task(Point)


ASYNC = """
import distq

async def fetch(url):
    return url

def rows(n):
    yield from range(n)
"""


def test_an_async_def_or_a_generator_function_is_refused_where_it_is_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call of one failed for good saying its value (a coroutine, a generator) could
    not be sent back, although none of its body ran."""
    name = _module(tmp_path, monkeypatch, "notplain", ASYNC)
    for attr, kind in (("fetch", "is an async def"), ("rows", "is a generator function")):
        with pytest.raises(ConfigError, match=f"^--task '{name}:{attr}': {name}.{attr} {kind}, "):
            Registry().register_path(f"{name}:{attr}")
    marked = _module(
        tmp_path, monkeypatch, "marked", ASYNC.replace("async def", "@distq.task\nasync def")
    )
    with pytest.raises(ConfigError) as caught:
        Registry().register_module(marked)
    assert f"raised TypeError: {marked}:fetch is an async def, and a worker calls" in str(
        caught.value
    )
    with pytest.raises(TypeError, match=r"^task g is a generator function, whose call returns"):
        Registry().register("g", lambda: (yield))


class _AsyncCall:
    async def __call__(self, n: int) -> int:
        return n


def test_async_callables_of_every_shape_are_refused_or_fail_saying_why() -> None:
    """An object with async __call__ and a staticmethod of an async def registered, and
    each call failed "its value is of type coroutine" (diff13). A sync wrapper around
    one may run it (asyncio.run): refused only when a call returns a coroutine unrun."""

    async def fetch(n: int) -> int:
        return n

    for shape in (_AsyncCall(), staticmethod(fetch), functools.partial(fetch, 1)):
        with pytest.raises(TypeError, match=r"^task t is an async def, and a worker calls"):
            Registry().register("t", shape)

    @functools.wraps(fetch)
    def wrapped(n: int) -> Any:
        return fetch(n)  # a coroutine, never awaited

    registry = Registry()
    registry.register("wrapped", wrapped)
    t = Task(name="wrapped", args=[1], reply_to="r")
    ending = Endings("w1", "q").ok(Delivery(t.encode(), 1), t, wrapped(1), 0.0, 0.1)
    assert ending.outcome == "failed"
    reason = dead_letter_reason(ending)
    assert reason.startswith(
        "ran, but its value cannot be sent back: TypeError: it returned a coroutine, so none "
        "of its body ran: a worker calls a task without awaiting it;"
    ), reason


def test_a_generator_returned_and_a_coroutine_in_a_chunk_fail_saying_what_they_are() -> None:
    """A plain function returning a generator expression was told "none of its body ran"
    and to use asyncio.run; a chunk's coroutine failed as "of type coroutine", with
    Python's never-awaited warning (diff14)."""

    async def fetch(n: int) -> int:
        return n

    endings = Endings("w1", "q")
    plain = Task(name="plain", args=[], reply_to="r")
    rows = endings.ok(Delivery(plain.encode(), 1), plain, (n for n in range(3)), 0.0, 0.1)
    chunk = Task(name=CHUNK_TASK, args=["f", [[1], [2]]], reply_to="r")
    in_chunk = endings.ok(Delivery(chunk.encode(), 1), chunk, [1, fetch(2)], 0.0, 0.1)
    reasons = []
    for ending in (rows, in_chunk):
        assert ending.outcome == "failed"
        reasons.append(dead_letter_reason(ending))
    prefix = "ran, but its value cannot be sent back: TypeError: "
    assert reasons == [
        prefix + "it returned a generator, not a JSON value: return a list (list(...)); a "
        "generator function's body runs only as it is iterated",
        prefix + "call 2 returned a coroutine, so none of its body ran: a worker calls a task "
        "without awaiting it; register a plain function that runs it, e.g. "
        "def fetch_now(url): return asyncio.run(fetch(url))",
    ]


def test_bound_unwraps_every_partial_and_refuses_one_with_a_call_of_its_own() -> None:
    """A partial Python did not flatten (the inner one has an attribute) was refused as
    'neither a task name nor a module-level function'; a subclass's own __call__ was
    ignored, silent (diff12b)."""
    inner = functools.partial(jobs.add, 1)
    inner.note = "kept"  # type: ignore[attr-defined]  # Python no longer flattens it
    outer = functools.partial(inner, b=2)
    assert outer.func is inner
    assert bound(outer) == (jobs.add, (1,), {"b": 2})
    keywords = functools.partial(functools.partial(jobs.add, b=1), b=5)  # the outer one wins
    assert bound(keywords) == (jobs.add, (), {"b": 5})

    class Times10(functools.partial):  # type: ignore[type-arg]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return super().__call__(*args, **kwargs) * 10

    with pytest.raises(TypeError, match=r"Times10 is a functools\.partial with a __call__"):
        bound(Times10(jobs.add, 1))


@pytest.mark.parametrize("limit", [math.nan, math.inf, 0, -1, 0.05, 1e9, "2", True])
def test_a_time_limit_that_cannot_work_is_refused_where_it_is_registered(limit: Any) -> None:
    """A registered limit went to the keeper unchecked: NaN made no limit at all (no run
    is ever past it), 0 or -1 failed every run at once, a str broke the keeper's
    comparison. Refused as DISTQ_TASK_TIME_LIMIT refuses them, naming the task."""
    registry = Registry()
    with pytest.raises(ValueError, match=r"^task nap: time_limit="):
        registry.register("nap", square, time_limit=limit)
    assert registry.time_limits() == {}


def test_a_time_limit_in_range_is_kept() -> None:
    registry = Registry()
    registry.register("nap", square, time_limit=0.1)
    registry.register("long", square, time_limit=604800)
    assert registry.time_limits() == {"nap": 0.1, "long": 604800.0}
