"""TLS files that are not regular files, and how often a TLS file is read.

A TLS file was read whole to check its size, then OpenSSL opened it again: a pipe
(bash's ``<(...)``, ``/proc/self/fd/N``) then held nothing ("holds no usable PEM
certificates"), a FIFO made OpenSSL wait for a writer for good, and a regular file was
read twice at each context. Now a regular file is checked by its size and read by OpenSSL
alone, at each context (a rotated certificate is taken up); any other is read once, and
its bytes kept for every later context of the process, Redis's connections included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
import redis
from cryptography import x509

from certs import CertificateAuthority
from distq import tls
from distq.errors import ConfigError
from distq.tls import MAX_TLS_FILE_BYTES, TlsFiles
from procs import forked_check

#: A FIFO read twice waited for a second writer for good: the test fails instead.
_WAIT_SECONDS = 20


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def bounded() -> Iterator[None]:
    """Fail a test still waiting after :data:`_WAIT_SECONDS` (on a FIFO's open)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"still waiting after {_WAIT_SECONDS} s (a FIFO read twice?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(_WAIT_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _pipe(data: bytes) -> Iterator[str]:
    """A path to a pipe that holds ``data``, its writer closed (bash's ``<(cat file)``)."""
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    try:
        yield f"/proc/self/fd/{read}"
    finally:
        os.close(read)


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[list[tuple[Path, threading.Thread]]]:
    """FIFOs made by :func:`_fifo`; each writer that no one read is let go at the end."""
    made: list[tuple[Path, threading.Thread]] = []
    yield made
    for path, writer in made:
        if writer.is_alive():  # open for reading, to let its open for writing return
            # (a FIFO its test read, then removed: its writer, still closing it, ends alone)
            with contextlib.suppress(FileNotFoundError):
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(10)


def _fifo(made: list[tuple[Path, threading.Thread]], path: Path, data: bytes) -> str:
    """A FIFO at ``path`` that a writer fills with ``data`` once, for its first reader."""
    os.mkfifo(path)

    def write() -> None:
        with path.open("wb") as file:
            file.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    made.append((path, writer))
    return str(path)


def _bytes_read() -> int:
    """What this process has read so far (Linux's ``rchar``: every read, OpenSSL's too)."""
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


def _trusted(context: ssl.SSLContext) -> list[str]:
    """The subjects of the CAs ``context`` trusts."""
    return [
        x509.load_der_x509_certificate(der).subject.rfc4514_string()
        for der in context.get_ca_certs(binary_form=True)
    ]


def test_a_ca_file_given_as_a_pipe_serves_every_context(ca: CertificateAuthority) -> None:
    """Was: "DISTQ_TLS_CA_FILE '/proc/self/fd/N' holds no usable PEM certificates (no
    certificate or crl found)": the size check had read the pipe, OpenSSL found it empty."""
    with _pipe(ca.cert.read_bytes()) as path:
        files = TlsFiles(ca_file=path)
        first, again = files.context(), files.context()  # a reconnect builds a new one
        assert _trusted(first) == _trusted(again) == ["CN=distq test CA"]


def test_tls_files_given_as_fifos_serve_every_context_and_each_redis_connect(
    ca: CertificateAuthority,
    tmp_path: Path,
    fifos: list[tuple[Path, threading.Thread]],
    bounded: None,
) -> None:
    """Was: the size check read each FIFO, then OpenSSL opened it again and waited for a
    writer for good (here: the timeout). redis-py builds its own context at each connect,
    from the paths :func:`tls.redis_options` gives: they serve it as often, as one process
    (the check at start, then the transport's connects) does."""
    cert, key = ca.client()
    files = TlsFiles(
        _fifo(fifos, tmp_path / "ca.fifo", ca.cert.read_bytes()),
        _fifo(fifos, tmp_path / "cert.fifo", cert.read_bytes()),
        _fifo(fifos, tmp_path / "key.fifo", key.read_bytes()),
    )
    for _ in range(2):
        assert files.context().cert_store_stats()["x509_ca"] == 1
    options = tls.redis_options("rediss://127.0.0.1:6380/0", files)
    for _ in range(2):  # as redis-py's SSLConnection does at each connect
        context = ssl.create_default_context(cafile=options["ssl_ca_certs"])
        context.load_cert_chain(options["ssl_certfile"], options["ssl_keyfile"])
        assert context.cert_store_stats()["x509_ca"] == 1
    assert all(not writer.is_alive() for _, writer in fifos)  # each read once, whole


def test_a_regular_tls_file_is_read_once_per_context(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Was: read whole by the size check, then again by OpenSSL (twice its size read)."""
    padded = tmp_path / "padded-ca.pem"
    filler = b"# not PEM: OpenSSL reads past it to the end\n" * (4 << 20 >> 6)
    padded.write_bytes(ca.cert.read_bytes() + filler)
    size = padded.stat().st_size
    files = TlsFiles(ca_file=str(padded))
    before = _bytes_read()
    assert files.context().cert_store_stats()["x509_ca"] == 1
    read = _bytes_read() - before
    assert size <= read < size * 3 // 2, (read, size)


def test_a_regular_tls_file_past_the_limit_is_refused_unread(tmp_path: Path) -> None:
    """Was: its first 16 MiB and one byte read to find it too large; its size says so."""
    big = tmp_path / "ca.pem"
    with big.open("wb") as file:
        file.truncate(4 * MAX_TLS_FILE_BYTES)  # sparse
    before = _bytes_read()
    with pytest.raises(ConfigError, match=r"which holds more than 16,777,216 bytes \(16 MiB\)"):
        TlsFiles(ca_file=str(big)).context()
    assert _bytes_read() - before < 1 << 20


def test_a_regular_tls_file_is_read_anew_by_each_context(tmp_path: Path) -> None:
    """A certificate rotated on disk is the one the next context (a reconnect) trusts:
    a regular file's bytes are never kept."""
    path = tmp_path / "ca.pem"
    old, new = (
        CertificateAuthority(tmp_path / "old", "old CA"),
        CertificateAuthority(tmp_path / "new", "new CA"),
    )
    path.write_bytes(old.cert.read_bytes())
    files = TlsFiles(ca_file=str(path))
    assert _trusted(files.context()) == ["CN=old CA"]
    path.write_bytes(new.cert.read_bytes())
    assert _trusted(files.context()) == ["CN=new CA"]


def test_a_pipe_that_cannot_be_kept_is_refused_saying_to_copy_it_into_a_file(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no anonymous file can be made (no ``memfd_create``), a pipe's bytes could not
    be read again: refused at start, with what to do, not "no usable PEM" at a reconnect."""
    monkeypatch.delattr(os, "memfd_create")
    with _pipe(ca.cert.read_bytes()) as path:
        with pytest.raises(ConfigError) as caught:
            TlsFiles(cert_file=path, key_file=path).context()
        assert str(caught.value).startswith(
            f"DISTQ_TLS_CERT_FILE names {path!r}, which is not a regular file (a pipe, or a "
            "device?), and distq cannot keep its content here for reconnects ("
        )
        assert str(caught.value).endswith(
            "; copy it into a file and name that file in DISTQ_TLS_CERT_FILE"
        )


def test_a_fifo_removed_after_start_still_serves_every_context(
    ca: CertificateAuthority,
    tmp_path: Path,
    fifos: list[tuple[Path, threading.Thread]],
    bounded: None,
) -> None:
    """Was: a FIFO read at start, then removed (a wrapper that writes a secret into a
    FIFO once and deletes it), made the next context (a RabbitMQ reconnect) a
    configuration error: "DISTQ_TLS_CA_FILE names '.../ca.fifo', which cannot be read (No
    such file or directory)", though its bytes were kept for every later connection."""
    path = _fifo(fifos, tmp_path / "ca.fifo", ca.cert.read_bytes())
    files = TlsFiles(ca_file=path)
    assert _trusted(files.context()) == ["CN=distq test CA"]
    os.unlink(path)
    assert _trusted(files.context()) == ["CN=distq test CA"]  # a reconnect's


def test_a_process_forked_while_the_kept_files_were_looked_up_makes_contexts(
    ca: CertificateAuthority,
) -> None:
    """A task's fork() while another thread (a reconnect) held the kept files' lock gave
    the child that lock held, by no thread of its own: its first context (an Executor's
    connect, say) waited for good. Here: killed by its alarm, exit -14."""
    with _pipe(ca.cert.read_bytes()) as path:
        files = TlsFiles(ca_file=path)
        files.context()
        with tls._KEPT_LOCK:  # as a reconnect's thread holds it
            code = forked_check(lambda: files.context().cert_store_stats()["x509_ca"] == 1)
    assert code == 0


def test_a_regular_tls_file_rotated_past_the_limit_is_refused_at_the_next_redis_connect(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """redis-py builds a context from the paths :func:`tls.redis_options` gives at each
    connect: a CA file rotated past the limit after start was read whole by OpenSSL at
    the next (here: its 17 MiB, then the handshake's timeout on a listener that says
    nothing). Now it is refused first, as at start and as RabbitMQ's connect does."""
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert.read_bytes())
    with socket.create_server(("127.0.0.1", 0)) as listener:  # TCP only: never answers
        url = f"rediss://127.0.0.1:{listener.getsockname()[1]}/0"
        options = tls.redis_options(url, TlsFiles(ca_file=str(path)))  # at start: fine
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, **options)
        line = b"# not PEM: OpenSSL reads past it to the end\n"
        path.write_bytes(ca.cert.read_bytes() + line * (MAX_TLS_FILE_BYTES // len(line)))
        assert path.stat().st_size > MAX_TLS_FILE_BYTES  # rotated since, past the limit
        before = _bytes_read()
        with pytest.raises(ConfigError, match=r"which holds more than 16,777,216 bytes"):
            client.ping()
        assert _bytes_read() - before < 1 << 20
        client.close()


def test_a_regular_tls_file_deleted_since_start_is_refused_at_the_next_redis_connect(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Was: OpenSSL's "Error 2 connecting to 127.0.0.1:N. No such file or directory.",
    a ConnectionError naming no file, retried for good; RabbitMQ's connect refuses it
    naming the setting and the path (exit 2). Now Redis's does the same."""
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert.read_bytes())
    with socket.create_server(("127.0.0.1", 0)) as listener:  # TCP only: never answers
        url = f"rediss://127.0.0.1:{listener.getsockname()[1]}/0"
        options = tls.redis_options(url, TlsFiles(ca_file=str(path)))  # at start: fine
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, **options)
        path.unlink()
        with pytest.raises(ConfigError, match=r"DISTQ_TLS_CA_FILE names '.*ca\.pem', which cannot"):
            client.ping()
        client.close()
