"""A producer's or consumer's close after a failed call closed its connection tells the
master nothing: it does not connect afresh (against a port that accepts and never
answers, a master gone or frozen, that waited out the connect's 5 s)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from distq.config import Settings
from distq.errors import TransportError
from distq.transport import open_transport
from launch import free_port

pytestmark = pytest.mark.integration


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["consumer", "producer"])
def test_a_close_after_a_failed_call_does_not_connect(what: str) -> None:
    settings = Settings(authkey=b"k" * 32, manager_address=("127.0.0.1", free_port()))
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "client")
    try:
        closing: Any = remote.consumer("c1") if what == "consumer" else remote.producer("r")

        def call() -> object:
            return closing.fetch(1, 0.0) if what == "consumer" else closing.results(1, 0.0)

        call()  # answered: this thread's connection is open
        hosted.close()
        with pytest.raises(TransportError):  # the master is gone, its connection with it
            call()
        # what answers there now takes connections and never answers (its backlog)
        with socket.create_server(settings.manager_address):
            started = time.monotonic()
            closing.close()
            took = time.monotonic() - started
        assert took < 2, f"the close took {took:.1f} s: it connected afresh"
    finally:
        remote.close()
        hosted.close()
