"""Reading distq's HTTP endpoints (``/metrics``, ``/healthz``, ``/readyz``) from tests."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; (0, reason) when nothing answers."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, repr(exc)


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    status, body = get(port, path)
    return status, json.loads(body) if status else {"error": body}


def wait_for(
    ports: list[int], path: str, status: int, timeout: float, alive: list[int] | None = None
) -> dict[int, dict[str, Any]]:
    """Wait until ``path`` answers ``status`` on every port, and return those answers;
    meanwhile every port in ``alive`` must answer 200 on ``/healthz`` each time it is asked."""
    deadline = time.monotonic() + timeout
    while True:
        for port in alive or []:
            live = probe(port, "/healthz")
            assert live[0] == 200, f"/healthz on {port} answered {live} meanwhile"
        seen = {port: probe(port, path) for port in ports}
        if all(answer[0] == status for answer in seen.values()):
            return {port: answer[1] for port, answer in seen.items()}
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} is not {status} within {timeout} s: {seen}")
        time.sleep(0.2)


def promtool_check(exposition: str) -> None:
    """Fail unless ``promtool check metrics`` finds nothing to say about ``exposition``."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: `make test` installs Debian's prometheus "
            "(or apt-get install prometheus)"
        )
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"promtool check metrics: {done.stdout}{done.stderr}"


def link_local_or_skip() -> tuple[str, str]:
    """A link-local IPv6 address of this machine and its interface (``fe80::1``,
    ``eth0``), one a socket can listen on; else the test is skipped."""
    try:
        with open("/proc/net/if_inet6") as table:
            rows = [row.split() for row in table]
    except OSError as exc:
        pytest.skip(f"no IPv6 address table here: {exc}")
    # a container's own interfaces last: they come and go with the containers
    rows.sort(key=lambda row: row[-1].startswith(("veth", "br-", "docker")))
    for row in rows:
        if len(row) == 6 and row[3] == "20":  # scope: link
            address = str(ipaddress.IPv6Address(int(row[0], 16)))
            try:
                found = socket.getaddrinfo(
                    f"{address}%{row[5]}", 0, socket.AF_INET6, 0, 0, socket.AI_NUMERICHOST
                )
                with socket.socket(socket.AF_INET6) as plain:
                    plain.bind(found[0][4])
            except OSError:
                continue
            return address, row[5]
    pytest.skip("no link-local IPv6 address to listen on here")
