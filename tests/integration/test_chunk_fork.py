"""A forked child that returns out of one call of a chunk (Executor.map(chunksize=N))."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from distq.console import Console
from distq.envelope import Task
from distq.tasks import Registry
from distq.transport import Transport
from distq.worker import Worker, WorkerOptions
from seam import results_of
from worker_tasks import fork_and_end

pytestmark = pytest.mark.integration


def fork_on_first(x: int, marks: str) -> object:
    """Marks its call; the first call forks a child that returns out of it
    (:func:`worker_tasks.fork_and_end`)."""
    Path(marks, f"{x}-{os.getpid()}").touch()
    return fork_and_end("return") if x == 1 else x


def test_a_child_forked_in_a_chunk_runs_none_of_the_chunks_other_calls(
    transport: Transport, tmp_path: Path
) -> None:
    producer = transport.producer("chunkfork.results")
    registry = Registry()
    registry.register("fork_on_first", fork_on_first)
    calls = [[1, str(tmp_path)], [2, str(tmp_path)], [3, str(tmp_path)]]
    task = Task(
        name="distq:chunk",
        args=["fork_on_first", calls],
        reply_to=producer.reply_to,
        max_attempts=1,
    )
    producer.submit([task.encode()])
    out = io.StringIO()
    options = WorkerOptions(worker_id="w", heartbeat_interval=0.3, exit_when_idle=1.0)
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    results = results_of(producer, 2, within=2)
    assert [(r.status, r.value) for r in results] == [("ok", [0, 2, 3])], out.getvalue()
    ran = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert ran == ["1", "2", "3"]  # each call once: none again in the child
    producer.close()
