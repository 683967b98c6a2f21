"""The worker's keeper thread ending, or failing to start a slot's thread again: never
in silence, on the real manager transport hosted in this process."""

from __future__ import annotations

import io
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from distq.cli import _exit_code
from distq.config import Settings
from distq.console import Console
from distq.envelope import Task
from distq.errors import CertificateRejected, ConfigError
from distq.keeper import Keeper
from distq.tasks import Registry
from distq.transport import Transport, open_transport
from distq.worker import Worker, WorkerOptions
from launch import free_port

LEASE = 1.2


@pytest.fixture
def short_lease() -> Iterator[Transport]:
    """A manager master hosted in this process, on a lease of 1.2 s."""
    settings = Settings(
        authkey=secrets.token_bytes(8),
        manager_address=("127.0.0.1", free_port()),
        lease_seconds=LEASE,
    )
    hosted = open_transport(settings, "master")
    yield hosted
    hosted.close()


RAN: list[str] = []  # the tasks ``runs`` ran, in order


def runs(task_id: str, *, seconds: float) -> None:
    RAN.append(task_id)
    time.sleep(seconds)


def run_with_a_broken_keeper(
    transport: Transport,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    fail: Callable[[Keeper], None],
) -> tuple[Worker, int, str, Task, list[BaseException | None]]:
    """A 2-slot worker on ``transport`` running one 3 s task, its keeper's ``where``
    calling ``fail`` (which raises) once a batch runs: the worker, its exit code (a
    refusal's as ``distq worker`` has it, its line last), its output, the task, and the
    errors that ended threads (their tracebacks kept off)."""
    RAN.clear()
    producer = transport.producer("replies")
    long = Task(name="runs", args=["t-long"], kwargs={"seconds": 3.0}, reply_to="replies")
    producer.submit([long.encode()])
    registry = Registry()
    registry.register("runs", runs)
    original = getattr(Keeper, where)

    def broken(self: Keeper, *args: Any) -> Any:
        slots = args[0] if isinstance(args[0], list) else [args[0]]
        if any(slot.batch is not None for slot in slots):
            fail(self)
        return original(self, *args)

    monkeypatch.setattr(Keeper, where, broken)
    caught: list[BaseException | None] = []
    monkeypatch.setattr("threading.excepthook", lambda args: caught.append(args.exc_value))
    out = io.StringIO()
    options = WorkerOptions(
        worker_id="w", concurrency=2, prefetch=1, heartbeat_interval=LEASE / 3, exit_when_idle=6
    )
    worker = Worker(transport, registry, options, Console(quiet=True, out=out, err=out))
    try:
        code = worker.run()
    except (ConfigError, CertificateRejected) as exc:  # as `distq worker` ends on it
        out.write(f"{exc}\n")
        code = _exit_code(exc)
    producer.close()
    return worker, code, out.getvalue(), long, caught


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("where", "error", "said_as"),
    [
        ("_renew_after", ValueError("boom"), "ValueError: boom"),  # outside _keeping
        ("_hand_back", SystemExit(3), "SystemExit: 3"),  # in it, but no Exception
    ],
)
def test_a_keeper_that_ends_on_an_error_stops_the_worker_handing_its_tasks_back(
    short_lease: Transport,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    error: BaseException,
    said_as: str,
) -> None:
    """An error in the keeper's loop outside its work on a slot (_renew_after), or one
    that is no Exception, ended its thread in silence: the worker ran on, the long task's
    lease lapsed and the other slot ran it again, and the worker exited 0."""

    def fail(_: Keeper) -> None:
        raise error

    worker, code, said, long, caught = run_with_a_broken_keeper(
        short_lease, monkeypatch, where, fail
    )
    assert code == 1, said
    assert RAN == ["t-long"], said  # not again on the other slot, once its lease lapsed
    assert (
        f"the keeper stopped: {said_as} (a bug in distq: please report this line); "
        "without it no lease is renewed and no time limit enforced: the worker stops at "
        "once, handing back the tasks it holds (exit 1)"
    ) in said, said
    assert caught == [error]  # its traceback, on stderr
    ready = worker.health.readiness.check()  # not ready from the keeper's end: stopping
    assert (ready.ok, ready.body.get("reason")) == (False, "process: stopping"), ready
    back = short_lease.consumer("after")  # handed back: queued again at once
    assert [Task.decode(d.body).id for d in back.fetch(1, 0.5)] == [long.id], said
    back.close()


