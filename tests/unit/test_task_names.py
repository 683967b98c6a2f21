"""Task names: @distq.task, --tasks MODULE, and the name an executor sends for a function."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

import distq
import jobs
from distq.chunks import CHUNK_TASK, chunk_arguments
from distq.envelope import Task
from distq.errors import ConfigError, UnknownTask
from distq.tasks import TASK_ATTRIBUTE, Registry, function_path, task_name


def test_a_marked_function_is_named_by_its_module_path_and_still_runs() -> None:
    assert getattr(jobs.add, TASK_ATTRIBUTE) == "jobs:add"
    assert jobs.add(2, 3) == 5
    assert task_name(jobs.add) == "jobs:add"
    assert task_name(jobs.not_a_task) == "jobs:not_a_task"  # unmarked: by its path too
    assert task_name("mypkg.jobs:resize") == "mypkg.jobs:resize"


def test_what_workers_cannot_import_is_refused_with_the_reason() -> None:
    def nested() -> None: ...

    class Holder:
        def method(self) -> None: ...

    with pytest.raises(TypeError, match="not a module-level function"):
        task_name(lambda: None)
    with pytest.raises(TypeError, match="not a module-level function"):
        task_name(nested)
    with pytest.raises(TypeError, match="not a module-level function"):
        distq.task(Holder.method)
    with pytest.raises(TypeError, match="neither a task name nor"):
        task_name(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the task name is empty"):
        task_name("")


@pytest.fixture
def script_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A stand-in ``__main__`` whose function is defined in it."""
    main = types.ModuleType("__main__")
    exec("def job(x):\n    return x\n", main.__dict__)  # a function whose module is __main__
    monkeypatch.setitem(sys.modules, "__main__", main)
    yield main


def test_a_function_of_a_script_is_refused_unless_run_with_python_m(
    script_module: types.ModuleType,
) -> None:
    job = script_module.job
    with pytest.raises(TypeError, match=r"defined in the script being run \(__main__\)"):
        function_path(job)
    script_module.__spec__ = types.SimpleNamespace(name="mypkg.tool")  # type: ignore[assignment]
    assert function_path(job) == "mypkg.tool:job"


def test_tasks_module_registers_every_marked_function_and_nothing_else() -> None:
    registry = Registry()
    names = registry.register_module("jobs")
    assert names == [
        "jobs:add",
        "jobs:chatter",
        "jobs:fail_with",
        "jobs:leave_thread",
        "jobs:repeat",
        "jobs:say",
        "jobs:sleep_then",
        "jobs:wait_for_path",
    ]
    assert registry.resolve("jobs:add", [1, 2], {})(1, 2) == 3
    for unmarked in ("jobs:not_a_task", "jobs:echo", "jobs:_raise"):
        with pytest.raises(UnknownTask):
            registry.resolve(unmarked, [1], {})


def test_tasks_module_errors_name_the_module_and_the_fix() -> None:
    registry = Registry()
    with pytest.raises(ConfigError, match="--tasks 'no_such_module_xyz': cannot import"):
        registry.register_module("no_such_module_xyz")
    with pytest.raises(ConfigError, match="--tasks 'seam': the module has no function marked"):
        registry.register_module("seam")


def test_a_chunk_runs_registered_calls_in_order() -> None:
    registry = Registry()
    registry.register_module("jobs")
    args = chunk_arguments("jobs:add", [[1, 2], (3, 4), [5, 6]])
    assert args == ["jobs:add", [[1, 2], [3, 4], [5, 6]]]
    assert registry.resolve(CHUNK_TASK, args, {})(*args) == [3, 7, 11]
    shown = registry.show(Task(name=CHUNK_TASK, args=args, reply_to="r"))
    assert shown == "jobs:add x3"


def test_a_chunk_that_cannot_run_fails_before_any_call_runs() -> None:
    registry = Registry()
    registry.register_module("jobs")
    with pytest.raises(UnknownTask, match="no task named 'jobs:echo'"):
        registry.resolve(CHUNK_TASK, chunk_arguments("jobs:echo", [[1]]), {})
    with pytest.raises(TypeError):  # the second call does not fit add(a, b)
        registry.resolve(CHUNK_TASK, chunk_arguments("jobs:add", [[1, 2], [1]]), {})
    bad: list[tuple[list[Any], dict[str, Any]]] = [
        (["jobs:add"], {}),
        (["jobs:add", "not a list"], {}),
        (["jobs:add", [1]], {}),
        (["jobs:add", [[1, 2]]], {"x": 1}),
        (chunk_arguments(CHUNK_TASK, [[]]), {}),
    ]
    for bad_args, bad_kwargs in bad:
        with pytest.raises(TypeError):
            registry.resolve(CHUNK_TASK, bad_args, bad_kwargs)
    # two of the cases above fail for another reason (no arguments; *1): these fail
    # only for the check they name, which a hand-made task would otherwise get past
    with pytest.raises(TypeError, match="list of arguments"):
        registry.resolve(CHUNK_TASK, ["jobs:add", ["ab"]], {})
    with pytest.raises(TypeError, match="cannot run chunks"):
        registry.resolve(CHUNK_TASK, [CHUNK_TASK, [["jobs:add", [[1, 2]]]]], {})
