"""A private Prometheus server (Debian's prometheus binary) on 127.0.0.1 for the tests.

Stands in for tests/launch.py's LocalPrometheus (the same constructor, url, log_path,
start, stop, query, targets) until that lands on main; then this module goes and the
tests import that one.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

_INSTALL_HINT = (
    "`make test` installs it (Debian's prometheus package, as root on Debian); elsewhere "
    "install Prometheus 2.x so that `prometheus` and `promtool` are on PATH"
)


def require_binary(name: str) -> str:
    """The path of ``name`` (prometheus, promtool); fails the test saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {_INSTALL_HINT}", pytrace=False)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPrometheus:
    """Prometheus with ``config_yaml``, listening on 127.0.0.1 with its data in ``workdir``."""

    def __init__(self, workdir: Path, config_yaml: str) -> None:
        self.workdir = workdir
        self.config_yaml = config_yaml
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self, timeout: float = 30) -> LocalPrometheus:
        """Starts the server and waits until /-/ready answers 200."""
        binary = require_binary("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_yaml)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited at start; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready within {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; idempotent."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)

    def _api(self, path: str, **params: str) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as answer:
                body: dict[str, Any] = json.load(answer)
        except urllib.error.HTTPError as error:
            body = json.load(error)  # Prometheus explains a refused query in the body
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        data: dict[str, Any] = body["data"]
        return data

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` gives now; RuntimeError with Prometheus' reason."""
        result: list[dict[str, Any]] = self._api("/api/v1/query", query=expr)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (``/api/v1/targets``)."""
        active: list[dict[str, Any]] = self._api("/api/v1/targets")["activeTargets"]
        return active
