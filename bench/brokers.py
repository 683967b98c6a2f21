"""Throw-away Redis and RabbitMQ servers for one benchmark run.

Each server is a plain child process listening only on 127.0.0.1, on a free port,
with all of its state in a temporary directory. :meth:`Broker.stop` ends it by PID
(SIGTERM, then SIGKILL after a grace period) and removes the directory.

RabbitMQ runs ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (the ``/usr/sbin``
wrapper would ``su`` to the ``rabbitmq`` user and detach). Its Erlang port mapper
(epmd) is started by us on a free port too, so no daemon outlives the run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from processes import die_with_parent, stop_process

REDIS_SERVER = "redis-server"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EPMD = "epmd"


class BrokerError(RuntimeError):
    """A broker could not be started or did not answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    """A running broker: its URL, its processes (stopped in reverse order) and its dir."""

    name: str
    url: str
    version: str
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            stop_process(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


def _wait(predicate: object, what: str, procs: list[subprocess.Popen[bytes]], limit: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise BrokerError(f"{what} exited with code {proc.returncode} while starting")
        if predicate():
            return
        time.sleep(0.2)
    raise BrokerError(f"{what} did not answer within {limit:.0f} s")


def start_redis(limit: float = 30.0) -> Broker:
    """Start ``redis-server`` with no persistence on a free loopback port."""
    workdir = Path(tempfile.mkdtemp(prefix="distq-bench-redis-"))
    port = free_port()
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    broker = Broker("redis", f"redis://127.0.0.1:{port}/0", _redis_version(), workdir, [proc])
    try:
        _wait(lambda: _port_open(port), "redis-server", [proc], limit)
    except BaseException:
        broker.stop()
        raise
    return broker


def _redis_version() -> str:
    out = subprocess.run(
        [REDIS_SERVER, "--version"], capture_output=True, text=True, check=False
    ).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip()


def _rabbitmq_version() -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return out.strip() or "unknown"


def _amqp_ready(port: int) -> bool:
    import pika  # imported late: the orchestrator may run before pika is installed

    try:
        params = pika.ConnectionParameters(
            host="127.0.0.1", port=port, connection_attempts=1, socket_timeout=2
        )
        pika.BlockingConnection(params).close()
        return True
    except Exception:
        return False


def start_rabbitmq(limit: float = 90.0) -> Broker:
    """Start a single RabbitMQ node as a foreground child, state under a temp dir."""
    workdir = Path(tempfile.mkdtemp(prefix="distq-bench-rabbitmq-"))
    amqp_port, dist_port, epmd_port = free_port(), free_port(), free_port()
    node = f"distqbench{os.getpid()}@localhost"
    (workdir / "rabbitmq.conf").write_text(
        "loopback_users = none\n"
        f"listeners.tcp.default = 127.0.0.1:{amqp_port}\n"
        "log.console = false\n"
        "log.file.level = warning\n"
    )
    (workdir / "enabled_plugins").write_text("[].\n")
    (workdir / "rabbitmq-env.conf").write_text("")
    (workdir / ".erlang.cookie").write_text(os.urandom(16).hex())
    (workdir / ".erlang.cookie").chmod(0o400)
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
        "RABBITMQ_ALLOW_INPUT": "",
        # no busy-waiting schedulers: on 2 cores Erlang's spinning takes CPU from every
        # contestant's Python processes alike
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
    }
    log = open(workdir / "rabbitmq.stdout", "wb")  # noqa: SIM115 - the children own it
    procs: list[subprocess.Popen[bytes]] = []
    broker = Broker(
        "rabbitmq",
        f"amqp://guest:guest@127.0.0.1:{amqp_port}/%2F",
        _rabbitmq_version(),
        workdir,
        procs,
    )
    try:
        # Our own epmd, in the foreground, so it is stopped with the node.
        procs.append(
            subprocess.Popen(
                [EPMD, "-port", str(epmd_port), "-address", "127.0.0.1"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        )
        _wait(lambda: _port_open(epmd_port), "epmd", procs, 15)
        procs.append(
            subprocess.Popen(
                [RABBITMQ_SERVER],
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        )
        _wait(lambda: _amqp_ready(amqp_port), "rabbitmq-server", procs, limit)
    except BaseException:
        broker.stop()
        raise
    return broker


STARTERS = {"redis": start_redis, "rabbitmq": start_rabbitmq}
