"""TLS for real: Debian's redis-server and RabbitMQ with TLS listeners on 127.0.0.1.

A job runs over ``rediss://`` and ``amqps://`` (master and worker as processes, with a CA
file, a client certificate and the password from a file). A wrong CA, an expired server
certificate, a certificate for another host name, an untrusted client certificate and
plain TCP to a TLS port each stop ``distq`` with exit code 3 and one line, no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from brokers import Broker
from certs import CertificateAuthority, Pair
from conftest import REPO
from launch import LocalRabbitMQ, LocalRedis, TlsFiles, free_port
from procs import Distq

pytestmark = pytest.mark.integration

EXIT_UNREACHABLE = 3


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Pair
    client: Pair
    expired: Pair
    elsewhere: Pair  # a server certificate for another host name
    stranger_ca: CertificateAuthority  # trusts nothing of ours
    stranger_client: Pair


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca, stranger = (
        CertificateAuthority(base / "ca"),
        CertificateAuthority(base / "stranger", name="stranger CA"),
    )
    return Pki(
        ca=ca,
        server=ca.issue("server", hosts=("127.0.0.1",)),
        client=ca.issue("client", hosts=(), client=True),
        expired=ca.issue("expired", hosts=("127.0.0.1", "localhost"), expired=True),
        elsewhere=ca.issue("elsewhere", hosts=("broker.invalid",)),
        stranger_ca=stranger,
        stranger_client=stranger.issue("stranger-client", hosts=(), client=True),
    )


@dataclass(frozen=True)
class TlsBroker:
    transport: str
    url: str  # TLS, no password in it
    password: str
    tls_port: int
    plain_url: str  # plain TCP to the TLS port


@pytest.fixture(scope="module")
def redis_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    password = secrets.token_hex(12)
    files = TlsFiles(ca=pki.ca.cert, cert=pki.server.cert, key=pki.server.key)
    server = LocalRedis(tmp_path_factory.mktemp("redis-tls"), password=password, tls=files)
    with server.start():
        url = f"rediss://127.0.0.1:{server.port}/0"
        yield TlsBroker("redis", url, password, server.port, url.replace("rediss", "redis"))


@pytest.fixture(scope="module")
def rabbitmq_tls_server(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRabbitMQ]:
    files = TlsFiles(ca=pki.ca.cert, cert=pki.server.cert, key=pki.server.key)
    server = LocalRabbitMQ(tmp_path_factory.mktemp("rabbitmq-tls"), tls=files)
    with server.start():
        yield server


@pytest.fixture(scope="module")
def rabbitmq_tls(rabbitmq_tls_server: LocalRabbitMQ) -> TlsBroker:
    server = rabbitmq_tls_server
    port = server.tls_port
    assert port is not None
    url = f"amqps://{server.user}@127.0.0.1:{port}/%2F"
    plain = f"amqp://{server.user}@127.0.0.1:{port}/%2F"
    return TlsBroker("rabbitmq", url, server.password, port, plain)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> TlsBroker:
    name = "redis_tls" if request.param == "redis" else "rabbitmq_tls"
    tls_broker: TlsBroker = request.getfixturevalue(name)
    return tls_broker


def environment(broker: TlsBroker, pki: Pki, tmp_path: Path, **changes: str) -> dict[str, str]:
    """A distq process's environment: CA, client certificate, password from a file."""
    secret = tmp_path / "broker-password"
    secret.write_text(broker.password + "\n")
    prefix = "REDIS" if broker.transport == "redis" else "AMQP"
    env = {
        "DISTQ_TRANSPORT": broker.transport,
        f"DISTQ_{prefix}_URL": broker.url,
        f"DISTQ_{prefix}_PASSWORD_FILE": str(secret),
        "DISTQ_TLS_CA_FILE": str(pki.ca.cert),
        "DISTQ_TLS_CERT_FILE": str(pki.client.cert),
        "DISTQ_TLS_KEY_FILE": str(pki.client.key),
        "DISTQ_QUEUE": f"tls{secrets.token_hex(4)}",
        "DISTQ_LEASE_SECONDS": "2",
    }
    env.update(changes)
    return process_env({k: v for k, v in env.items() if v})


