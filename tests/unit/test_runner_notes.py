"""A task's exception whose ``__notes__`` cannot be read still ends as the task's failure."""

from __future__ import annotations

import io

from distq.console import Console
from distq.ending import Endings
from distq.envelope import Result, Task
from distq.runner import TaskRunner
from distq.tasks import Registry
from distq.transport import Delivery


class NotesFail(Exception):
    @property
    def __notes__(self) -> list[str]:  # type: ignore[override]
        raise RuntimeError("no notes here")


def raise_notes_fail() -> None:
    raise NotesFail("the task's own error")


def test_an_error_whose_notes_raise_fails_its_task_as_its_own_error_on_its_last_attempt() -> None:
    """``traceback.format_exception`` reads ``__notes__`` and lets what that raises out:
    on the last attempt (where the error result carries the traceback) the task ended as
    distq's own failure to handle it, a ``WorkerError`` result "the worker could not
    handle it: RuntimeError: no notes here", not as a task that failed for good with its
    own error, type and traceback. Earlier attempts (no traceback made) were retried."""
    registry = Registry()
    registry.register("notes", raise_notes_fail)
    out = io.StringIO()
    runner = TaskRunner(registry, Endings("w1", "q"), Console(out=out, err=out))
    for attempt, outcome in ((1, "retried"), (2, "failed")):
        task = Task(name="notes", args=[], reply_to="r", attempt=attempt, max_attempts=2)
        ending = runner(Delivery(body=task.encode(), tag=1))
        assert ending.outcome == outcome, ending.note
    assert ending.settlement.result is not None
    result = Result.decode(ending.settlement.result)
    assert (result.error_type, result.error_message) == (
        "NotesFail",
        "failed 2 of 2 attempts; last error: NotesFail: the task's own error",
    )
    assert 'raise NotesFail("the task\'s own error")' in (result.error_traceback or "")
