"""TLS to the brokers: ``rediss://`` and ``amqps://`` with a CA file and a client certificate.

``DISTQ_TLS_CA_FILE`` names the CAs that may sign the broker's certificate (default: the
system's); ``DISTQ_TLS_CERT_FILE`` and ``DISTQ_TLS_KEY_FILE`` a client certificate for
brokers that require one. The broker's certificate must name the host in the URL:
host name verification is on unless the URL itself turns it or certificate checks off
(Redis: ``?ssl_check_hostname=false``, ``?ssl_cert_reqs=none``). TLS files are given
one way only: ``DISTQ_TLS_*`` or the URL's own options, not both. The manager
transport has no TLS.

This module checks the files up front (a configuration error, exit 2), gives each
transport its options, and turns the ``ssl`` module's failures into one line that says
which certificate was refused and why. OpenSSL reads a regular file by its path at each
context (a reconnect takes up a rotated certificate); a file that is not one (a pipe,
bash's ``<(...)``, a FIFO, ``/dev/stdin``) it could read once only, so distq reads it
once and keeps its bytes for every later context of the process (:func:`_openssl_path`).
"""

from __future__ import annotations

import ast
import fcntl
import os
import re
import ssl
import stat
import threading
from dataclasses import astuple, dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from distq.credentials import (
    FifoSilent,
    PipeCut,
    keep_pipe,
    pipe_cut_short,
    pipe_kept_in,
    read_at_most,
    too_large,
    unreadable,
    unwritten,
)
from distq.errors import ConfigError

TLS_SCHEMES = {"redis": ("rediss",), "rabbitmq": ("amqps",)}
URL_VARIABLE = {"redis": "DISTQ_REDIS_URL", "rabbitmq": "DISTQ_AMQP_URL"}
#: Query options of a URL that name TLS files, as ``DISTQ_TLS_*`` do. redis-py lets
#: the URL's win over the keywords distq passes, pika's ``ssl_options`` replaces them.
URL_FILE_OPTIONS = {
    "redis": ("ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile"),
    "rabbitmq": ("ssl_options",),
}
#: ``ssl_cert_reqs`` values with which redis-py does not verify the certificate (a
#: client's ``optional`` verifies it as ``required`` does: Python's ``CERT_OPTIONAL``).
_UNVERIFIED = ("none",)
#: Most bytes a TLS file may hold: every public CA in one bundle is some 200 KiB.
#: OpenSSL gives up on ``/dev/zero`` or a log at once, but holds a PEM block whole: one
#: of 320 MB (a file written wrong, or on purpose) took a worker to 680 MB.
MAX_TLS_FILE_BYTES = 16 << 20


