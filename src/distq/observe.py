"""Wiring: one process's health, metrics, task telemetry, HTTP endpoint and stats sampler.

The command line builds one of these per role from the settings; the worker and the
master only see the :class:`~distq.health.ProcessHealth` and the telemetry object. With
``DISTQ_METRICS_PORT`` unset there is no endpoint, no registry and no sampler: nothing
runs that nobody can read.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge

from distq.addresses import url_host_port
from distq.config import Settings
from distq.console import Console
from distq.health import ProcessHealth, WorkerHealth
from distq.http import Endpoint
from distq.logs import JsonConsole
from distq.management import ManagementApi
from distq.metrics import MasterMetrics, WorkerMetrics
from distq.sampler import StatsSampler
from distq.telemetry import MasterTelemetry, WorkerTelemetry
from distq.transport.base import Transport

BROKER_LINK = "broker"


class _Process:
    def __init__(self, settings: Settings, console: Console, health: ProcessHealth) -> None:
        self.settings, self.console, self.health = settings, console, health
        self.endpoint: Endpoint | None = None
        self.sampler: StatsSampler | None = None
        self.log = console if isinstance(console, JsonConsole) else None

    def _serve(self, registry: CollectorRegistry, ready: Gauge) -> None:
        """Serve ``registry``, whose ``ready`` gauge reads the verdict /readyz gives, at
        scrape time: a process that cannot reach its broker still answers /metrics, and
        says so there (``distq_ready`` 0)."""
        port = self.settings.metrics_port
        if port is None:
            return
        health = self.health
        ready.set_function(lambda: 1.0 if health.ready().ok else 0.0)
        self.endpoint = Endpoint(self.settings.metrics_host, port, registry, self.health).start()
        where = url_host_port(self.settings.metrics_host, self.endpoint.port)
        self.console.info(f"metrics, /healthz and /readyz on http://{where}")

    def close(self) -> None:
        self.health.readiness.stopping()
        if self.sampler is not None:
            self.sampler.stop()
        if self.endpoint is not None:
            self.endpoint.close()


class WorkerObservability(_Process):
    """A worker's: readiness from its slots' connections and a broker check each heartbeat."""

    health: WorkerHealth

    def __init__(
        self, settings: Settings, console: Console, slots: int, task_names: Iterable[str]
    ) -> None:
        super().__init__(settings, console, WorkerHealth(settings.stall_seconds, slots))
        self.metrics: WorkerMetrics | None = None
        if settings.metrics_port is not None:
            self.metrics = WorkerMetrics(settings.transport, settings.queue, task_names)
            health = self.health
            self.metrics.in_hand.set_function(lambda: health.in_hand)
            self._serve(self.metrics.registry, self.metrics.ready)
        self.telemetry = WorkerTelemetry(self.metrics, self.log)

    def attach(self, transport: Transport) -> None:
        """The transport is open: check the broker answers, once per heartbeat interval."""
        if self.endpoint is not None:
            link = self.health.readiness.link(BROKER_LINK)
            interval = self.settings.heartbeat_interval
            self.sampler = StatsSampler(transport, interval, link).start()


class MasterObservability(_Process):
    """A master's: readiness from its producer's calls and the stats sampler, which also
    feeds the queue-depth gauges every ``DISTQ_STATS_SECONDS``."""

    def __init__(self, settings: Settings, console: Console) -> None:
        super().__init__(settings, console, ProcessHealth("master", settings.stall_seconds))
        self.metrics: MasterMetrics | None = None
        if settings.metrics_port is not None:
            self.metrics = MasterMetrics(settings.transport, settings.queue)
            self._serve(self.metrics.registry, self.metrics.ready)
        self.telemetry = MasterTelemetry(self.metrics, self.log)

    def attach(self, transport: Transport) -> None:
        if self.endpoint is None:
            return
        # asked only when the transport cannot count in-flight tasks
        management = ManagementApi.from_settings(self.settings)
        self.sampler = StatsSampler(
            transport,
            self.settings.stats_seconds,
            self.health.readiness.link(BROKER_LINK),
            self.metrics,
            management,
            self.console,
        ).start()
