"""Secret and TLS files given as FIFOs or pipes: waited on for a bounded time, read once.

A FIFO nothing wrote to held start-up for good: ``open()`` waits for a writer. Now a
FIFO is waited on for :data:`FIFO_WAIT_SECONDS` (its first bytes, then each further
bytes), then refused, naming the setting and the path; a pipe (bash's ``<(...)``,
``/dev/stdin``) has its writer from the start and is read as slowly as it writes. One
pipe named by two settings, or by two paths (``/dev/stdin``, ``/proc/self/fd/0``), was
read twice, the second time empty ("which is empty", "not a PEM certificate and its
key"): now it is read once, and every setting that names it gets what was read, as a
regular file named twice gives each its content.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certs import CertificateAuthority
from conftest import REPO
from distq import credentials, tls
from distq.config import Settings
from distq.credentials import read_secret
from distq.errors import ConfigError
from distq.tls import TlsFiles
from procs import forked_check

#: A test still waiting after this long (on a FIFO's open, before) fails.
pytestmark = pytest.mark.timeout(30)

MANAGER = {"DISTQ_TRANSPORT": "manager"}
KEY = "k" * 24 + "-a-key-of-some-length"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def short_wait(monkeypatch: pytest.MonkeyPatch) -> float:
    """A FIFO waited on for 0.3 s, not 5 s, to keep the tests short."""
    monkeypatch.setattr(credentials, "FIFO_WAIT_SECONDS", 0.3, raising=False)
    return 0.3


@contextlib.contextmanager
def _writer(path: Path, data: bytes, after: float = 0.0, hold: bool = False) -> Iterator[None]:
    """A thread that opens the FIFO ``path`` ``after`` seconds, writes ``data`` and closes
    it (``hold``: keeps it open until the block ends); let go at the end if no one read."""
    done = threading.Event()

    def write() -> None:
        time.sleep(after)
        with path.open("wb", buffering=0) as file:
            file.write(data)
            if hold:
                done.wait(30)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        if thread.is_alive():  # still opening: a reader lets its open return
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(10)


@contextlib.contextmanager
def _pipe(data: bytes, after: float = 0.0) -> Iterator[tuple[str, str]]:
    """Two paths to one pipe (two descriptors of its read end, as ``/dev/stdin`` and
    ``/proc/self/fd/0`` are), its writer writing ``data`` ``after`` seconds, then closing."""
    read, write = os.pipe()
    again = os.dup(read)

    def fill() -> None:
        time.sleep(after)
        with contextlib.suppress(BrokenPipeError):  # its reader stopped at a limit, and left
            os.write(write, data)
        os.close(write)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    try:
        yield f"/proc/self/fd/{read}", f"/proc/self/fd/{again}"
    finally:
        # the read ends first: a writer held on a full pipe (a read that stopped at its
        # limit) ends at once, not at the join's 10 s
        os.close(read)
        os.close(again)
        thread.join(10)


@pytest.mark.timeout(10)
def test_a_secret_file_naming_a_fifo_nothing_writes_to_is_refused_after_the_wait(
    tmp_path: Path, short_wait: float
) -> None:
    """Was: Settings.load waited on the FIFO's open for good (here: the timeout mark)."""
    fifo = tmp_path / "authkey"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        Settings.load({**MANAGER, "DISTQ_AUTHKEY_FILE": str(fifo)})
    assert time.monotonic() - started < 5
    assert str(caught.value) == (
        f"DISTQ_AUTHKEY_FILE names {str(fifo)!r}, and nothing wrote to that FIFO within "
        f"0.3 s; start what writes it (e.g. cat FILE > {fifo} &) before distq, or write the "
        "content into a regular file and name that file, or unset DISTQ_AUTHKEY_FILE"
    )


@pytest.mark.timeout(10)
def test_a_tls_file_naming_a_fifo_nothing_writes_to_is_refused_after_the_wait(
    tmp_path: Path, short_wait: float
) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as caught:
        TlsFiles(ca_file=str(fifo)).context()
    assert str(caught.value).startswith(
        f"DISTQ_TLS_CA_FILE names {str(fifo)!r}, and nothing wrote to that FIFO within 0.3 s; "
    )
    assert str(caught.value).endswith(", or unset DISTQ_TLS_CA_FILE")