@dataclass(frozen=True)
class TlsFiles:
    """The client side's files; all optional (no CA file: the system's CAs)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __bool__(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))

    def context(self) -> ssl.SSLContext:
        """A client context: these CAs (or the system's), this certificate, host names checked.

        Raises :class:`ConfigError` naming the file that cannot be used.
        """
        files = self.for_openssl()
        try:
            context = ssl.create_default_context(cafile=files.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"DISTQ_TLS_CA_FILE {self.ca_file!r} holds no usable PEM certificates "
                f"({_reason(exc)})"
            ) from None
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if files.cert_file:
            try:  # never OpenSSL's own prompt: it waited on a terminal, for good
                context.load_cert_chain(files.cert_file, files.key_file, _no_pass_phrase)
            except _PassPhrase:
                raise ConfigError(
                    f"DISTQ_TLS_KEY_FILE {self.key_file or self.cert_file!r} is encrypted with "
                    "a pass phrase, which distq cannot give; decrypt it (openssl pkey -in "
                    "key.pem -out plain-key.pem) into a file only distq's user may read"
                ) from None
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"DISTQ_TLS_CERT_FILE {self.cert_file!r} and DISTQ_TLS_KEY_FILE "
                    f"{self.key_file!r} are not a PEM certificate and its key ({_reason(exc)})"
                ) from None
        return context

    def named(self) -> tuple[tuple[str, str | None], ...]:
        """Each file with the variable that names it."""
        return tuple(zip(_VARIABLES, astuple(self), strict=True))

    def for_openssl(self) -> TlsFiles:
        """These files as OpenSSL is to read them (:func:`_openssl_path`), each checked
        first: OpenSSL's error for a missing one named no file (the CA's "holds no usable
        PEM certificates", or the client's two files together), so the user was not told
        which to mount. Raises :class:`ConfigError` naming the file."""
        return TlsFiles(*(_openssl_path(var, path) if path else None for var, path in self.named()))


_VARIABLES = ("DISTQ_TLS_CA_FILE", "DISTQ_TLS_CERT_FILE", "DISTQ_TLS_KEY_FILE")
#: Each TLS file that is not a regular file, by its path and identity (device, inode):
#: the path OpenSSL reads its bytes from (:func:`_kept`), for the process's lifetime.
#: Not :data:`distq.credentials._PIPES`, which knows each pipe by identity alone (its
#: memfd too: :func:`_kept_for`): OpenSSL is given a path, and two cases need it here.
#: A FIFO removed since it was read can be found by its path only (:func:`_kept_at`),
#: and a device (``/dev/stdin`` on a terminal) is no pipe, read anew by each setting
#: naming it (two reads may differ): kept once per path, not shared by identity.
_KEPT: dict[tuple[str, int, int], str] = {}
_KEPT_LOCK = threading.Lock()


def _new_kept_lock() -> None:
    """In a child made by fork(): a lock of its own, not one another thread held then."""
    global _KEPT_LOCK
    _KEPT_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_kept_lock)


def _openssl_path(var: str, path: str) -> str:
    """The path OpenSSL is to read the file ``var`` names (``path``) at: a regular file's
    own, checked to open and to hold at most :data:`MAX_TLS_FILE_BYTES` by its size,
    unread (OpenSSL reads it, once a context); any other file's bytes, read once (no more
    than the limit: ``/dev/zero`` ends there) and kept (:func:`_kept`). Was: each file
    was read whole to check it, then OpenSSL opened it again, and a pipe or a FIFO read
    then held nothing: "holds no usable PEM certificates", or OpenSSL waited on the FIFO
    for a writer, for good."""
    try:
        status = os.stat(path)  # not open: a FIFO read before would wait for a writer
    except OSError as exc:
        kept = _kept_at(path)  # a FIFO removed once read: its bytes serve on
        if kept is None:
            raise unreadable(var, path, exc, "the file", f"unset {var}") from None
        return kept
    if not stat.S_ISREG(status.st_mode):
        identity = (path, status.st_dev, status.st_ino)
        with _KEPT_LOCK:
            if identity not in _KEPT:
                _KEPT[identity] = _kept_for(status) or _keep(var, path, status)
            return _KEPT[identity]
    try:  # readable by us: opened, not read (nor made a file object, which stats it again)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    except OSError as exc:
        raise unreadable(var, path, exc, "the file", f"unset {var}") from None
    if size > MAX_TLS_FILE_BYTES:
        raise too_large(var, path, MAX_TLS_FILE_BYTES, "a PEM file", f"unset {var}")
    return path


def _kept_for(status: os.stat_result) -> str | None:
    """The path OpenSSL reads the bytes kept of the pipe or FIFO of ``status`` at, kept
    for another path naming it (``/dev/stdin`` and ``/proc/self/fd/0``), if any: it is
    read once, and the pipes read know its memfd by its identity (:func:`keep_pipe`). A
    device, read anew for each path, is none. Was: a second copy kept for each path (16
    MiB each, at most)."""
    if not stat.S_ISFIFO(status.st_mode):
        return None
    kept = pipe_kept_in((status.st_dev, status.st_ino))
    return None if kept is None else f"/proc/self/fd/{kept}"


def _keep(var: str, path: str, status: os.stat_result) -> str:
    """The path OpenSSL is to read the pipe or FIFO ``var`` names (``path``, of
    ``status``) at: its bytes, read and kept (:func:`_kept`), there only."""
    fd = _kept(var, path, _read(var, path))
    keep_pipe((status.st_dev, status.st_ino), fd)  # its bytes here only
    return f"/proc/self/fd/{fd}"


def _kept_at(path: str) -> str | None:
    """The path OpenSSL reads the bytes last kept of the file at ``path`` at, if any."""
    with _KEPT_LOCK:
        return next((kept for (at, *_), kept in reversed(_KEPT.items()) if at == path), None)


def _read(var: str, path: str) -> bytes:
    """The bytes of the file ``var`` names, no more than :data:`MAX_TLS_FILE_BYTES`."""
    try:
        data = read_at_most(path, MAX_TLS_FILE_BYTES, var)
    except OSError as exc:
        raise unreadable(var, path, exc, "the file", f"unset {var}") from None
    except FifoSilent as exc:
        raise unwritten(var, path, exc, f"unset {var}") from None
    except PipeCut as exc:  # a secret's setting named it first: read to its 64 KiB only
        raise pipe_cut_short(var, path, exc, f"unset {var}") from None
    if data is None:
        raise too_large(var, path, MAX_TLS_FILE_BYTES, "a PEM file", f"unset {var}")
    return data


def _kept(var: str, path: str, data: bytes) -> int:
    """A file OpenSSL reads ``data`` at, as often as it opens it, by its descriptor ``N``:
    an anonymous file in memory (``memfd_create``), sealed against changes, only its
    owner may read, open until the process ends, named ``/proc/self/fd/N`` (forked
    children inherit it)."""
    try:
        fd = os.memfd_create("distq-tls", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError) as exc:  # not Linux, or no memfd in this sandbox
        raise _cannot_keep(var, path, exc) from None
    kept = f"/proc/self/fd/{fd}"
    try:
        with open(fd, "wb", closefd=False) as file:
            file.write(data)
        os.fchmod(fd, 0o400)
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        if os.stat(kept).st_size != len(data):  # /proc/self/fd names it: /proc is mounted
            raise OSError(f"{kept} does not hold it")
    except OSError as exc:
        os.close(fd)
        raise _cannot_keep(var, path, exc) from None
    return fd


def _cannot_keep(var: str, path: str, exc: OSError | AttributeError) -> ConfigError:
    return ConfigError(
        f"{var} names {path!r}, which is not a regular file (a pipe, or a device?), and "
        f"distq cannot keep its content here for reconnects ({_reason(exc)}); copy it "
        f"into a file and name that file in {var}"
    )


class _PassPhrase(Exception):
    """The client key is encrypted: OpenSSL asked for its pass phrase."""


def _no_pass_phrase() -> str:
    raise _PassPhrase


def check(transport: str, url: str, files: TlsFiles, management_url: str | None = None) -> None:
    """Refuse TLS files that would not be used, or that cannot be used: on RabbitMQ an
    ``https://`` ``management_url`` uses them too, over a plain ``amqp://`` broker."""
    if not files:
        _check_url_key(transport, url)  # with files set, a URL naming a key is refused
        return
    named = [var for var, value in files.named() if value]
    if transport not in TLS_SCHEMES:
        raise ConfigError(
            f"{named[0]} is set, but the {transport} transport has no TLS (it is not "
            "encrypted); use redis or rabbitmq over TLS, or unset it"
        )
    scheme = urlsplit(url).scheme
    https_api = transport == "rabbitmq" and urlsplit(management_url or "").scheme == "https"
    if scheme not in TLS_SCHEMES[transport] and not https_api:
        tls_scheme = TLS_SCHEMES[transport][0]
        raise ConfigError(
            f"{named[0]} is set, but {URL_VARIABLE[transport]} is {scheme}:// (plain TCP); "
            f"use {tls_scheme}:// to connect with TLS"
        )
    if bool(files.cert_file) != bool(files.key_file):
        given, missing = (
            ("DISTQ_TLS_CERT_FILE", "DISTQ_TLS_KEY_FILE")
            if files.cert_file
            else ("DISTQ_TLS_KEY_FILE", "DISTQ_TLS_CERT_FILE")
        )
        raise ConfigError(f"{given} is set without {missing}; a client certificate needs both")
    query = parse_qs(urlsplit(url).query)
    for option in URL_FILE_OPTIONS[transport]:
        if option in query:
            raise ConfigError(
                f"{named[0]} is set and {URL_VARIABLE[transport]} has {option}, which would "
                f"be used instead; give the TLS files one way only: drop {option} from the "
                f"URL, or unset {named[0]}"
            )
    files.context()  # every file readable and PEM, the key matching the certificate


