"""TLS options a broker URL gives a client.

``?ssl_cert_reqs=optional`` verifies the broker's certificate as ``required`` does
(Python's ssl: "in client mode, CERT_OPTIONAL has the same meaning as CERT_REQUIRED"), so
distq checks its host name too, with every supported redis-py: with redis-py 7 it was
checked (its default), with redis-py 5 it was not, while the README said ``optional``
turned the check off.

A client key named in the URL that is encrypted, with no pass phrase given: OpenSSL's
own callback asked "Enter PEM pass phrase:" on the controlling terminal and waited there
for good (a worker in a container with a TTY hung, one without read its stdin). It is
refused at once with a line saying what to do instead."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import ssl
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from certs import CertificateAuthority
from conftest import REPO
from distq import tls
from launch import free_port


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


def _on_a_terminal(env: dict[str, str], seconds: float = 20.0) -> tuple[int | None, str]:
    """``distq status`` run with a pseudo-terminal as its controlling terminal, as in a
    container run with ``-t``: its exit code (None: still running after ``seconds``,
    then killed) and all it wrote there."""
    leader, follower = os.openpty()

    def take_terminal() -> None:  # the new session's controlling terminal: /dev/tty
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    child = subprocess.Popen(
        [sys.executable, "-m", "distq", "status"],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), **env},
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
        preexec_fn=take_terminal,
    )
    os.close(follower)
    written = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and child.poll() is None:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    written += os.read(leader, 4096)
                except OSError:  # the child closed the terminal
                    break
        code = child.wait(5) if child.poll() is None and time.monotonic() < deadline else None
        if code is None:
            code = child.poll()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        os.close(leader)
    return code, written.decode(errors="replace")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port that accepts (into its backlog): redis-py loads the key once connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


@pytest.mark.parametrize("transport", ["redis", "rabbitmq"])
def test_an_encrypted_client_key_in_the_url_is_refused_without_prompting(
    ca: CertificateAuthority, tmp_path: Path, listener: socket.socket, transport: str
) -> None:
    cert, key = ca.encrypted_client(tmp_path)
    port = listener.getsockname()[1]
    if transport == "redis":
        query = f"ssl_ca_certs={quote(str(ca.cert))}&ssl_certfile={quote(str(cert))}"
        url = f"rediss://127.0.0.1:{port}/0?{query}&ssl_keyfile={quote(str(key))}"
        env, named, instead = {"DISTQ_REDIS_URL": url}, "ssl_keyfile", "ssl_password="
    else:
        options = {"ca_certs": str(ca.cert), "certfile": str(cert), "keyfile": str(key)}
        url = f"amqps://u:p@127.0.0.1:{port}/%2F?ssl_options={quote(repr(options))}"
        env, named, instead = {"DISTQ_AMQP_URL": url}, "keyfile", "'password'"
    code, written = _on_a_terminal({"DISTQ_TRANSPORT": transport, **env})
    assert "pass phrase:" not in written, written
    assert code == 2, written
    assert f"{named} {str(key)!r}" in written and "encrypted with a pass phrase" in written
    assert instead in written, written


def test_a_url_that_gives_the_pass_phrase_is_not_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    from distq.config import Settings

    cert, key = ca.encrypted_client(tmp_path)
    query = f"ssl_certfile={quote(str(cert))}&ssl_keyfile={quote(str(key))}"
    url = f"rediss://127.0.0.1:6380/0?{query}&ssl_password={quote('a pass phrase')}"
    Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url})


@pytest.mark.parametrize("given", ["files", "url"])
def test_an_encrypted_client_key_in_a_hand_built_settings_is_refused_as_from_the_env(
    ca: CertificateAuthority, tmp_path: Path, given: str
) -> None:
    """A Settings built field by field, not from DISTQ_* texts, has its client key
    checked as the environment's is (a note of the session that made the check said it
    was not: checked, it is)."""
    from distq import Executor
    from distq.config import Settings
    from distq.errors import ConfigError

    cert, key = ca.encrypted_client(tmp_path)
    base = f"rediss://127.0.0.1:{free_port()}/0"
    settings = (
        Settings(transport="redis", redis_url=base, tls_cert_file=str(cert), tls_key_file=str(key))
        if given == "files"
        else Settings(
            transport="redis",
            redis_url=f"{base}?ssl_certfile={quote(str(cert))}&ssl_keyfile={quote(str(key))}",
        )
    )
    with pytest.raises(ConfigError, match=r"is encrypted with a pass phrase"):
        Executor(settings)


def test_optional_certificate_checks_get_host_names_checked_with_every_redis_py() -> None:
    url = "rediss://h:6380/0?ssl_cert_reqs=optional"
    options = tls.redis_options(url, tls.TlsFiles())
    assert options.get("ssl_check_hostname") is True, options
    connection = redis.Redis.from_url(url, **options).connection_pool.make_connection()
    assert connection.cert_reqs == ssl.CERT_OPTIONAL and connection.check_hostname is True


def test_no_certificate_check_is_no_host_name_check() -> None:
    url = "rediss://h:6380/0?ssl_cert_reqs=none"
    assert "ssl_check_hostname" not in tls.redis_options(url, tls.TlsFiles())