@pytest.mark.timeout(10)
def test_a_fifo_whose_writer_stops_without_closing_it_is_refused_saying_so(
    tmp_path: Path, short_wait: float
) -> None:
    fifo = tmp_path / "password"
    os.mkfifo(fifo)
    with _writer(fifo, b"half a pas", hold=True), pytest.raises(ConfigError) as caught:
        read_secret(str(fifo), "DISTQ_REDIS_PASSWORD_FILE")
    assert (
        "whose writer wrote 10 bytes, then nothing more for 0.3 s, and kept it open; have "
        "the writer close the FIFO once it has written all, or write the content into a "
        "regular file"
    ) in str(caught.value)


def test_a_fifo_whose_writer_comes_within_the_wait_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credentials, "FIFO_WAIT_SECONDS", 3.0, raising=False)
    fifo = tmp_path / "authkey"
    os.mkfifo(fifo)
    with _writer(fifo, KEY.encode() + b"\n", after=0.5):
        assert read_secret(str(fifo), "DISTQ_AUTHKEY_FILE") == KEY


def test_a_pipe_whose_writer_is_slower_than_the_fifo_wait_is_read_all_the_same(
    short_wait: float,
) -> None:
    """bash's ``<(...)`` has its writer at once, which may take a while (a pass phrase
    asked for, a secret store's answer): no bound, as before."""
    with _pipe(KEY.encode(), after=4 * short_wait) as (path, _):
        assert read_secret(path, "DISTQ_AUTHKEY_FILE") == KEY


@pytest.mark.parametrize(
    "variable", ["DISTQ_TLS_CA_FILE", "DISTQ_REDIS_PASSWORD_FILE"], ids=["tls", "secret"]
)
def test_distq_worker_given_a_fifo_nothing_writes_to_exits_2_after_5_s(
    tmp_path: Path, variable: str
) -> None:
    """The brief's reproduction, with the wait as shipped: ``mkfifo f;
    DISTQ_TLS_CA_FILE=f distq worker`` waited for good."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    scheme = "rediss" if variable.startswith("DISTQ_TLS") else "redis"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        PYTHONPATH=str(REPO / "src"),
        DISTQ_TRANSPORT="redis",
        DISTQ_REDIS_URL=f"{scheme}://127.0.0.1:1/0",
        **{variable: str(fifo)},
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "distq", "worker", "--connect-timeout", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"{variable} names {str(fifo)!r}, and nothing wrote to that FIFO within 5 s" in (
        done.stderr
    )
    assert 4.5 < time.monotonic() - started < 20


def test_one_pipe_named_by_two_secret_files_gives_both_its_content() -> None:
    """Was: "DISTQ_SIGNING_KEY_FILE names '/proc/self/fd/N', which is empty": the authkey
    had read the pipe first."""
    with _pipe(KEY.encode() + b"\n") as (path, again):
        settings = Settings.load(
            {**MANAGER, "DISTQ_AUTHKEY_FILE": path, "DISTQ_SIGNING_KEY_FILE": again}
        )
    assert settings.authkey == KEY.encode()
    assert settings.signing_keys == (KEY.encode(),)


def test_one_pipe_named_as_the_client_certificate_and_its_key_serves_both(
    ca: CertificateAuthority,
) -> None:
    """Was: "DISTQ_TLS_CERT_FILE '/proc/self/fd/N' and DISTQ_TLS_KEY_FILE
    '/proc/self/fd/M' are not a PEM certificate and its key ([SSL] PEM lib ...)"."""
    cert, key = ca.client()
    with _pipe(cert.read_bytes() + key.read_bytes()) as (path, again):
        files = TlsFiles(cert_file=path, key_file=again)
        files.context()
        files.context()  # a reconnect's