def _check_url_key(transport: str, url: str) -> None:
    """Refuse a client key the URL names (redis-py's ``ssl_keyfile``, pika's
    ``ssl_options`` ``keyfile``; or in the certificate file) encrypted with a pass phrase
    the URL does not give: OpenSSL asked for it on the controlling terminal and waited
    there for good. Other faults of those files are left to the client library's words."""
    query = parse_qs(urlsplit(url).query)
    if transport == "redis" and urlsplit(url).scheme == "rediss":
        cert, key, phrase = (query.get(o, [None])[0] for o in _REDIS_KEY_OPTIONS)
        named = f"ssl_keyfile {key!r}" if key else f"ssl_certfile {cert!r}"
        give = "add ssl_password=<the pass phrase> to the URL (shown masked)"
    elif transport == "rabbitmq" and "ssl_options" in query:
        try:  # as pika reads it; one it cannot read is said by Broker.from_url
            options = ast.literal_eval(query["ssl_options"][0])
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return
        if not isinstance(options, dict):
            return
        cert, key, phrase = (options.get(o) for o in ("certfile", "keyfile", "password"))
        named = f"keyfile {key!r}" if key else f"certfile {cert!r}"
        named = f"ssl_options {named}"
        give = "add 'password': '<the pass phrase>' to ssl_options (shown masked)"
    else:
        return
    if not isinstance(cert, str) or not cert or phrase is not None:
        return
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_cert_chain(cert, key if isinstance(key, str) else None, _no_pass_phrase)
    except _PassPhrase:
        raise ConfigError(
            f"{URL_VARIABLE[transport]} names the client key {named}, which is encrypted "
            f"with a pass phrase, and gives none (a prompt would wait on the terminal): "
            f"{give}, or decrypt it (openssl pkey -in key.pem -out plain-key.pem) into a "
            "file only distq's user may read"
        ) from None
    except (OSError, ssl.SSLError, TypeError, ValueError):
        return


