"""The worker's keeper on the real manager transport: a master hosted in this process,
the keeper's calls going to it over TCP as a worker's do."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import hosted_and_remote
from distq.backoff import Outage
from distq.batch import Batch
from distq.console import Console
from distq.health import WorkerHealth
from distq.keeper import Keeper
from distq.slots import Slot
from distq.timelimits import TimeLimits
from distq.transport import Transport
from fake_master import fake_settings


@pytest.fixture
def master_and_worker() -> Iterator[tuple[Transport, Transport]]:
    with hosted_and_remote(fake_settings("keeper", lease_seconds=6.0)) as pair:
        yield pair


def _keeper(transport: Transport, interval: float, stopping: threading.Event) -> Keeper:
    out = io.StringIO()
    return Keeper(
        transport,
        WorkerHealth(),
        Outage(),
        Console(out=out, err=out),
        interval=interval,
        limits=TimeLimits(),
        stopping=stopping,
        settle=lambda slot, endings, rest: [],
        count=lambda slot, endings, released, kept=0: None,
        drop_consumer=lambda slot, why: 0,
        timed_out=lambda *args: pytest.fail("no time limit here"),
        start_slot=lambda slot: None,
        cannot_start=lambda which, exc: None,
        lost=lambda exc: None,
        back=lambda: None,
        refused=lambda exc: None,
    )


@pytest.mark.timeout(90)
def test_the_keepers_first_hand_back_waits_for_the_master_no_longer_than_its_renewals(
    master_and_worker: tuple[Transport, Transport],
) -> None:
    # the transport bounds the keeper's calls to a third of the lease, but it knew the
    # keeper's thread only from its first renewal, which comes after the tick's
    # hand-backs: the first hand-back of a worker's life, on a master that did not
    # answer, waited the whole REPLY_TIMEOUT (30 s), every running lease lapsing meanwhile
    hosted, remote = master_and_worker
    lease = 6.0
    broker: Any = hosted._broker  # type: ignore[attr-defined]
    release, calls = broker.release, []

    def silent_once(*args: Any) -> None:  # the master answers this one call late
        calls.append(args)
        if len(calls) == 1:
            time.sleep(12)
        release(*args)

    broker.release = silent_once
    hosted.producer(hosted.reply_queue("job")).submit([b"running", b"not started"])
    slot = Slot(0)
    consumer = slot.consumer = remote.consumer("w-0")
    got = consumer.fetch(2, 2.0)
    assert len(got) == 2
    slot.renewed = time.monotonic()
    slot.batch = Batch(got[1:])  # got[0] runs long
    took: list[float] = []
    kept = consumer.release

    def timed(deliveries: Any) -> int:
        started = time.monotonic()
        try:
            return kept(deliveries)
        finally:
            took.append(time.monotonic() - started)

    consumer.release = timed  # type: ignore[method-assign]
    done, stopping = threading.Event(), threading.Event()
    keeper = _keeper(remote, lease / 3, stopping)
    thread = threading.Thread(target=keeper.keep, args=([slot], done), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 40
        while not took and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        thread.join(40)
    assert took, "the keeper handed nothing back"
    assert took[0] < lease - 1, f"{took[0]:.1f} s"
