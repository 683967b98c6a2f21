"""Pytest plugin: real Redis and RabbitMQ brokers for the integration tests.

Loaded by ``tests/conftest.py`` (``pytest_plugins = ["brokers"]``). Two session-scoped
fixtures, ``redis_broker`` and ``rabbitmq_broker``, each yield a :class:`Broker`: a URL
that works and the same URL with a wrong password. Every broker listens on 127.0.0.1 only.

Where a broker comes from, first that works (``DISTQ_TEST_BROKERS=auto``, the default):

1. ``DISTQ_TEST_REDIS_URL`` / ``DISTQ_TEST_AMQP_URL``: a broker someone already runs on
   this machine (loopback only: the tests write to it).
2. A container per broker through testcontainers when a Docker engine answers. Images:
   ``DISTQ_REDIS_IMAGE`` / ``DISTQ_RABBITMQ_IMAGE``, else ``.build/images.env`` (written by
   ``scripts/build-local-images.sh``), else ``redis:7`` / ``rabbitmq:3-management``.
3. ``redis-server`` / ``rabbitmq-server`` started as plain processes on free loopback
   ports in a temporary directory.

``DISTQ_TEST_BROKERS=docker`` or ``=process`` uses that way only (and ignores the URL
variables), to test one path on purpose. When no way works, the fixture fails the test with
what was tried and how to get a broker: it never skips. Containers and processes started
here are removed at the end of the session, by their own id.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest
import redis

from launch import LocalRabbitMQ, LocalRedis, ServerError

# testcontainers reads these when it is imported, which happens only below (lazily). This
# machine may look like it runs inside a container (/.dockerenv), which would make
# testcontainers connect to a gateway address off this machine; ports are published on
# 127.0.0.1 only, so that is the host to use.
os.environ["TESTCONTAINERS_HOST_OVERRIDE"] = "127.0.0.1"
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
# Ryuk's image cannot be pulled without a registry; the fixtures remove their containers.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES_ENV = REPO_ROOT / ".build" / "images.env"

MODE_VARIABLE = "DISTQ_TEST_BROKERS"
MODES = ("auto", "docker", "process")
URL_VARIABLES = {"redis": "DISTQ_TEST_REDIS_URL", "rabbitmq": "DISTQ_TEST_AMQP_URL"}
IMAGE_VARIABLES = {"redis": "DISTQ_REDIS_IMAGE", "rabbitmq": "DISTQ_RABBITMQ_IMAGE"}
DEFAULT_IMAGES = {"redis": "redis:7", "rabbitmq": "rabbitmq:3-management"}
CONTAINER_PORTS = {"redis": 6379, "rabbitmq": 5672}
READY_SECONDS = {"redis": 30.0, "rabbitmq": 60.0}
RABBITMQ_USER = "distq"
HOW_TO_GET_ONE = (
    "Run `make test` (it starts Docker and builds local broker images), or install Docker, "
    "or install redis-server and rabbitmq-server, or point DISTQ_TEST_REDIS_URL / "
    "DISTQ_TEST_AMQP_URL at brokers on 127.0.0.1."
)


@dataclass(frozen=True)
class Broker:
    """A running broker: ``url`` logs in, ``bad_credentials_url`` is refused at login."""

    url: str
    bad_credentials_url: str
    kind: str  # "redis" or "rabbitmq", as in DISTQ_TRANSPORT
    provisioned_by: str = "url"  # "url", "docker" or "process"


class Unavailable(Exception):
    """One way of getting a broker does not work here; the message says why."""


@pytest.fixture(scope="session")
def redis_broker() -> Iterator[Broker]:
    """A Redis server with a password, for the whole test session."""
    yield from _broker("redis")


@pytest.fixture(scope="session")
def rabbitmq_broker() -> Iterator[Broker]:
    """A RabbitMQ server with a non-guest user, for the whole test session."""
    yield from _broker("rabbitmq")


#: What this session used, for the summary at the end ("redis: docker (redis:7)").
_PROVIDED: list[str] = []


def pytest_report_header(config: pytest.Config) -> str:
    return f"brokers: {MODE_VARIABLE}={os.environ.get(MODE_VARIABLE) or 'auto'}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _PROVIDED:
        terminalreporter.write_line("brokers used: " + "; ".join(_PROVIDED))


def _broker(kind: str) -> Iterator[Broker]:
    mode = os.environ.get(MODE_VARIABLE) or "auto"
    if mode not in MODES:
        pytest.fail(f"{MODE_VARIABLE}={mode!r}: use one of {', '.join(MODES)}", pytrace=False)
    if mode == "auto" and os.environ.get(URL_VARIABLES[kind]):
        given = _from_url(kind, os.environ[URL_VARIABLES[kind]])
        _PROVIDED.append(f"{kind}: {URL_VARIABLES[kind]}")
        yield given
        return

    providers: dict[str, Callable[[str, contextlib.ExitStack], Broker]] = {
        "docker": _from_docker,
        "process": _from_process,
    }
    tried: list[str] = []
    for name in ("docker", "process") if mode == "auto" else (mode,):
        with contextlib.ExitStack() as attempt:
            try:
                broker = providers[name](kind, attempt)
            except Unavailable as exc:
                tried.append(f"  {name}: {exc}")
                continue  # the attempt's stack has removed whatever it had started
            session = attempt.pop_all()
        detail = f" ({_image(kind)})" if name == "docker" else ""
        not_used = "".join(f", not {why.strip()[:160]}" for why in tried)
        _PROVIDED.append(f"{kind}: {name}{detail}{not_used}")
        with session:
            yield broker
        return
    pytest.fail(
        f"No {kind} broker for the tests ({MODE_VARIABLE}={mode}). Tried:\n"
        + "\n".join(tried)
        + f"\n{HOW_TO_GET_ONE}",
        pytrace=False,
    )


# --- 1. explicit URLs ---------------------------------------------------------------


def _from_url(kind: str, url: str) -> Broker:
    variable = URL_VARIABLES[kind]
    parts = urlsplit(url)
    schemes = ("redis", "rediss") if kind == "redis" else ("amqp", "amqps")
    if parts.scheme not in schemes or not parts.hostname:
        pytest.fail(f"{variable} must be a {schemes[0]}:// URL with a host", pytrace=False)
    if not _is_loopback(parts.hostname):
        pytest.fail(
            f"{variable} points at {parts.hostname}: the tests write to the broker, so they "
            "only use one on this machine (127.0.0.1 or localhost)",
            pytrace=False,
        )
    try:
        _wait_ready(kind, url, deadline=time.monotonic() + 10, alive=lambda: None)
    except Unavailable as exc:
        pytest.fail(f"{variable} ({_redact(url)}) does not answer: {exc}", pytrace=False)
    return Broker(url, _with_wrong_password(kind, url), kind, "url")


def _with_wrong_password(kind: str, url: str) -> str:
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0] or ("guest" if kind == "rabbitmq" else "")
    netloc = f"{user}:wrong-{secrets.token_hex(4)}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- 2. containers ------------------------------------------------------------------


def _image(kind: str) -> str:
    variable = IMAGE_VARIABLES[kind]
    if os.environ.get(variable):
        return os.environ[variable]
    if IMAGES_ENV.is_file():
        for line in IMAGES_ENV.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key == variable and value:
                return value
    return DEFAULT_IMAGES[kind]


def _from_docker(kind: str, stack: contextlib.ExitStack) -> Broker:
    try:
        import docker
        from testcontainers.core.config import ConnectionMode, testcontainers_config
        from testcontainers.core.container import DockerContainer
    except ImportError as exc:
        raise Unavailable(f"testcontainers is not installed ({exc})") from None
    # In case something imported testcontainers before the variables above were set.
    testcontainers_config.tc_host_override = "127.0.0.1"
    testcontainers_config.connection_mode_override = ConnectionMode.docker_host

    image = _image(kind)
    try:
        client = docker.from_env(timeout=10)
    except docker.errors.DockerException as exc:
        raise Unavailable(f"no Docker engine answers ({exc})") from None
    with contextlib.closing(client):
        try:
            client.ping()
        except Exception as exc:  # the client raises several unrelated types here
            raise Unavailable(f"no Docker engine answers ({exc})") from None
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            try:
                client.images.pull(image)
            except docker.errors.DockerException as exc:
                raise Unavailable(
                    f"image {image} is not here and cannot be pulled ({exc}); "
                    "scripts/build-local-images.sh builds local stand-ins"
                ) from None

    password = secrets.token_hex(16)
    container_port = CONTAINER_PORTS[kind]
    container = DockerContainer(image)
    # Published on the loopback interface only, on a port Docker picks.
    container.ports[f"{container_port}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
    if kind == "redis":
        container.with_command(
            ["redis-server", "--requirepass", password, "--save", "", "--appendonly", "no"]
        )
    else:
        container.with_env("RABBITMQ_DEFAULT_USER", RABBITMQ_USER)
        container.with_env("RABBITMQ_DEFAULT_PASS", password)
    stack.callback(_remove_container, container)
    try:
        container.start()
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container_port)
    except Exception as exc:  # docker-py and testcontainers raise many types
        raise Unavailable(f"container from {image} did not start ({exc})") from None
    if not _is_loopback(host):
        raise Unavailable(f"testcontainers would connect to {host}, not to 127.0.0.1")

    url = _url(kind, "127.0.0.1", port, password)

    def alive() -> str | None:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status == "running":
            return None
        logs = wrapped.logs(tail=20).decode(errors="replace")
        return f"container from {image} is {wrapped.status}; its last log lines:\n{logs}"

    _wait_ready(kind, url, time.monotonic() + READY_SECONDS[kind], alive)
    return Broker(url, _with_wrong_password(kind, url), kind, "docker")


def _remove_container(container: Any) -> None:
    try:
        container.stop()  # removes the container (force) and its anonymous volumes
    except Exception as exc:  # leave the session's own result alone
        print(f"brokers: could not remove container {container.image}: {exc}")


# --- 3. local processes -------------------------------------------------------------


def _from_process(kind: str, stack: contextlib.ExitStack) -> Broker:
    tmp = Path(
        stack.enter_context(
            tempfile.TemporaryDirectory(prefix=f"distq-{kind}-", ignore_cleanup_errors=True)
        )
    )
    password = secrets.token_hex(16)
    server: LocalRedis | LocalRabbitMQ
    if kind == "redis":
        server = LocalRedis(tmp, password=password)
    else:
        server = LocalRabbitMQ(tmp, user=RABBITMQ_USER, password=password)
    try:
        server.start(READY_SECONDS[kind])  # nothing is left running when it raises
    except ServerError as exc:
        raise Unavailable(str(exc)) from None
    stack.callback(server.stop)
    return Broker(server.url, _with_wrong_password(kind, server.url), kind, "process")


# --- readiness ----------------------------------------------------------------------


def _url(kind: str, host: str, port: int, password: str) -> str:
    if kind == "redis":
        return f"redis://:{password}@{host}:{port}/0"
    return f"amqp://{RABBITMQ_USER}:{password}@{host}:{port}/%2F"


def _wait_ready(kind: str, url: str, deadline: float, alive: Callable[[], str | None]) -> None:
    """Return once ``url`` logs in; raise Unavailable if the server died or time ran out."""
    last: Exception | None = None
    while True:
        try:
            _login(kind, url)
            return
        except (redis.AuthenticationError, pika.exceptions.ProbableAuthenticationError) as exc:
            raise Unavailable(f"the server refused the credentials ({exc})") from None
        except Exception as exc:  # anything else while the server starts: try again
            last = exc
        if (why := alive()) is not None:
            raise Unavailable(why)
        if time.monotonic() > deadline:
            raise Unavailable(f"{_redact(url)} not ready in time (last error: {last!r})")
        time.sleep(0.25)


def _login(kind: str, url: str) -> None:
    if kind == "redis":
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
        return
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 2
    params.blocked_connection_timeout = 5
    pika.BlockingConnection(params).close()