@pytest.mark.timeout(60)
def test_a_keeper_that_ends_as_a_second_signal_stops_the_worker_is_said_exit_1(
    short_lease: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper's end is said by the main loop, which a second SIGTERM's stop at once
    leaves (Shutdown): a keeper that ended as it came went unsaid, and the worker exited
    0 with a bug in distq behind it (only the thread's traceback, on stderr)."""

    def fail(_: Keeper) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # stop warm
        time.sleep(0.2)  # handled apart: two at once are one
        os.kill(os.getpid(), signal.SIGTERM)  # stop at once: Shutdown in the main loop
        raise ValueError("boom")

    _, code, said, _, _ = run_with_a_broken_keeper(short_lease, monkeypatch, "_renew_after", fail)
    assert "SIGTERM again: handing back every task in hand and exiting" in said, said
    assert "the keeper stopped: ValueError: boom (a bug in distq: " in said, said
    assert code == 1, said


#: A refusal as the keeper meets one (a Redis queue key of another type): its text.
REFUSED = "the broker refused a setting (a test's)"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("refusal", "code", "stated"),
    [
        (
            ConfigError(REFUSED),
            2,
            "(exit 2, for the error said last)",
        ),
        (
            CertificateRejected(REFUSED),
            3,
            "(exit 3, for the error said last)",
        ),
    ],
)
def test_a_keeper_that_ends_while_a_setting_is_refused_says_the_refusal_s_exit(
    short_lease: Transport,
    monkeypatch: pytest.MonkeyPatch,
    refusal: ConfigError | CertificateRejected,
    code: int,
    stated: str,
) -> None:
    """A keeper that ended while a refusal stopped the worker said "(exit 1)", and the
    worker exited 2 (the refusal's, raised at the end): a line stated a status the
    process did not exit with. It states the refusal's now, and the refusal is said last."""

    def fail(keeper: Keeper) -> None:
        keeper._refused(refusal)  # as its renewal met it: the worker stops warm
        raise ValueError("boom")

    _, exit_code, said, _, _ = run_with_a_broken_keeper(
        short_lease, monkeypatch, "_renew_after", fail
    )
    assert "the keeper stopped: ValueError: boom" in said, said
    assert f"handing back the tasks it holds {stated}" in said, said
    assert "(exit 1)" not in said, said
    assert said.strip().splitlines()[-1].endswith(REFUSED), said
    assert exit_code == code, said


@pytest.mark.timeout(60)
def test_a_setting_refused_after_the_keeper_s_end_was_said_leaves_its_exit_1(
    short_lease: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper's end said "(exit 1)"; a refusal a slot met after it (in its broker
    call as the worker stopped) made the worker exit 2 all the same. The status a line
    stated holds; the refusal is said, last."""
    ended = Worker._keeper_ended

    def then_refused(self: Worker) -> bool:
        said = ended(self)
        if said:
            self._refused(ConfigError(REFUSED))  # a slot's, just after the line
        return said

    monkeypatch.setattr(Worker, "_keeper_ended", then_refused)

    def fail(_: Keeper) -> None:
        raise ValueError("boom")

    _, code, said, _, _ = run_with_a_broken_keeper(short_lease, monkeypatch, "_renew_after", fail)
    assert "handing back the tasks it holds (exit 1)" in said, said
    assert said.strip().splitlines()[-1].endswith(REFUSED), said
    assert code == 1, said


@pytest.mark.parametrize(
    ("error", "said_as"),
    [
        (RuntimeError("can't start new thread"), "can't start new thread"),
        (MemoryError(), "MemoryError"),
    ],
)
def test_a_keeper_that_cannot_start_stops_the_worker_naming_the_limit(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, error: BaseException, said_as: str
) -> None:
    """A keeper's thread that could not start for want of memory (``ulimit -v``), not of
    threads, raised MemoryError out of run(): a traceback, no "worker exit" line."""
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == "distq-keeper":
            raise error
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    out = io.StringIO()
    worker = Worker(
        transport, Registry(), WorkerOptions(worker_id="w"), Console(quiet=True, out=out, err=out)
    )
    with pytest.raises(ConfigError) as caught:
        worker.run()
    assert str(caught.value).startswith(
        f"could not start its keeper ({said_as}): the process is at a limit on threads or memory"
    ), out.getvalue()
    assert "worker exit." in out.getvalue()