def test_one_pipe_named_as_a_secret_file_and_a_tls_file_serves_both(
    ca: CertificateAuthority,
) -> None:
    """Was: "DISTQ_TLS_CA_FILE '/proc/self/fd/N' holds no usable PEM certificates": the
    password's file had read the pipe first (a silly password; but as a regular file
    named twice would give it)."""
    pem = ca.cert.read_bytes()
    with _pipe(pem) as (path, again):
        settings = Settings.load(
            {
                "DISTQ_TRANSPORT": "redis",
                "DISTQ_REDIS_URL": "rediss://127.0.0.1:1/0",
                "DISTQ_REDIS_PASSWORD_FILE": path,
                "DISTQ_TLS_CA_FILE": again,
            }
        )
        assert settings.redis_password == pem.decode().removesuffix("\n")
        assert settings.tls_files.context().cert_store_stats()["x509_ca"] == 1


def test_dev_stdin_and_proc_self_fd_0_name_one_pipe_read_once(ca: CertificateAuthority) -> None:
    """The brief's case: a worker given its certificate and key on stdin, by two names,
    gets past its settings (exit 3: no broker on port 1), not "are not a PEM
    certificate and its key" (exit 2)."""
    cert, key = ca.client()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        PYTHONPATH=str(REPO / "src"),
        DISTQ_TRANSPORT="redis",
        DISTQ_REDIS_URL="rediss://127.0.0.1:1/0",
        DISTQ_TLS_CERT_FILE="/dev/stdin",
        DISTQ_TLS_KEY_FILE="/proc/self/fd/0",
    )
    done = subprocess.run(
        [sys.executable, "-m", "distq", "worker", "--connect-timeout", "0"],
        env=env,
        input=cert.read_bytes() + key.read_bytes(),  # a pipe
        capture_output=True,
        timeout=25,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert b"cannot reach Redis at 127.0.0.1:1" in done.stderr, done.stderr


def test_a_fifo_read_is_let_go_so_the_next_program_reading_it_gets_its_own_writers_bytes(
    tmp_path: Path,
) -> None:
    """Two workers on one host, each handed the key through one FIFO by a writer of its
    own (``cat key > f &`` before each). Was: the first kept the FIFO open for reading,
    for its life, so the second's writer wrote into that reader's buffer at once and
    left; the second worker read those bytes, then waited 5 s for an end and was refused
    ("whose writer wrote 46 bytes, then nothing more for 5 s, and kept it open"). Now
    the first keeps the FIFO's inode (``O_PATH``), not a reader of it: a writer waits for
    the next reader, as for any program that read a FIFO and closed it."""
    fifo = tmp_path / "authkey"
    os.mkfifo(fifo)
    with _writer(fifo, KEY.encode() + b"\n"):
        assert read_secret(str(fifo), "DISTQ_AUTHKEY_FILE") == KEY
    with pytest.raises(OSError) as caught:  # as for a FIFO no program has open
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert caught.value.errno == errno.ENXIO  # "no reader": a writer's open would wait
    second = "another-key-of-24-bytes-or-more"
    with _writer(fifo, second.encode() + b"\n"):  # waits for the second worker's open
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from distq.credentials import read_secret as r; "
                f"print(r({str(fifo)!r}, 'DISTQ_AUTHKEY_FILE'))",
            ],
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    assert (done.returncode, done.stdout, done.stderr) == (0, second + "\n", "")


def test_a_process_forked_while_a_fifo_was_read_reads_its_own_secret_files(
    tmp_path: Path,
) -> None:
    """A task's fork() while another thread read a FIFO (holding the lock of the pipes
    read, for up to 5 s a stall) gave the child that lock held, by no thread of its own:
    its first secret file (an Executor's settings, say) waited for good. Here: killed by
    its alarm, exit -14."""
    key = tmp_path / "authkey"
    key.write_text(KEY + "\n")
    with credentials._PIPES_LOCK:  # as a FIFO's reader holds it
        code = forked_check(lambda: read_secret(str(key), "DISTQ_AUTHKEY_FILE") == KEY)
    assert code == 0