def process_env(distq: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(distq, PYTHONPATH=f"{REPO / 'tests'}:{REPO / 'src'}", PYTHONUNBUFFERED="1")
    return env


def test_a_job_runs_over_tls(broker: TlsBroker, pki: Pki, tmp_path: Path) -> None:
    env = environment(broker, pki, tmp_path)
    master = Distq(["master", "--tasks", "20", "--timeout", "60"], env)
    # No --exit-when-idle: it starts beside the master, and idle for 2 s while the master
    # was held up 4 s (a loaded machine) it left the 20 tasks to no one (60 s, exit 1)
    worker = Distq(["worker", "--concurrency", "2"], env)
    try:
        assert master.wait(90) == 0, master.output() + worker.output()
        assert "all 20 results in and correct" in master.output()
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    finally:
        master.stop()
        worker.stop()


def refused(env: dict[str, str], *expected: str) -> str:
    """Run a master that cannot connect: exit 3 and one ``distq:`` line naming the problem."""
    master = Distq(["master", "--tasks", "1", "--timeout", "20"], env)
    try:
        code = master.wait(60)
        out = master.output()
    finally:
        master.stop()
    assert code == EXIT_UNREACHABLE, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("distq:")]
    assert len(errors) == 1 and len(out.strip().splitlines()) == 1, out
    for text in expected:
        assert text in errors[0], out
    return errors[0]


def status(env: dict[str, str]) -> tuple[int, str]:
    """``distq status`` on ``env``: its exit code and its output (stdout and stderr)."""
    command = Distq(["status"], env)
    try:
        return command.wait(60), command.output()
    finally:
        command.stop()


def test_a_wrong_ca_is_refused(broker: TlsBroker, pki: Pki, tmp_path: Path) -> None:
    env = environment(broker, pki, tmp_path, DISTQ_TLS_CA_FILE=str(pki.stranger_ca.cert))
    refused(env, "TLS with", "certificate was refused", "DISTQ_TLS_CA_FILE")


