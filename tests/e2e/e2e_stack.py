"""One compose stack of this repository, driven through make as a user drives it.

Each :class:`Stack` has a compose project name, an env file and image tag of its own
and free host ports on 127.0.0.1, so a test run never touches another stack on the
machine. Traffic goes only to 127.0.0.1 (Prometheus's published port) and, through
docker commands, to the project's own containers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from launch import free_port

REPO = Path(__file__).resolve().parents[2]
_T = TypeVar("_T")

# Variables that steer the stack (scripts/compose.sh STACK_VARIABLES): never inherited.
_STACK_VARIABLES = set(
    re.search(r'STACK_VARIABLES="([^"]*)"', (REPO / "scripts/compose.sh").read_text())
    .group(1)  # type: ignore[union-attr]
    .split()
)


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def wait_for(what: str, check: Callable[[], _T | None], timeout: float, every: float = 1.0) -> _T:
    """Poll ``check`` until it returns something other than None/False; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: _T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


#: what a `make up` prints that found a host port it publishes taken: docker's bind error,
#: and scripts/compose-stack.sh's check before it builds the images
PORT_TAKEN = ("address already in use", "is in use by another program")


def port_taken(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether ``make up`` failed on a host port taken, found by docker or by the stack's
    own check before it."""
    return result.returncode != 0 and any(said in result.stdout for said in PORT_TAKEN)


@dataclass
class Container:
    name: str
    service: str
    status: str
    exit_code: int
    ip: str
    image: str


@dataclass
class Stack:
    transport: str
    workdir: Path
    token: str
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.project = f"distqe2e{self.token}{self.transport[:3]}"
        self.env_file = self.workdir / "stack.env"
        # No DISTQ_IMAGE_TAG: `make up` tags the images by the project, as for a user.
        self.image_tag = self.project
        self.up_output = ""  # what `make up` printed (up() sets it)
        self.new_ports()

    def new_ports(self) -> None:
        """Free host ports for the stack's published ones, each chosen afresh: free when
        chosen, which another test's server may take before `make up` binds it."""
        for var in (
            "PROMETHEUS_PORT",
            "REDIS_PORT",
            "RABBITMQ_PORT",
            "RABBITMQ_MANAGEMENT_PORT",
            "GRAFANA_PORT",
        ):
            self.ports[var] = free_port()

    # -- make, as a user runs it ------------------------------------------------
    def up(self, timeout: float = 420) -> subprocess.CompletedProcess[str]:
        """`make up`; once more, after `make down`, on ports chosen afresh if a port chosen
        free was taken (by another test's server) before the stack bound it: all it printed
        kept in ``up_output``. A failed `make down` is said, with its output, ahead of the
        second `make up`'s in ``up_output`` and in the result's, which a failure shows."""
        result = self.make("up", timeout=timeout)
        self.up_output = result.stdout
        if port_taken(result):
            down = self.make("down", timeout=180)
            failed = f"make down failed (exit {down.returncode}):\n{down.stdout}"
            said = failed if down.returncode != 0 else ""
            self.new_ports()
            result = self.make("up", timeout=timeout)
            result.stdout = said + result.stdout
            self.up_output += result.stdout
        return result

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _STACK_VARIABLES}
        env.pop("MAKEFLAGS", None)
        env.update(
            COMPOSE_PROJECT_NAME=self.project,
            DISTQ_ENV_FILE=str(self.env_file),
            DISTQ_TRANSPORT=self.transport,
            **{k: str(v) for k, v in self.ports.items()},
        )
        env.update(extra)
        return env

    def make(
        self, *args: str, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``make ARGS`` in the repository; output captured (stderr into stdout)."""
        return subprocess.run(
            ["make", "--no-print-directory", *args],
            cwd=REPO,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def compose(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``scripts/compose.sh ARGS`` on this stack, as the README shows it; output captured."""
        return subprocess.run(
            ["scripts/compose.sh", *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def recreate_prometheus(self, config: Path | None = None) -> None:
        """The stack's Prometheus made anew by compose, ready to answer queries: reading
        the folder ``config`` in place of deploy/prometheus (an extra compose file on the
        stack's own), or, with None, as `make up` made it. Its data volume stays."""
        settings = dict(
            line.split("=", 1) for line in self.env_file.read_text().splitlines() if "=" in line
        )
        files = settings["COMPOSE_FILE"].split(":")
        if config is not None:
            override = config.parent / f"{config.name}.compose.yml"
            mount = f"{config}:/etc/prometheus:ro"  # replaces the stack's, by its target
            override.write_text(json.dumps({"services": {"prometheus": {"volumes": [mount]}}}))
            files.append(str(override))
        flags = [arg for file in files for arg in ("-f", file)]
        done = self.compose(
            *flags, "up", "-d", "--no-deps", "--force-recreate", "prometheus", timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr

        def answers() -> bool:
            try:
                return self.query("vector(1)") == {"": 1.0}
            except OSError:  # not listening yet, or the connection reset
                return False

        wait_for("the new Prometheus answering", answers, 60)

    def start_job(
        self, tasks: int, task_delay: float, timeout: float, new_session: bool = False
    ) -> Job:
        """``make job`` in the background (``new_session``: in a process group of its own,
        which a test may interrupt as Ctrl-C does)."""
        return Job(
            self._popen(
                "job",
                f"TASKS={tasks}",
                f"TASK_DELAY={task_delay}",
                f"JOB_TIMEOUT={timeout:g}",
                new_session=new_session,
            )
        )

    def _popen(self, *args: str, new_session: bool = False) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["make", "--no-print-directory", *args],
            cwd=REPO,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )

    # -- what docker says about the project ------------------------------------
    def _ids(self, kind: str, *filters: str) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        command = {
            "container": ["docker", "ps", "-aq"],
            "network": ["docker", "network", "ls", "-q"],
            "volume": ["docker", "volume", "ls", "-q"],
        }[kind]
        args = [*command, "--filter", label]
        for extra in filters:
            args += ["--filter", extra]
        out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout
        return out.split()

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of the project (labelled or named after it)."""
        found = {kind: self._ids(kind) for kind in ("container", "network", "volume")}
        named = subprocess.run(
            ["docker", "volume", "ls", "-q", "--filter", f"name={self.project}_"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
        found["volume"] = sorted(set(found["volume"]) | set(named))
        return {kind: ids for kind, ids in found.items() if ids}

    def containers(self, service: str | None = None) -> list[Container]:
        filters = [f"label=com.docker.compose.service={service}"] if service else []
        ids = self._ids("container", "label=com.docker.compose.oneoff=False", *filters)
        if not ids:
            return []
        out = subprocess.run(
            ["docker", "inspect", *ids], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        found = []
        for info in json.loads(out):
            networks = info["NetworkSettings"]["Networks"] or {}
            found.append(
                Container(
                    name=info["Name"].lstrip("/"),
                    service=info["Config"]["Labels"]["com.docker.compose.service"],
                    status=info["State"]["Status"],
                    exit_code=info["State"]["ExitCode"],
                    ip=next((n["IPAddress"] for n in networks.values() if n["IPAddress"]), ""),
                    image=info["Config"]["Image"],
                )
            )
        return sorted(found, key=lambda c: c.name)

    def running_oneoffs(self) -> list[str]:
        """IDs of the running one-off containers (`compose run`, as `make job` starts)."""
        return self._ids("container", "label=com.docker.compose.oneoff=True", "status=running")

    def running(self, service: str) -> list[Container]:
        return [c for c in self.containers(service) if c.status == "running"]

    def logs(self, lines: int = 40) -> str:
        """The last ``lines`` log lines of every container of the project."""
        parts = []
        for container in self.containers():
            out = subprocess.run(
                ["docker", "logs", "--tail", str(lines), container.name],
                capture_output=True,
                text=True,
                timeout=30,
            )
            parts.append(
                f"--- {container.name} ({container.status}, exit {container.exit_code}) ---\n"
                + out.stdout
                + out.stderr
            )
        return "\n".join(parts) or "(no containers)"

    def remove_images(self) -> None:
        # Only this stack's own tags: the shared ones (`make images`' version and latest)
        # may be another test's or checkout's, made while this stack ran.
        for role in ("master", "worker"):
            subprocess.run(
                ["docker", "rmi", f"distq-{role}:{self.image_tag}"],
                capture_output=True,
                timeout=60,
            )

    def _image_id(self, name: str) -> str:
        out = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", name],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    # -- Prometheus, on its published port -------------------------------------
    def _prometheus(self, path: str, **params: str) -> Any:
        port = self.ports["PROMETHEUS_PORT"]
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """An instant query's vector as {instance: value}."""
        result = self._prometheus("/api/v1/query", query=expr)["result"]
        return {s["metric"].get("instance", ""): float(s["value"][1]) for s in result}

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self._prometheus("/api/v1/targets")["activeTargets"]
        return targets


class Job:
    """``make job`` running in the background; its output is collected as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_lines(self, pattern: str, count: int, timeout: float) -> None:
        """Wait until ``count`` lines of output match ``pattern``."""
        regex = re.compile(pattern)

        def enough() -> bool:
            return sum(1 for line in self.lines if regex.search(line)) >= count

        with self._changed:
            if not self._changed.wait_for(enough, timeout):
                tail = "".join(self.lines[-30:])
                raise AssertionError(
                    f"{count} lines matching {pattern!r} not in {timeout:.0f} s:\n{tail}"
                )

    def finish(self, timeout: float) -> tuple[int, str]:
        """The exit status and whole output, once ``make job`` ends (killed after ``timeout``)."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"make job still running after {timeout:.0f} s") from None
        self._reader.join(10)
        return code, "".join(self.lines)


def names(containers: Sequence[Container]) -> list[str]:
    return [c.name for c in containers]