@pytest.mark.timeout(10)
def test_the_command_a_fifos_refusal_suggests_quotes_a_path_with_a_space(
    tmp_path: Path, short_wait: float
) -> None:
    """Was: "start what writes it (e.g. cat FILE > /.../my secrets/authkey &)": pasted
    into a shell, that writes to a file named "my" and runs secrets/authkey."""
    fifo = tmp_path / "my secrets" / "authkey"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as caught:
        read_secret(str(fifo), "DISTQ_AUTHKEY_FILE")
    assert f"start what writes it (e.g. cat FILE > '{fifo}' &) before distq" in str(caught.value)


def test_a_fifo_made_anew_where_one_was_read_is_read_not_served_the_old_ones_bytes(
    tmp_path: Path,
) -> None:
    """A FIFO read, removed, and another made at its path (a wrapper's, for a second
    Executor): ext4 gives the new one the old one's inode number at once, and the bytes
    kept by (device, inode) were served for it, unread, unless the old inode is held."""
    fifo = tmp_path / "authkey"
    os.mkfifo(fifo)
    with _writer(fifo, KEY.encode()):
        assert read_secret(str(fifo), "DISTQ_AUTHKEY_FILE") == KEY
    fifo.unlink()
    os.mkfifo(fifo)  # on ext4, without the old inode held: its number
    second = "another-key-of-24-bytes-or-more"
    with _writer(fifo, second.encode()):
        assert read_secret(str(fifo), "DISTQ_AUTHKEY_FILE") == second


def test_a_regular_secret_file_is_read_while_another_thread_waits_on_a_pipe(
    tmp_path: Path,
) -> None:
    """An Executor made in one thread with a secret on a slow pipe (bash's ``<(vault
    read ...)``, ``/dev/stdin`` on a terminal: as long as its writer takes) held up every
    other thread's secret files, regular ones too, for all that time: the pipes' lock was
    taken for every file. A regular file needs no lock: it is read at once."""
    key = tmp_path / "authkey"
    key.write_text(KEY + "\n")
    with _pipe(KEY.encode(), after=3.0) as (path, _):
        slow = threading.Thread(target=read_secret, args=(path, "DISTQ_AUTHKEY_FILE"))
        slow.start()
        time.sleep(0.5)  # it waits on the pipe's writer
        started = time.monotonic()
        assert read_secret(str(key), "DISTQ_SIGNING_KEY_FILE") == KEY
        waited = time.monotonic() - started
        slow.join(10)
    assert waited < 1.0


@pytest.mark.timeout(10)
def test_a_fifo_whose_writer_closed_before_distq_opened_it_is_read_at_once(
    tmp_path: Path, short_wait: float
) -> None:
    """``printf key > f & distq worker < f`` with DISTQ_AUTHKEY_FILE=/dev/stdin: the
    shell opened the FIFO, printf wrote and closed it before distq opened /dev/stdin.
    Linux tells a reader that opened after the writer left of no end (poll), though
    read() says it (no writer): was refused after the wait, "whose writer wrote 46
    bytes, then nothing more for 5 s, and kept it open"; on main it waited for good."""
    fifo = tmp_path / "authkey"
    os.mkfifo(fifo)
    shell = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the shell's: distq's stdin
    try:
        with _writer(fifo, KEY.encode() + b"\n"):
            pass  # written and closed
        started = time.monotonic()
        assert read_secret(f"/proc/self/fd/{shell}", "DISTQ_AUTHKEY_FILE") == KEY
        assert time.monotonic() - started < short_wait
    finally:
        os.close(shell)