def test_a_host_name_the_certificate_does_not_name_is_refused(
    broker: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    """The server certificate names 127.0.0.1 only; connecting as localhost must fail."""
    prefix = "REDIS" if broker.transport == "redis" else "AMQP"
    url = broker.url.replace("127.0.0.1", "localhost")
    refused(environment(broker, pki, tmp_path, **{f"DISTQ_{prefix}_URL": url}), "mismatch")


def test_an_untrusted_client_certificate_is_refused_by_the_broker(
    broker: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    """The broker checks a client certificate that is sent: proof that ours is sent."""
    env = environment(
        broker,
        pki,
        tmp_path,
        DISTQ_TLS_CERT_FILE=str(pki.stranger_client.cert),
        DISTQ_TLS_KEY_FILE=str(pki.stranger_client.key),
    )
    # TLS 1.3: the broker's alert may or may not arrive before it closes the connection
    line = refused(env, "TLS with", "DISTQ_TLS_CERT_FILE")
    assert "refused our client certificate" in line or "during the TLS handshake" in line, line


def test_plain_tcp_to_a_tls_port_fails_with_one_line(
    broker: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    prefix = "REDIS" if broker.transport == "redis" else "AMQP"
    env = environment(
        broker,
        pki,
        tmp_path,
        **{f"DISTQ_{prefix}_URL": broker.plain_url},
        DISTQ_TLS_CA_FILE="",
        DISTQ_TLS_CERT_FILE="",
        DISTQ_TLS_KEY_FILE="",
    )
    scheme = "rediss://" if broker.transport == "redis" else "amqps://"
    refused(env, "If that port expects TLS, use " + scheme)


def test_tls_to_a_plain_redis_port_fails_saying_to_use_redis(
    redis_broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    """The handshake stalls (Redis waits for a command) until the connect timeout: the
    line must say the port may be plain TCP, not only "is it running?"."""
    env = process_env(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_REDIS_URL": redis_broker.url.replace("redis://", "rediss://", 1),
            "DISTQ_TLS_CA_FILE": str(pki.ca.cert),
            "DISTQ_QUEUE": f"tls{secrets.token_hex(4)}",
        }
    )
    refused(env, "cannot reach Redis at", "If that port is plain TCP (no TLS), use redis://")


def test_an_upper_case_rediss_scheme_is_tls(redis_tls: TlsBroker, pki: Pki, tmp_path: Path) -> None:
    """A URL's scheme is case-insensitive, as the settings take it: REDISS:// is TLS (the
    password in the URL: one from a file would rebuild the URL, in lower case)."""
    url = f"REDISS://:{redis_tls.password}@" + redis_tls.url.removeprefix("rediss://")
    env = environment(redis_tls, pki, tmp_path, DISTQ_REDIS_URL=url, DISTQ_REDIS_PASSWORD_FILE="")
    code, out = status(env)
    assert code == 0, out
    assert out.startswith(f"redis at 127.0.0.1:{redis_tls.tls_port} over TLS, queue"), out


@contextlib.contextmanager
def fifos(directory: Path, **files: Path) -> Iterator[dict[str, str]]:
    """A FIFO for each of ``files`` (by name), each fed its file's bytes once, to its
    first reader only (as bash's ``<(cat file)``); a writer no one read is let go."""
    paths, writers = {}, []
    for name, source in files.items():
        path = directory / f"{name}.fifo"
        os.mkfifo(path)

        def write(path: Path = path, data: bytes = source.read_bytes()) -> None:
            with path.open("wb") as fifo:
                fifo.write(data)

        writers.append((path, threading.Thread(target=write, daemon=True)))
        writers[-1][1].start()
        paths[name] = str(path)
    try:
        yield paths
    finally:
        for path, writer in writers:
            if writer.is_alive():  # open for reading, to let its open for writing return
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            writer.join(10)


def test_tls_files_given_as_fifos_serve_the_check_and_the_connection(
    broker: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    """Was: the start-up check read each FIFO, then OpenSSL opened it again for the
    check's context and waited for a second writer, for good. Read once now, each file's
    bytes serve the check's context and the connection's (redis-py's own, each connect)."""
    files = {"ca": pki.ca.cert, "cert": pki.client.cert, "key": pki.client.key}
    with fifos(tmp_path, **files) as paths:
        env = environment(
            broker,
            pki,
            tmp_path,
            DISTQ_TLS_CA_FILE=paths["ca"],
            DISTQ_TLS_CERT_FILE=paths["cert"],
            DISTQ_TLS_KEY_FILE=paths["key"],
        )
        code, out = status(env)
    assert code == 0, out
    assert " over TLS" in out.splitlines()[0], out


def test_a_worker_gives_up_at_once_on_a_refused_certificate(
    broker: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    env = environment(broker, pki, tmp_path, DISTQ_TLS_CA_FILE=str(pki.stranger_ca.cert))
    worker = Distq(["worker", "--connect-timeout", "60"], env)
    try:
        started = time.monotonic()
        assert worker.wait(30) == EXIT_UNREACHABLE, worker.output()
        assert time.monotonic() - started < 20  # not retried for the minute it may wait
        assert "Traceback" not in worker.output()
        assert "certificate was refused" in worker.output()
    finally:
        worker.stop()


def _job_under_way(env: dict[str, str], report: Path, *worker_args: str) -> tuple[Distq, Distq]:
    """A master of 5 tasks of 30 s (``--timeout 120``, its report to ``report``) and a
    worker (``worker_args``) started with ``env``, once the worker has taken a task;
    both stopped if it takes none within 30 s."""
    master = Distq(["master", "--tasks", "5", "--task-delay", "30", "--timeout", "120",
                    "--report", str(report)], env)  # fmt: skip
    worker = Distq(["worker", *worker_args], env)
    try:
        deadline = time.monotonic() + 30
        while "Get task" not in worker.output():
            assert time.monotonic() < deadline, master.output() + worker.output()
            time.sleep(0.1)
    except BaseException:
        master.stop()
        worker.stop()
        raise
    return master, worker


@pytest.mark.parametrize("slots", [1, 2])
def test_a_certificate_refused_mid_run_stops_worker_and_master_with_exit_3(
    pki: Pki, tmp_path: Path, slots: int
) -> None:
    """Redis restarted with a certificate for another host name: worker and master went
    on reconnecting, saying "Connection closed by server; reconnecting" (the master until
    its timeout, exit 1), where a refused certificate at start is one line and exit 3
    (sec16). Now the same mid-run, the master with its report. A worker of one slot, in
    its 30 s task, left the refusal to its keeper, which took it for an outage: it
    stopped only once the task had ended."""
    port = free_port()
    env = process_env(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_REDIS_URL": f"rediss://127.0.0.1:{port}/0",
            "DISTQ_TLS_CA_FILE": str(pki.ca.cert),
            "DISTQ_QUEUE": f"tls{secrets.token_hex(4)}",
            # the worker stops warm, its 30 s task in hand: 2 s for it, not the 20 s default
            "DISTQ_DRAIN_SECONDS": "2",
        }
    )
    report = tmp_path / "report.json"
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    with redis_with(pki.server, pki.ca.cert, tmp_path / "good", port):
        master, worker = _job_under_way(env, report, "--concurrency", str(slots))
    try:
        with redis_with(pki.elsewhere, pki.ca.cert, tmp_path / "bad", port):
            # the task has 25 s and more to run: the drain's 2 s, then the exit's
            assert worker.wait(15) == EXIT_UNREACHABLE, worker.output()
            assert master.wait(60) == EXIT_UNREACHABLE, master.output()
        outputs = worker.output(), master.output()
    finally:
        master.stop()
        worker.stop()
    assert outputs[0].count("certificate was refused") == 1, outputs[0]  # at the exit
    for out in outputs:
        assert "certificate was refused" in out and "Traceback" not in out, out
    assert "certificate was refused" in " ".join(json.loads(report.read_text())["problems"])


def test_a_ca_file_in_the_redis_url_and_distq_tls_ca_file_is_refused(
    redis_tls: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    """redis-py lets the URL's ``ssl_ca_certs`` win: DISTQ_TLS_CA_FILE (here a CA that
    trusts nothing of this broker's) was silently unused and the connection made."""
    url = f"{redis_tls.url}?ssl_ca_certs={pki.ca.cert}"
    env = environment(
        redis_tls,
        pki,
        tmp_path,
        DISTQ_REDIS_URL=url,
        DISTQ_TLS_CA_FILE=str(pki.stranger_ca.cert),
    )
    code, out = status(env)
    assert code == 2, out
    assert out.strip() == (
        "distq: DISTQ_TLS_CA_FILE is set and DISTQ_REDIS_URL has ssl_ca_certs, which would be "
        "used instead; give the TLS files one way only: drop ssl_ca_certs from the URL, or "
        "unset DISTQ_TLS_CA_FILE"
    ), out


def test_a_password_holding_ssl_options_leaves_the_tls_files_in_use(
    rabbitmq_tls_server: LocalRabbitMQ, rabbitmq_tls: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    """``=`` may stand unencoded in a URL's password. Was: a password holding
    ``ssl_options=`` made the transport keep pika's own context (the system's CAs, no
    client certificate) instead of DISTQ_TLS_*: the test CA's certificate was refused."""
    user, password = "odd-password", f"{secrets.token_hex(8)}=ssl_options={secrets.token_hex(4)}"
    rabbitmq_tls_server.ctl("add_user", user, password)
    rabbitmq_tls_server.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    url = f"amqps://{user}:{password}@127.0.0.1:{rabbitmq_tls.tls_port}/%2F"
    env = environment(rabbitmq_tls, pki, tmp_path, DISTQ_AMQP_URL=url, DISTQ_AMQP_PASSWORD_FILE="")
    code, out = status(env)
    assert code == 0, out
    assert "over TLS" in out and password not in out, out


# --- an expired server certificate ----------------------------------------------------


@contextlib.contextmanager
def redis_with(cert: Pair, ca: Path, workdir: Path, port: int | None = None) -> Iterator[int]:
    """redis-server presenting ``cert`` (launch's start() would refuse an expired one)."""
    port = port or free_port()
    exe = shutil.which("redis-server") or "redis-server"
    argv = [exe, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port), "--save", ""]
    argv += ["--tls-cert-file", str(cert.cert), "--tls-key-file", str(cert.key)]
    argv += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "optional"]
    argv += ["--dir", str(workdir), "--appendonly", "no"]
    with (workdir / "redis.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + 20
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def tls_listener(cert: Pair) -> Iterator[int]:
    """A TLS server that only does handshakes: where an expired certificate is refused."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert, cert.key)
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def test_an_expired_server_certificate_is_refused_by_redis_clients(
    pki: Pki, tmp_path: Path
) -> None:
    with redis_with(pki.expired, pki.ca.cert, tmp_path) as port:
        broker = TlsBroker("redis", f"rediss://127.0.0.1:{port}/0", "pw", port, "")
        refused(environment(broker, pki, tmp_path), "certificate has expired")


def test_an_expired_server_certificate_is_refused_by_rabbitmq_clients(
    pki: Pki, tmp_path: Path
) -> None:
    with tls_listener(pki.expired) as port:
        broker = TlsBroker("rabbitmq", f"amqps://distq@127.0.0.1:{port}/%2F", "pw", port, "")
        refused(environment(broker, pki, tmp_path), "certificate has expired")


def test_ssl_options_in_the_amqp_url_with_the_password_from_its_file(
    rabbitmq_tls: TlsBroker, pki: Pki, tmp_path: Path
) -> None:
    """TLS files given the URL's own way (pika's ``ssl_options``, DISTQ_TLS_* unset) with the
    broker password from its file, as the README advises: a job's status over ``amqps://``."""
    options = {
        "ca_certs": str(pki.ca.cert),
        "certfile": str(pki.client.cert),
        "keyfile": str(pki.client.key),
    }
    url = f"{rabbitmq_tls.url}?ssl_options={options!r}"
    env = environment(
        rabbitmq_tls,
        pki,
        tmp_path,
        DISTQ_AMQP_URL=url,
        DISTQ_TLS_CA_FILE="",
        DISTQ_TLS_CERT_FILE="",
        DISTQ_TLS_KEY_FILE="",
    )
    assert "DISTQ_AMQP_PASSWORD_FILE" in env and "DISTQ_TLS_CA_FILE" not in env
    code, out = status(env)
    assert code == 0, out
    assert "over TLS" in out and rabbitmq_tls.password not in out, out


# --- a TLS file gone at a reconnect ---------------------------------------------------


def _worker_on(port: int, ca_file: Path) -> Distq:
    env = process_env(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_REDIS_URL": f"rediss://127.0.0.1:{port}/0",
            "DISTQ_TLS_CA_FILE": str(ca_file),
            "DISTQ_QUEUE": f"tls{secrets.token_hex(4)}",
        }
    )
    return Distq(["worker", "--connect-timeout", "60"], env)


def test_a_redis_ca_file_deleted_before_a_reconnect_stops_the_worker_naming_it(
    pki: Pki, tmp_path: Path
) -> None:
    """Was: redis-py's context at the reconnect failed in OpenSSL, "Error 2 connecting to
    127.0.0.1:N. No such file or directory.", naming no file, retried for good; RabbitMQ's
    connect exits 2 naming the setting and the path. Now Redis does the same."""
    port = free_port()
    ca_file = tmp_path / "ca.pem"
    shutil.copy(pki.ca.cert, ca_file)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with redis_with(pki.server, pki.ca.cert, tmp_path / "one", port):
        worker = _worker_on(port, ca_file)
        try:
            worker.wait_for("over TLS", 30)
        except BaseException:
            worker.stop()
            raise
    try:
        ca_file.unlink()
        with redis_with(pki.server, pki.ca.cert, tmp_path / "two", port):
            assert worker.wait(30) == 2, worker.output()
        out = worker.output()
    finally:
        worker.stop()
    assert f"DISTQ_TLS_CA_FILE names '{ca_file}', which cannot be read" in out, out
    assert "Traceback" not in out, out


def test_a_redis_ca_file_rotated_by_a_symlink_swap_serves_the_reconnect(
    pki: Pki, tmp_path: Path
) -> None:
    """Kubernetes rotates a mounted secret by swapping its ``..data`` link at once: the
    path never goes missing, and the worker reconnects with the new file."""
    mount = tmp_path / "mount"
    mount.mkdir()
    for version in ("v1", "v2"):
        (mount / version).mkdir()
        shutil.copy(pki.ca.cert, mount / version / "ca.pem")
    (mount / "..data").symlink_to("v1")
    (mount / "ca.pem").symlink_to("..data/ca.pem")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    port = free_port()
    with redis_with(pki.server, pki.ca.cert, tmp_path / "one", port):
        worker = _worker_on(port, mount / "ca.pem")
        try:
            worker.wait_for("over TLS", 30)
        except BaseException:
            worker.stop()
            raise
    try:
        (mount / "..data_tmp").symlink_to("v2")
        os.replace(mount / "..data_tmp", mount / "..data")  # as kubelet does: one rename
        shutil.rmtree(mount / "v1")
        with redis_with(pki.server, pki.ca.cert, tmp_path / "two", port):
            worker.wait_for(r"reconnected to redis at .* over TLS", 60)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    finally:
        worker.stop()


def test_a_redis_ca_file_deleted_mid_job_stops_worker_and_master_with_exit_2_and_a_report(
    pki: Pki, tmp_path: Path
) -> None:
    """The master too: its reconnect after Redis restarts meets the deleted CA file and
    ends the job with exit 2, its report naming the file, as the worker's does."""
    port = free_port()
    ca_file = tmp_path / "ca.pem"
    shutil.copy(pki.ca.cert, ca_file)
    env = process_env(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_REDIS_URL": f"rediss://127.0.0.1:{port}/0",
            "DISTQ_TLS_CA_FILE": str(ca_file),
            "DISTQ_QUEUE": f"tls{secrets.token_hex(4)}",
            "DISTQ_DRAIN_SECONDS": "2",
        }
    )
    report = tmp_path / "report.json"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with redis_with(pki.server, pki.ca.cert, tmp_path / "one", port):
        master, worker = _job_under_way(env, report)
    try:
        ca_file.unlink()
        with redis_with(pki.server, pki.ca.cert, tmp_path / "two", port):
            assert worker.wait(30) == 2, worker.output()
            assert master.wait(60) == 2, master.output()
        outputs = worker.output(), master.output()
    finally:
        master.stop()
        worker.stop()
    named = f"DISTQ_TLS_CA_FILE names '{ca_file}', which cannot be read"
    for out in outputs:
        assert named in out and "Traceback" not in out, out
    assert named in " ".join(json.loads(report.read_text())["problems"])
