"""Prometheus: :class:`LocalPrometheus`."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

from launch.server import HOST, LocalServer, ServerError, free_port, http_json, program


class LocalPrometheus(LocalServer):
    """Debian's ``prometheus`` on a free loopback port, its TSDB in ``workdir/data``.

    ``config_yaml`` is the body of ``prometheus.yml`` (``scrape_configs:``, ``rule_files:``
    ...); a ``global:`` block with ``scrape_interval`` and ``evaluation_interval`` is put
    before it unless it has its own.
    """

    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        config_yaml: str,
        *,
        scrape_interval: str = "1s",
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(workdir, die_with_parent=die_with_parent)
        self.config_yaml = config_yaml
        self.scrape_interval = scrape_interval
        self.port = free_port()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (``/api/v1/query``): a vector's samples
        (``{"metric": {...}, "value": [time, "text"]}``); a scalar is ``[time, "text"]``.

        Raises ServerError with Prometheus's message when the query is refused.
        """
        result: list[dict[str, Any]] = self._api("/api/v1/query", query=expr)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (``/api/v1/targets``), with ``health`` and ``lastError``."""
        active: list[dict[str, Any]] = self._api("/api/v1/targets")["activeTargets"]
        return active

    def _api(self, path: str, **params: str) -> dict[str, Any]:
        body = http_json(self.url, path, **params)
        if body.get("status") != "success":
            raise ServerError(f"{path}: {body.get('errorType')}: {body.get('error')}")
        data: dict[str, Any] = body["data"]
        return data

    def _command(self) -> list[str]:
        return [
            program("prometheus", "prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
        ]

    def _prepare(self) -> None:
        config = self.config_yaml
        if not any(line.startswith("global:") for line in config.splitlines()):
            config = (
                f"global:\n  scrape_interval: {self.scrape_interval}\n"
                f"  evaluation_interval: {self.scrape_interval}\n{config}"
            )
        self.config_path.write_text(config)

    def _check(self) -> None:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            response.read()