@pytest.mark.timeout(10)
def test_a_fifo_whose_writer_opened_it_and_wrote_nothing_is_refused_saying_so(
    tmp_path: Path, short_wait: float
) -> None:
    """A writer started before distq, as the refusal said to, that opened the FIFO and
    is slow to write (a prompt for a pass phrase, a secret store's answer). Was: "and
    nothing wrote to that FIFO within 5 s; start what writes it (e.g. cat FILE > f &)
    before distq", as if none had been started."""
    fifo = tmp_path / "password"
    os.mkfifo(fifo)
    with _writer(fifo, b"", hold=True), pytest.raises(ConfigError) as caught:
        read_secret(str(fifo), "DISTQ_REDIS_PASSWORD_FILE")
    assert str(caught.value) == (
        f"DISTQ_REDIS_PASSWORD_FILE names {str(fifo)!r}, whose writer opened it, then wrote "
        "nothing for 0.3 s, and kept it open; have the writer write all within that time "
        "and close the FIFO, or write the content into a regular file and name that file, "
        "or unset DISTQ_REDIS_PASSWORD_FILE"
    )


_CUT = (
    "DISTQ_TLS_CA_FILE names '/proc/self/fd/{fd}', a pipe that DISTQ_REDIS_PASSWORD_FILE "
    "named first and that was read no further than that setting's limit of 65,536 bytes "
    "(64 KiB): the rest cannot be read again; write the content into a regular file and "
    "name that file in DISTQ_TLS_CA_FILE, or unset DISTQ_TLS_CA_FILE"
)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", [70_000, (16 << 20) + 10])
def test_a_pipe_a_secret_read_to_its_limit_is_refused_to_a_tls_file_saying_where_it_stopped(
    size: int,
) -> None:
    """A pipe is read once, no further than the limit of the first setting naming it:
    past a secret's 64 KiB, a TLS file's setting naming it after is told the read stopped
    there, for which setting, and to give a regular file. Was: "holds more than
    16,777,216 bytes (16 MiB)", for 70 KB (before 81034836, which read every pipe to 16
    MiB instead, and so waited on a secret's writer that held it open)."""
    with _pipe(b"x" * size) as (path, again):
        with pytest.raises(ConfigError, match=r"more than 65,536 bytes \(64 KiB\), the most the"):
            read_secret(path, "DISTQ_REDIS_PASSWORD_FILE")
        with pytest.raises(ConfigError) as refusal:
            TlsFiles(ca_file=again).context()
        assert str(refusal.value) == _CUT.format(fd=again.rsplit("/", 1)[1])


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", [70_000, (16 << 20) + 10])
def test_a_pipe_a_tls_file_read_first_is_refused_by_a_secret_with_its_own_limit(
    ca: CertificateAuthority, size: int
) -> None:
    """Read to a TLS file's 16 MiB first: the secret's setting naming the pipe after is
    refused by its own 64 KiB; the TLS file's gets a PEM within its limit, or its own
    refusal past it."""
    pem = ca.cert.read_bytes()
    with _pipe(pem + b"# not PEM: OpenSSL reads past it\n" * (size // 33)) as (path, again):
        if size < tls.MAX_TLS_FILE_BYTES:
            assert TlsFiles(ca_file=again).context().cert_store_stats()["x509_ca"] == 1
        else:
            with pytest.raises(ConfigError, match=r"more than 16,777,216 bytes \(16 MiB\)"):
                TlsFiles(ca_file=again).context()
        with pytest.raises(ConfigError, match=r"more than 65,536 bytes \(64 KiB\), the most the"):
            read_secret(path, "DISTQ_REDIS_PASSWORD_FILE")


def test_a_tls_files_pipe_is_held_once_in_its_kept_file_and_serves_a_secret_after(
    ca: CertificateAuthority,
) -> None:
    """Was: a pipe's bytes held twice for the process's lifetime, read (up to 16 MiB)
    and in the memfd OpenSSL reads; now in the memfd only, read back for a secret
    file's setting naming the same pipe later (a program's Executor keyword)."""
    pem = ca.cert.read_bytes()
    with _pipe(pem) as (path, again):
        assert TlsFiles(ca_file=path).context().cert_store_stats()["x509_ca"] == 1
        status = os.stat(path)
        pipe = credentials._PIPES[status.st_dev, status.st_ino]
        assert pipe.data == b"" and pipe.kept >= 0  # the kept file's bytes only
        assert read_secret(again, "DISTQ_REDIS_PASSWORD_FILE") == pem.decode().removesuffix("\n")
        assert TlsFiles(ca_file=again).context().cert_store_stats()["x509_ca"] == 1


def test_a_fifo_whose_writer_wrote_past_a_secrets_limit_and_held_it_is_refused_as_too_large(
    tmp_path: Path, short_wait: float
) -> None:
    """A FIFO is read no further than a secret's limit and one byte: one whose writer
    wrote more than 64 KiB and kept it open is "holds more than 64 KiB", not "wrote 70,000
    bytes, then nothing more"."""
    fifo = tmp_path / "password"
    os.mkfifo(fifo)
    with _writer(fifo, b"p" * 70_000, hold=True), pytest.raises(ConfigError) as caught:
        read_secret(str(fifo), "DISTQ_REDIS_PASSWORD_FILE")
    assert "which holds more than 65,536 bytes (64 KiB), the most the secret" in str(caught.value)


@pytest.mark.timeout(30)
def test_a_secrets_pipe_past_its_limit_whose_writer_holds_it_open_is_refused_at_once() -> None:
    """A secret's setting reads its pipe no further than its own limit (64 KiB and one
    byte): one whose writer wrote 70,000 bytes and keeps it open is refused at once. Was
    (read on to the 16 MiB of a TLS file's limit, for a TLS file naming it later): the
    refusal waited on that writer for good."""
    read, write = os.pipe()
    done = threading.Event()
    refused: list[ConfigError] = []

    def writer() -> None:
        with contextlib.suppress(BrokenPipeError):
            os.write(write, b"p" * 70_000)
        done.wait(30)
        os.close(write)

    def secret() -> None:
        try:
            read_secret(f"/proc/self/fd/{read}", "DISTQ_REDIS_PASSWORD_FILE")
        except ConfigError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for run in (writer, secret)]
    for thread in threads:
        thread.start()
    try:
        threads[1].join(5)
        assert refused, "the refusal waited on the pipe's writer"
        assert "which holds more than 65,536 bytes (64 KiB), the most the secret" in str(refused[0])
    finally:
        done.set()
        for thread in threads:
            thread.join(10)
        os.close(read)


def _kept_files() -> int:
    """How many files distq keeps TLS files' bytes in (memfds) in this process."""
    fds = Path("/proc/self/fd")
    return sum(
        os.readlink(fd).startswith("/memfd:distq-tls") for fd in fds.iterdir() if fd.exists()
    )


def test_one_pipe_named_as_a_tls_file_by_two_paths_is_kept_once(
    ca: CertificateAuthority,
) -> None:
    """``/dev/stdin`` and ``/proc/self/fd/0`` (two paths, one pipe) as two TLS files'
    settings: its bytes are kept in one file, which OpenSSL reads for both. Was: a
    second copy, up to 16 MiB, kept for the second path, read back from the first."""
    before = _kept_files()
    with _pipe(ca.cert.read_bytes()) as (path, again):
        assert TlsFiles(ca_file=path).context().cert_store_stats()["x509_ca"] == 1
        assert TlsFiles(ca_file=again).context().cert_store_stats()["x509_ca"] == 1
    assert _kept_files() - before == 1


@contextlib.contextmanager
def _stats_counted() -> Iterator[list[str]]:
    """Each stat of a file this thread makes in the block, by name: ``os.stat``,
    ``os.lstat``, ``os.fstat``, and a file object made (``open``, ``io.open``,
    ``os.fdopen``, ``io.FileIO``: "open"), whose making fstats what it opens, in C, where
    a wrapped ``os.fstat`` does not see it. Was: strace in a child, and the test skipped
    where strace is not installed (no script of the project installs it)."""
    me = threading.get_ident()
    calls: list[str] = []
    inside = threading.local()  # os.fdopen's io.open: one file object made, one stat

    def counted(name: str, real: Any) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            if threading.get_ident() != me or getattr(inside, "now", False):
                return real(*args, **kw)
            calls.append(name)
            inside.now = True
            try:
                return real(*args, **kw)
            finally:
                inside.now = False

        return call

    class CountedFileIO(io.FileIO):
        def __init__(self, *args: Any, **kw: Any) -> None:
            if threading.get_ident() == me and not getattr(inside, "now", False):
                calls.append("open")
            super().__init__(*args, **kw)

    with pytest.MonkeyPatch.context() as patch:
        for name in ("stat", "lstat", "fstat"):
            patch.setattr(os, name, counted(name, getattr(os, name)))
        patch.setattr(os, "fdopen", counted("open", os.fdopen))
        patch.setattr(io, "open", counted("open", io.open))
        patch.setattr(builtins, "open", counted("open", builtins.open))
        patch.setattr(io, "FileIO", CountedFileIO)
        yield calls


def test_a_file_object_made_is_counted_as_a_stat(tmp_path: Path) -> None:
    """What :func:`_stats_counted` counts: each way of making a file object, once."""
    path = tmp_path / "file"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    with _stats_counted() as calls:
        os.stat(path)
        os.fstat(fd)
        open(fd, "rb", closefd=False).close()
        io.open(fd, "rb", closefd=False).close()  # noqa: UP020 (the one patched too)
        os.fdopen(fd, "rb", closefd=False).close()
        io.FileIO(fd, closefd=False).close()
        path.read_bytes()
    os.close(fd)
    assert calls == ["stat", "fstat", "open", "open", "open", "open", "open"]


@pytest.mark.parametrize("kind", ["regular", "pipe", "tls"])
def test_a_secret_or_tls_file_is_stated_once_by_its_path_and_once_opened(
    kind: str, tmp_path: Path
) -> None:
    """Once by its path (a FIFO is not opened to be looked at: another program's writer
    would be let in) and once open (what is read is what was opened, whatever the path
    names by then); no more. Was: a regular file three times (python's ``open`` of the
    descriptor stated it again), a pipe four (its path again under the pipes' lock), a
    regular TLS file three (its file object's fstat, then distq's own)."""
    credentials._pipes_device()  # once a process: not this read's
    with contextlib.ExitStack() as stack:
        if kind == "pipe":  # its writer closed, as bash's <(...)
            read, write = os.pipe()
            stack.callback(os.close, read)
            os.write(write, KEY.encode())
            os.close(write)
            path = f"/proc/self/fd/{read}"
        else:
            path = str(tmp_path / "authkey")
            Path(path).write_text(KEY + "\n")
        with _stats_counted() as calls:
            if kind == "tls":
                got = TlsFiles(ca_file=path).for_openssl().ca_file
            else:
                got = read_secret(path, "DISTQ_AUTHKEY_FILE")
    assert got == (path if kind == "tls" else KEY)
    assert calls == ["stat", "fstat"]


def test_a_fifo_is_stated_once_by_its_path_and_once_opened(tmp_path: Path) -> None:
    """A FIFO's path was stated twice, once to tell it is a pipe, again under the pipes'
    lock to find it among those read; and once by that path when read again."""
    credentials._pipes_device()  # once a process: not this read's
    fifo = tmp_path / "authkey"
    os.mkfifo(fifo)
    with _writer(fifo, KEY.encode() + b"\n"), _stats_counted() as calls:
        assert read_secret(str(fifo), "DISTQ_AUTHKEY_FILE") == KEY
    assert calls == ["stat", "fstat"]
    with _stats_counted() as calls:
        assert read_secret(str(fifo), "DISTQ_SIGNING_KEY_FILE") == KEY  # read once: as kept
    assert calls == ["stat"]


def test_a_fifo_whose_writer_wrote_one_byte_says_1_byte() -> None:
    """It said "whose writer wrote 1 bytes, then nothing more"."""
    said = str(credentials.unwritten("DISTQ_X_FILE", "/p", credentials.FifoSilent(1, True), "u"))
    assert "whose writer wrote 1 byte, then nothing more for " in said, said
    said = str(credentials.unwritten("DISTQ_X_FILE", "/p", credentials.FifoSilent(2, True), "u"))
    assert "whose writer wrote 2 bytes, then nothing more for " in said, said
