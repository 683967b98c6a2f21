"""An HTTP /metrics endpoint on 127.0.0.1 exporting every distq family of one role.

Each family carries a series for every value of its closed labels (state, outcome,
status), so a query that names a metric, a label or a value distq exports finds data,
and one with a typo finds none.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from spec_metrics import FAMILIES, Family, Role

FIXED_VALUES = {"transport": "redis", "queue": "distq", "task": "square"}


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would bury the test output


def registry_for(role: Role) -> CollectorRegistry:
    """A registry with every family of ``role``, each label set observed once."""
    registry = CollectorRegistry()
    for family in FAMILIES:
        if family.role in (role, "process"):
            _add(registry, family)
    return registry


def _add(registry: CollectorRegistry, family: Family) -> None:
    kinds = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
    metric = kinds[family.kind](
        family.name, f"fixture {family.name}", family.labels, registry=registry
    )
    choices = [
        sorted(family.values[label]) if label in family.values else [FIXED_VALUES[label]]
        for label in family.labels
    ]
    for values in itertools.product(*choices):
        child = metric.labels(*values)
        if isinstance(child, Histogram):
            child.observe(0.003)
        elif isinstance(child, Counter):
            child.inc(3)
        else:
            child.set(2)


@contextmanager
def serve(registry: CollectorRegistry) -> Iterator[str]:
    """Serves ``registry`` on 127.0.0.1 (a free port) until the block ends; yields host:port."""
    server: WSGIServer = make_server(
        "127.0.0.1", 0, make_wsgi_app(registry), handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="fixture-exporter", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
