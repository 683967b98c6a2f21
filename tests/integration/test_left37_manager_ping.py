"""A manager worker's readiness ping (every heartbeat with DISTQ_METRICS_PORT): what it
costs a master in connections, and what it reads as an answer."""

from __future__ import annotations

import pickle

import pytest

from distq.errors import TransportError
from distq.transport import open_transport
from fake_master import fake_master, fake_settings

pytestmark = pytest.mark.integration


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
