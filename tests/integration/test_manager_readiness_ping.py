"""A manager worker's readiness ping (every heartbeat with DISTQ_METRICS_PORT): what it
costs a master in connections, and what it reads as an answer."""

from __future__ import annotations

import concurrent.futures
import pickle
import threading
from typing import Any

import pytest

from conftest import hosted_and_remote
from distq.errors import TransportError
from distq.transport import Transport, open_transport
from fake_master import fake_master, fake_settings

pytestmark = pytest.mark.integration


def _counting_accepts(hosted: Transport) -> list[object]:
    """The connections the master ``hosted`` accepts from now on, each as its serving
    thread starts (its listener's ``accept`` is already waiting: patched, it missed one)."""
    serve, accepted = hosted._serve, []  # type: ignore[attr-defined]

    def counted(conn: Any) -> None:
        accepted.append(conn)
        serve(conn)

    hosted._serve = counted  # type: ignore[attr-defined]
    return accepted


def _sampler() -> concurrent.futures.ThreadPoolExecutor:
    """One thread of its own, as a worker's sampler pings (its own connection)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="distq-stats")


def test_a_workers_pings_cost_its_master_one_connection() -> None:
    # each new master (one a job: the bench's, a user's) cost a pinging worker two
    # connections, each a handshake and a thread there: one for the proxy's `create`,
    # closed at once, one kept for the pings; the worker's slots had made that proxy's
    # broker already (every proxy of a master is of its one broker)
    with hosted_and_remote(fake_settings("pingconns")) as (hosted, remote):
        consumer = remote.consumer("slot-1")  # a slot's, as a worker's sampler starts after
        consumer.fetch(1, 0.0)
        accepted = _counting_accepts(hosted)
        with _sampler() as sampler:
            for _ in range(5):
                sampler.submit(remote.ping).result(30)
        assert len(accepted) == 1, [(conn.peer, conn.refused) for conn in accepted]  # type: ignore[attr-defined]
        consumer.close()


@pytest.mark.parametrize("first", ["slot", "ping"])
def test_a_workers_ping_after_its_master_restarted_connects_to_the_new_one(first: str) -> None:
    # the kept broker of the master before is not the new master's: the ping that finds
    # it gone fails (readiness down), the next one is the new master's answer, whether a
    # slot's proxy or the ping's own came first
    settings = fake_settings("pingagain")
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    try:
        with _sampler() as sampler:
            if first == "ping":
                sampler.submit(remote.ping).result(30)
            remote.consumer("slot-1").fetch(1, 0.0)
            sampler.submit(remote.ping).result(30)
            hosted.close()
            hosted = open_transport(settings, "master")
            with pytest.raises(TransportError):
                sampler.submit(remote.ping).result(30)
            sampler.submit(remote.ping).result(30)
            sampler.submit(remote.ping).result(30)
    finally:
        remote.close()
        hosted.close()


def test_a_workers_pings_cost_a_master_started_again_one_connection() -> None:
    # a master started per job on the address: the worker's slots connect to the new one
    # before its ping finds the one before gone; the ping after used a create again, two
    # connections, where a slot's proxy of the new master was there to be made of
    settings = fake_settings("pingnew")
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    try:
        with _sampler() as sampler:
            slot = remote.consumer("slot-1")
            slot.fetch(1, 0.0)
            sampler.submit(remote.ping).result(30)
            hosted.close()
            hosted = open_transport(settings, "master")
            slot.close()  # as a slot that lost its master: then it connects again
            remote.consumer("slot-1").fetch(1, 0.0)
            with pytest.raises(TransportError):
                sampler.submit(remote.ping).result(30)  # the master before: gone
            accepted = _counting_accepts(hosted)
            for _ in range(3):
                sampler.submit(remote.ping).result(30)
        assert len(accepted) == 1, len(accepted)
    finally:
        remote.close()
        hosted.close()


@pytest.mark.parametrize("first", ["slot", "ping"])
def test_a_workers_first_ping_costs_its_master_one_connection_before_its_slots_too(
    first: str,
) -> None:
    # a worker's sampler pings as the transport opens, before its slots made a proxy: the
    # ping made its own with a create, two connections at the first master where one does
    # once a slot's proxy is there (the ping now waits for that, as readiness does: no
    # slot connected, no worker ready). Either order costs the master the same
    settings = fake_settings("pingfirst")
    hosted = open_transport(settings, "master")
    accepted = _counting_accepts(hosted)
    remote = open_transport(settings, "worker")
    entered = threading.Event()

    def ping() -> None:
        entered.set()
        remote.ping()

    try:
        with _sampler() as sampler:
            if first == "ping":
                pinged = sampler.submit(ping)
                assert entered.wait(30)
            consumer = remote.consumer("slot-1")
            consumer.fetch(1, 0.0)
            if first == "slot":
                pinged = sampler.submit(ping)
            pinged.result(30)
            for _ in range(3):
                sampler.submit(remote.ping).result(30)
        # the worker's open (1), the slot's create and its own (2), the sampler's own (1)
        assert len(accepted) == 4, [(conn.peer, conn.refused) for conn in accepted]  # type: ignore[attr-defined]
        consumer.close()
    finally:
        remote.close()
        hosted.close()


def test_a_workers_ping_reads_a_stray_none_as_its_master_closing() -> None:
    # a stopping master ends a connection with one stray None reply; the ping read it as
    # message_limit's answer (3a2f9ea), readiness up a heartbeat after the master left
    settings = fake_settings("pingstray")
    with fake_master(settings, "message_limit", pickle.dumps(("#RETURN", None))):
        remote = open_transport(settings, "worker")
        try:
            with pytest.raises(TransportError, match="closed the connection"):
                remote.ping()
        finally:
            remote.close()