_REDIS_KEY_OPTIONS = ("ssl_certfile", "ssl_keyfile", "ssl_password")


def redis_options(url: str, files: TlsFiles) -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis.from_url``: host names checked unless the URL
    says otherwise (``?ssl_check_hostname=...``) or turns certificate checks off
    (``?ssl_cert_reqs=none``)."""
    if urlsplit(url).scheme != "rediss":
        return {}
    query = parse_qs(urlsplit(url).query)  # as redis-py reads it: the first value counts
    options: dict[str, Any] = {}
    cert_reqs = query.get("ssl_cert_reqs", [""])[0].strip().lower()
    if "ssl_check_hostname" not in query and cert_reqs not in _UNVERIFIED:
        # redis-py 5 defaults to False, even with ?ssl_cert_reqs=required
        options["ssl_check_hostname"] = True
    paths = files.for_openssl()  # redis-py's own context, at each connect: as context()'s
    if paths.ca_file:
        options["ssl_ca_certs"] = paths.ca_file
    if paths.cert_file:
        options["ssl_certfile"] = paths.cert_file
        options["ssl_keyfile"] = paths.key_file
    if files:
        options["connection_class"] = _checked_connection(files, paths)
    return options


def _checked_connection(files: TlsFiles, paths: TlsFiles) -> type:
    """redis-py's TLS connection, checking before each connect that no file at ``paths``
    (``files`` as OpenSSL reads them) holds more than :data:`MAX_TLS_FILE_BYTES`
    (:func:`_check_sizes`): redis-py builds a context from those paths at each connect,
    and a regular file rotated past the limit since start was read whole at the next."""
    import redis  # here: the other transports go without it

    class CheckedSSLConnection(redis.SSLConnection):
        def _connect(self) -> Any:
            _check_sizes(files, paths)
            return super()._connect()  # type: ignore[misc]  # not in the stubs

    return CheckedSSLConnection


def _check_sizes(files: TlsFiles, paths: TlsFiles) -> None:
    """Refuse, naming it, a file of ``files`` whose path for OpenSSL (in ``paths``) is
    gone or holds more than :data:`MAX_TLS_FILE_BYTES` by its size, unread (a pipe's kept
    bytes are within the limit), as RabbitMQ's connect does (:meth:`TlsFiles.for_openssl`).
    Was: one deleted since start failed in OpenSSL at each reconnect, "Error 2 connecting
    ... No such file or directory", naming no file, and was retried for good. A secret
    rotated by swapping a symbolic link (Kubernetes' ``..data``) is never gone."""
    for (var, path), (_, at) in zip(files.named(), paths.named(), strict=True):
        try:
            size = os.stat(at).st_size if at else 0
        except OSError as exc:
            raise unreadable(var, str(path), exc, "the file", f"unset {var}") from None
        if size > MAX_TLS_FILE_BYTES:
            raise too_large(var, str(path), MAX_TLS_FILE_BYTES, "a PEM file", f"unset {var}")


_SSL_TEXT = re.compile(r"\[SSL: \w+\] ([^(']+)")
_SERVER_HINT = (
    "check DISTQ_TLS_CA_FILE (the CA that signed the server's certificate), the host name "
    "in the URL (the certificate must name it) and the certificate's dates"
)
_CLIENT_HINT = (
    "check DISTQ_TLS_CERT_FILE and DISTQ_TLS_KEY_FILE: the broker must trust the CA that "
    "signed them, and may require one"
)


@dataclass(frozen=True)
class Failure:
    """A TLS failure as one line: what happened and what to check; ``refused`` means a
    certificate was refused, which no retry will fix."""

    what: str
    hint: str
    refused: bool

    def line(self, where: str) -> str:
        return f"TLS with {where} failed: {self.what}; {self.hint}"


def failure(exc: BaseException) -> Failure | None:
    """The TLS problem behind ``exc`` (anywhere in its chain), if there is one."""
    chain = _chain(exc)
    for current in chain:  # exception objects first: they say the most
        if isinstance(current, ssl.SSLCertVerificationError):
            what = f"the server's certificate was refused: {_reason(current)}"
            return Failure(what, _SERVER_HINT, refused=True)
    for current in chain:
        if isinstance(current, ssl.SSLError):
            return _classify(current, _reason(current))
    for current in chain:  # pika keeps only the text of some errors
        text = str(current)
        if "SSLEOFError" in text or "EOF occurred in violation of protocol" in text:
            return _classify(current, "eof")
        if found := _SSL_TEXT.search(text):
            return _classify(current, found.group(1).strip().lower())
    return None


def _classify(exc: BaseException, reason: str) -> Failure:
    if isinstance(exc, ssl.SSLEOFError) or reason == "eof":
        # TLS 1.3: a broker that refuses our client certificate may just close
        what = "the broker closed the connection during the TLS handshake"
        return Failure(what, _CLIENT_HINT, refused=False)
    if "alert" in reason and ("certificate" in reason or " ca" in reason):
        return Failure(f"the broker refused our client certificate ({reason})", _CLIENT_HINT, True)
    if reason.startswith("certificate verify failed"):
        return Failure(f"the server's certificate was refused: {reason}", _SERVER_HINT, True)
    if "wrong version" in reason:
        what = "the server does not speak TLS on that port"
        return Failure(what, "use the broker's TLS port", refused=False)
    return Failure(reason, _SERVER_HINT, refused=False)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: causes, contexts, and pika's ``exception``/``args``."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        inner = getattr(current, "exception", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in current.args if isinstance(a, BaseException)), None)
        current = inner or current.__cause__ or current.__context__
    return chain


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "verify_message", None)
    if message:
        return str(message)
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and reason:
        return str(reason).lower().replace("_", " ") if str(reason).isupper() else str(reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
