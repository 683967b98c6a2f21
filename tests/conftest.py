"""Shared fixtures: one ``target`` per transport, pointing at a real broker.

``target`` is parametrized over ``manager``, ``redis`` and ``rabbitmq``; the broker
fixtures (tests/brokers.py) are requested only by the transports that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pytest

import nonblocking
from distq import commands
from distq.codec import Codec
from distq.config import Settings
from distq.console import Console
from distq.envelope import DeadLetter, Result
from distq.signing import SIGNED
from distq.transport import Producer, Transport, open_transport
from launch import free_port
from procs import REPO as REPO  # re-exported: tests import it from here
from procs import Distq, Spawn

pytest_plugins = ["brokers"]


def pytest_configure(config: pytest.Config) -> None:
    """SIGINT back to Python's default in each test process when it came in ignored, as
    a shell's background job (`make test &` in a script) gets it: every process a test
    starts inherited the ignore, and the tests of what Ctrl-C does failed (5 of them)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


TRANSPORTS = ("manager", "redis", "rabbitmq")


@dataclass(frozen=True)
class Target:
    """One transport on one real broker: settings, and the same as environment variables."""

    name: str
    settings: Settings
    env: dict[str, str] = field(default_factory=dict)
    bad_credentials_env: dict[str, str] = field(default_factory=dict)

    def fresh(self, **changes: Any) -> Target:
        """The same target on a queue (and, for manager, a port) of its own."""
        queue = f"t{secrets.token_hex(4)}"
        settings = replace(self.settings, queue=queue, **changes)
        if self.name == "manager":
            settings = replace(settings, manager_address=("127.0.0.1", free_port()))
        env = dict(self.env, DISTQ_QUEUE=queue, DISTQ_LEASE_SECONDS=str(settings.lease_seconds))
        bad = dict(self.bad_credentials_env, DISTQ_QUEUE=queue)
        if self.name == "manager":
            address = f"127.0.0.1:{settings.manager_address[1]}"
            env["DISTQ_MANAGER_ADDRESS"] = bad["DISTQ_MANAGER_ADDRESS"] = address
        return Target(self.name, settings, env, bad)

    def process_env(self, **extra: str) -> dict[str, str]:
        """An environment for a distq subprocess on this target."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env


@pytest.fixture(params=TRANSPORTS)
def target(request: pytest.FixtureRequest) -> Target:
    """A fresh queue on a real broker, once per transport."""
    return target_named(request, request.param)


def target_named(request: pytest.FixtureRequest, name: str) -> Target:
    """A fresh queue on the real broker of transport ``name`` (the ``target`` fixture's)."""
    if name == "manager":
        key = secrets.token_hex(16)
        settings = Settings(transport="manager", authkey=key.encode(), lease_seconds=1.0)
        return Target(
            name,
            settings,
            {"DISTQ_TRANSPORT": "manager", "DISTQ_AUTHKEY": key},
            {"DISTQ_TRANSPORT": "manager", "DISTQ_AUTHKEY": "not-" + key},
        ).fresh()
    broker = request.getfixturevalue("redis_broker" if name == "redis" else "rabbitmq_broker")
    var = "DISTQ_REDIS_URL" if name == "redis" else "DISTQ_AMQP_URL"
    field_name = "redis_url" if name == "redis" else "amqp_url"
    settings = Settings(transport=name, lease_seconds=1.0, **{field_name: broker.url})
    return Target(
        name,
        settings,
        {"DISTQ_TRANSPORT": name, var: broker.url},
        {"DISTQ_TRANSPORT": name, var: broker.bad_credentials_url},
    ).fresh()


@pytest.fixture
def transport() -> Iterator[Transport]:
    """A manager transport hosted in this process, on a free port: no broker to start."""
    settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
    hosted = open_transport(settings, "master")
    yield hosted
    hosted.close()


@contextlib.contextmanager
def hosted_and_remote(
    settings: Settings, role: Literal["worker", "client"] = "worker", most: int | None = None
) -> Iterator[tuple[Transport, Transport]]:
    """A master's transport on ``settings`` hosted in this process (a manager's master)
    and a ``role``'s connected to it, at ``most`` bytes of DISTQ_MAX_MESSAGE_BYTES if
    given (else the master's): both closed after."""
    hosted = open_transport(settings, "master")
    try:
        theirs = settings if most is None else replace(settings, max_message_bytes=most)
        remote = open_transport(theirs, role)
    except BaseException:
        hosted.close()
        raise
    try:
        yield hosted, remote
    finally:
        _close_each(remote, hosted)


def _close_each(*transports: Transport) -> None:
    """Close every one of ``transports``, though one's close raises; then raise the first
    error: a remote's raising left the hosted master (its port, its threads) open."""
    errors: list[Exception] = []
    for transport in transports:
        try:
            transport.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def hosted(target: Target) -> Iterator[Transport]:
    """The master's side of ``target``: for manager this process hosts the queues."""
    transport = open_transport(target.settings, "master")
    yield transport
    transport.close()


@pytest.fixture
def remote(target: Target, hosted: Transport) -> Iterator[Transport]:
    """A worker's side of ``target``, connected over the network like a real worker."""
    transport = open_transport(target.settings, "worker")
    yield transport
    transport.close()


@pytest.fixture
def spawn(target: Target) -> Iterator[Spawn]:
    """Start distq subprocesses on ``target``; every one is stopped at teardown."""
    started: list[Distq] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Distq:
        proc = Distq(list(args), env if env is not None else target.process_env())
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(grace=3.0)  # a master still waiting for tasks would drain for 5 s


@pytest.fixture
def workers() -> Iterator[list[Distq]]:
    """The distq processes a test starts itself and adds here; each stopped at teardown."""
    started: list[Distq] = []
    yield started
    for proc in started:
        proc.stop(grace=3.0)


@pytest.fixture
def full_pipe() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """A text stream on a pipe whose writing end is O_NONBLOCK and fills up, and the
    pipe's reading end (:func:`nonblocking.full_pipe`)."""
    with nonblocking.full_pipe() as pipe:
        yield pipe


def requeue_dead_stopped_at(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, letter: int, stop: Callable[[], None]
) -> str:
    """``distq requeue-dead`` on ``settings``, calling ``stop`` (the broker or master
    going away) as its ``letter``-th dead letter is revived: asserts it exits 3, and
    returns what it said on stderr."""
    made = commands.reviver

    def stopping(*args: Any, **kwargs: Any) -> Any:
        revive, calls = made(*args, **kwargs), [0]

        def revive_then_stop(dead: DeadLetter) -> bytes:
            calls[0] += 1
            if calls[0] == letter:
                stop()
            return revive(dead)

        return revive_then_stop

    monkeypatch.setattr(commands, "reviver", stopping)
    err = io.StringIO()
    args = argparse.Namespace(role="requeue-dead", limit=None)
    assert commands.run(args, settings, Console(out=io.StringIO(), err=err)) == 3
    return err.getvalue()


def answers_of_a_signing_worker(
    target: Target, producer: Producer, key: bytes, signed: Codec, count: int
) -> tuple[dict[str, Result], str]:
    """The answers to the ``count`` tasks queued for ``producer`` that a worker holding
    ``key`` as its signing key (``--exit-when-idle 3``) runs or refuses, by task id (a
    signed body opened with ``signed``, an unsigned one, a refusal's, as it is), and the
    worker's output: asserts it exits 0."""
    worker = Distq(
        ["worker", "--exit-when-idle", "3"],
        target.process_env(DISTQ_SIGNING_KEYS=key.decode()),
    )
    try:
        answers: dict[str, Result] = {}
        deadline = time.monotonic() + 60
        while len(answers) < count and time.monotonic() < deadline:
            for body in producer.results(count, 0.2):
                codec = signed if body.startswith(SIGNED) else Codec()  # a pack: DQSIG2
                for envelope in codec.open_results(body):
                    result = Result.decode(envelope)
                    answers[result.task_id] = result
        assert worker.wait(60) == 0, worker.output()
        return answers, worker.output()
    finally:
        worker.stop()
