"""Secrets: read from files (what Docker and Kubernetes secrets mount), never printed.

Every secret setting ``X`` may instead be given as ``X_FILE``, the path of a file whose
content is the secret: a password's or an authkey's with only its trailing newline
stripped, a signing key's with the blanks around each key dropped too. Setting both in one
place (both as variables, or both as flags) is a configuration error; a flag still wins
over the environment. A broker password given this way is put into the broker URL, so the URL
itself need not hold it. :func:`mask_url` is how a URL is shown anywhere.
"""

from __future__ import annotations

import functools
import os
import re
import select
import shlex
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from distq.counts import counted
from distq.errors import ConfigError
from distq.ranges import shortened

#: Settings that are secrets: each also has an ``_FILE`` variant.
SECRETS: tuple[str, ...] = (
    "DISTQ_AUTHKEY",
    "DISTQ_SIGNING_KEY",
    "DISTQ_SIGNING_KEYS",
    "DISTQ_REDIS_PASSWORD",
    "DISTQ_AMQP_PASSWORD",
)
#: The secrets that are one key, used as bytes: a file of random bytes holds one as the
#: variable would (``os.environb``). A password goes into a URL, and a list of keys is
#: split at commas and line ends (a random byte may be one): those must be UTF-8 text.
KEYS: tuple[str, ...] = ("DISTQ_AUTHKEY", "DISTQ_SIGNING_KEY")
FILE_SUFFIX = "_FILE"
#: Most bytes a secret's file may hold: a key or a password is tens of bytes, a keys
#: file of a hundred keys some 7 KiB. A file past it is no secret's (``/dev/zero``, a
#: log): read whole, it took the memory of a master or worker until the kernel killed it.
MAX_SECRET_BYTES = 64 << 10
#: How long a FIFO (``mkfifo``) may go without its writer's bytes or its end: for its
#: first bytes (a FIFO no program writes to made start-up wait for good), then for each
#: further bytes. A pipe (bash's ``<(...)``, ``/dev/stdin``) has its writer from the
#: start, and is waited on as long as that writer takes (it may ask for a pass phrase).
FIFO_WAIT_SECONDS = 5.0
#: A UTF-8 byte order mark as text: dropped from the front of a secret file.
_BOM = "\ufeff"
MASK = "***"
#: A query parameter whose value is a secret: redis-py takes the password from
#: ``?password=`` as well as from the user part, and TLS options may carry one
#: (``ssl_password``). Its value runs to the next parameter, fragment, space or quote; one
#: masked already (``***`` then ``)``, as a message quotes a masked URL) is left alone.
_SECRET_PARAM = re.compile(
    r"([?&;][^=&#\s]*(?:pass|secret|token)[^=&#\s]*=)(?!\*\*\*(?:[)&#\s'\"]|$))[^&#\s'\"]*",
    re.I,
)
#: The same in a URL alone (:func:`mask_url`): its value runs to the next parameter or
#: the fragment, a quote or a space in it included, as redis-py reads it.
_SECRET_PARAM_IN_URL = re.compile(r"([?&;][^=&#\s]*(?:pass|secret|token)[^=&#\s]*=)[^&#]*", re.I)
#: pika's ``ssl_options``: a Python dict literal that may hold a key's ``password``,
#: quotes and spaces included, so all of it is masked, to the next parameter or the end.
_SSL_OPTIONS = re.compile(r"([?&;]ssl_options=)(?!\*\*\*(?:[)&#\s'\"]|$))[^&#]*", re.I)


def read_secret_files(
    environ: Mapping[str, str],
    flags: Mapping[str, str | None],
    flag_names: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str | None], dict[str, str]]:
    """``environ`` and ``flags`` with every ``X_FILE`` replaced by ``X`` (its content),
    and the path of each file read, by ``X``.

    A flag for ``X`` or ``X_FILE`` wins over both in the environment; ``X`` and
    ``X_FILE`` given in one place is a :class:`ConfigError`. Values are stripped of
    surrounding whitespace, as every setting's (a path too); empty ones count as unset.
    An error names a flag as ``flag_names`` does (``VARIABLE --flag``, an Executor's
    keyword), else by its variable.
    """
    names = flag_names or {}
    env = dict(environ)
    given = {k: v for k, v in flags.items() if v is not None}
    paths: dict[str, str] = {}
    for var in SECRETS:
        file_var = var + FILE_SUFFIX
        source = given if (_set(given, var) or _set(given, file_var)) else env
        if source is given:  # the flag wins: the environment's spellings are ignored
            env.pop(var, None)
            env.pop(file_var, None)
        path = (source.pop(file_var, None) or "").strip()
        if not path:
            continue
        if _set(source, var):
            both = (
                f"{names.get(file_var, file_var)} and {names.get(var, var)} are both given"
                if source is given
                else f"{file_var} and {var} are both set"
            )
            raise ConfigError(
                f"{both}; give the secret one way only (the file, for a mounted secret)"
            )
        # a flag named as given: "unset DISTQ_AUTHKEY_FILE" undid nothing
        named, undo = (names.get(file_var), "leave it out") if source is given else (None, None)
        source[var] = read_secret(path, file_var, named, undo)
        paths[var] = path
    return env, {**dict(flags), **given, **{v + FILE_SUFFIX: None for v in SECRETS}}, paths


def _set(values: Mapping[str, str], name: str) -> bool:
    """Whether ``name`` has a value in ``values`` other than blanks."""
    return bool((values.get(name) or "").strip())


def unreadable(named: str, path: str, exc: OSError, what: str, undo: str) -> ConfigError:
    """The error for a file a setting ``named`` names (``path``) that cannot be opened
    (``exc``): the path, the system's reason, and to mount ``what`` there or ``undo``."""
    return ConfigError(
        f"{named} names {path!r}, which cannot be read ({exc.strerror or exc}); "
        f"mount {what} there or {undo}"
    )


def too_large(named: str, path: str, most: int, what: str, undo: str) -> ConfigError:
    """The error for a file a setting ``named`` names (``path``) that holds more than
    ``most`` bytes, more than ``what`` can be: the path, the limit, and to mount ``what``
    there or ``undo``."""
    return ConfigError(
        f"{named} names {path!r}, which holds more than {_bytes(most)}, the most "
        f"{what} may be (a device, or another file?); mount {what} there or {undo}"
    )


def pipe_cut_short(named: str, path: str, exc: PipeCut, undo: str) -> ConfigError:
    """The error for a pipe or FIFO a setting ``named`` names (``path``) that another
    setting named first and read no further than its own, lower, limit (``exc``): where
    the read stopped, and to give a regular file or ``undo``. (Not a text shortened:
    that is :func:`distq.ranges.cut`.)"""
    return ConfigError(
        f"{named} names {path!r}, a pipe that {exc.first} named first and that was read "
        f"no further than that setting's limit of {_bytes(exc.most)}: the rest cannot be "
        f"read again; write the content into a regular file and name that file in "
        f"{named}, or {undo}"
    )


def _bytes(most: int) -> str:
    """A limit in bytes as an error says it: ``65,536 bytes (64 KiB)``."""
    size = f"{most >> 20} MiB" if most >= 1 << 20 else f"{most >> 10} KiB"
    return f"{most:,} bytes ({size})"


#: What to do with a secret's value over :data:`MAX_SECRET_BYTES`, by its variable.
_SMALLER = {
    "DISTQ_SIGNING_KEYS": "keep only the keys in use, the signing one first (a key of 64 "
    "hex characters is 65 bytes with its comma: a thousand fit)",
    "DISTQ_REDIS_PASSWORD": "set the password alone (the broker's own, not a file's content)",
    "DISTQ_AMQP_PASSWORD": "set the password alone (the broker's own, not a file's content)",
}
_NEW_KEY = (
    "set a random key of tens of bytes, e.g. "
    "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
)


def check_secret_size(var: str, value: object) -> None:
    """Raise ``ValueError`` (to follow the name of the variable, flag or keyword that
    gave it) when the secret ``var`` (one of :data:`SECRETS`), given as ``value`` rather
    than as its file, holds more than :data:`MAX_SECRET_BYTES`, the most its file may:
    DISTQ_SIGNING_KEYS of 97 KiB was taken as a variable and refused as a file. The
    ``value`` is its text, or a program's bytes or tuple of keys (:func:`secret_size`)."""
    size = secret_size(value)
    if size > MAX_SECRET_BYTES:
        raise ValueError(
            f"holds {size:,} bytes, more than {_bytes(MAX_SECRET_BYTES)}, the most a secret "
            f"may be, as its file {var}{FILE_SUFFIX} may hold (another value, pasted in by "
            f"mistake?); {_SMALLER.get(var, _NEW_KEY)}"
        )


def secret_size(value: object) -> int:
    """The bytes of a secret's ``value`` as its variable holds them (``os.environb``): a
    text's, a key's bytes, a tuple of keys with a comma between each (as
    ``DISTQ_SIGNING_KEYS`` lists them); 0 for a value of no secret's kind (refused
    elsewhere: :func:`distq.config.secured`)."""
    if isinstance(value, str):
        return len(value.encode(errors="surrogateescape"))
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, tuple) and all(isinstance(key, bytes) for key in value):
        return sum(len(key) for key in value) + max(len(value) - 1, 0)
    return 0


class FifoSilent(Exception):
    """A FIFO's writer wrote nothing (``got`` bytes, then nothing) for
    :data:`FIFO_WAIT_SECONDS` and kept it open (``held``), or none opened it."""

    def __init__(self, got: int, held: bool) -> None:
        super().__init__(got, held)
        self.got, self.held = got, held


def unwritten(named: str, path: str, exc: FifoSilent, undo: str) -> ConfigError:
    """The error for a FIFO a setting ``named`` names (``path``) that its writer left
    without bytes (``exc``): what was and was not written, and what to do, or ``undo``."""
    wait = f"{FIFO_WAIT_SECONDS:g} s"
    if exc.got:
        said = (
            f"whose writer wrote {counted(exc.got, 'byte')}, then nothing more "
            f"for {wait}, and kept it open"
        )
        do = "have the writer close the FIFO once it has written all"
    elif exc.held:  # started before distq, as below, and slow: a prompt, a store's answer
        said = f"whose writer opened it, then wrote nothing for {wait}, and kept it open"
        do = "have the writer write all within that time and close the FIFO"
    else:
        said = f"and nothing wrote to that FIFO within {wait}"
        do = f"start what writes it (e.g. cat FILE > {shlex.quote(path)} &) before distq"
    return ConfigError(
        f"{named} names {path!r}, {said}; {do}, or write the content into a regular file "
        f"and name that file, or {undo}"
    )


class PipeCut(Exception):
    """A pipe or FIFO the setting ``first`` named first was read no further than that
    setting's limit (``most`` bytes), past which it held more: a setting with a higher
    limit cannot be given its content, nor told its size."""

    def __init__(self, first: str, most: int) -> None:
        super().__init__(first, most)
        self.first, self.most = first, most


@dataclass(frozen=True)
class _Pipe:
    """What was read of a pipe or a FIFO: ``data``, all of it (``whole``), or nothing
    for one that held more than ``most`` bytes, the limit of the setting that named it
    first (``by``), where its read stopped; ``fd`` (:func:`_pinned`) stays open, so no
    other FIFO takes its inode number, or -1. Once ``kept`` (:func:`keep_pipe`), the
    bytes are read there, not held here too."""

    fd: int
    data: bytes
    whole: bool
    most: int
    by: str
    kept: int = -1

    def within(self, most: int) -> bytes | None:
        """All the bytes, or None if there are more than ``most``. Raises
        :class:`PipeCut` for a ``most`` past where the read of one cut short stopped."""
        if not self.whole:
            if most > self.most:
                raise PipeCut(self.by, self.most)
            return None
        # a kept file is sealed: its bytes cannot change
        data = os.pread(self.kept, most + 1, 0) if self.kept >= 0 else self.data
        return data if len(data) <= most else None


#: Each pipe or FIFO read, by its (device, inode): it can be read once only, so every
#: setting that names it, by any path (``/dev/stdin`` and ``/proc/self/fd/0``), gets what
#: was read. Was: the second one read it empty ("which is empty", "holds no usable PEM").
_PIPES: dict[tuple[int, int], _Pipe] = {}
_PIPES_LOCK = threading.Lock()


def _new_pipes_lock() -> None:
    """In a child made by fork(): a lock of its own, not one another thread held then."""
    global _PIPES_LOCK
    _PIPES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_pipes_lock)


def read_at_most(path: str, most: int, named: str) -> bytes | None:
    """The content of the file at ``path``; None when it holds more than ``most`` bytes,
    read no further than that (an endless source, such as ``/dev/zero``, ends there).
    A pipe or a FIFO is read once in the process, whatever path names it (:data:`_PIPES`),
    to the limit of the setting that names it first (``named``), never further: a
    secret's pipe past its 64 KiB was read on to 16 MiB, for a TLS file's setting that
    might name it too, and its refusal waited on a writer that held it open, for good. A
    FIFO is waited on for at most :data:`FIFO_WAIT_SECONDS` at a time (:func:`_read_fifo`).
    Raises ``OSError`` as ``open`` does, :class:`FifoSilent` for a FIFO left unwritten,
    :class:`PipeCut` for a pipe read before to a lower limit than ``most``, and past it."""
    status = _looked_at(path)  # not opened: a FIFO is opened once, under the lock
    if status is None or not stat.S_ISFIFO(status.st_mode):
        data = _read_unless_a_pipe(path, most)  # no lock: a pipe read elsewhere holds it
        if data is not None:
            return None if len(data) > most else data
        status = None  # a pipe or FIFO after all, made at path since: looked at anew
    with _PIPES_LOCK:
        pipe = _read_before(path, status)
        if pipe is None:
            # never blocks: a FIFO's open waited for a writer, for good
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                status = os.fstat(fd)
                if not stat.S_ISFIFO(status.st_mode):  # a regular file, or a device
                    data = _read_all(fd, most)
                    return None if len(data) > most else data
                pipe = _PIPES.get((status.st_dev, status.st_ino))  # read by another path
                if pipe is None:
                    pipe = _read_pipe(fd, status, most, named)
                    _PIPES[status.st_dev, status.st_ino] = pipe
            finally:
                os.close(fd)
    return pipe.within(most)


def _read_pipe(fd: int, status: os.stat_result, most: int, named: str) -> _Pipe:
    """The pipe or FIFO open as ``fd``, read for the setting ``named`` to its limit,
    ``most``: what was read, or nothing when that is past it (held by no setting)."""
    data = _read_fifo(fd, most) if _is_fifo(status) else _read_all(fd, most)
    whole = len(data) <= most
    return _Pipe(_pinned(fd), data if whole else b"", whole, most, named)


def keep_pipe(identity: tuple[int, int], kept: int) -> None:
    """The pipe or FIFO ``identity`` (device, inode), read whole, is kept in the file open
    as ``kept`` (sealed: its bytes never change; a TLS file's, which OpenSSL reads by
    path): its bytes are read there from now on, not held here too (16 MiB twice, at
    most). Was: both, for the process's lifetime."""
    with _PIPES_LOCK:
        pipe = _PIPES.get(identity)
        if pipe is not None and pipe.whole and pipe.kept < 0:
            _PIPES[identity] = _Pipe(pipe.fd, b"", True, pipe.most, pipe.by, kept)


def pipe_kept_in(identity: tuple[int, int]) -> int | None:
    """The descriptor of the file the pipe or FIFO ``identity`` (device, inode) is kept
    in (:func:`keep_pipe`), if it is. No lock (a FIFO read in another thread holds it for
    seconds): one dict look-up, and an entry changes once only, when it is kept, by
    :func:`distq.tls._keep`, under the TLS files' lock that this one's caller holds too."""
    pipe = _PIPES.get(identity)
    return pipe.kept if pipe is not None and pipe.kept >= 0 else None


def _looked_at(path: str) -> os.stat_result | None:
    """The status of the file at ``path`` (a pipe's or a FIFO's too, not opened), or None
    if it cannot be stat'ed: ``open`` says why."""
    try:
        return os.stat(path)
    except OSError:
        return None


def _read_unless_a_pipe(path: str, most: int) -> bytes | None:
    """The first ``most`` bytes and one of the file at ``path`` (:func:`_read_all`), or
    None if it is a pipe or a FIFO after all (made at ``path`` since it was looked at)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO's: no wait
    try:
        return None if stat.S_ISFIFO(os.fstat(fd).st_mode) else _read_all(fd, most)
    finally:
        os.close(fd)


def _pinned(fd: int) -> int:
    """A descriptor of the pipe or FIFO open as ``fd`` that is not one of its readers
    (``O_PATH``): it keeps the inode, so no other FIFO takes its number. Was: ``fd``
    itself, kept open for reading, so another program's writer of that FIFO wrote into
    it (its open no longer waited for a reader) and the program it was for read nothing
    it could end; a pipe's writer past the limit, blocked for good. -1 without /proc."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return -1


def _read_before(path: str, status: os.stat_result | None) -> _Pipe | None:
    """The pipe or FIFO at ``path`` (of ``status``, or looked at now), if read before (by
    this or another path). A ``status`` from before the lock was taken stands: a pipe
    read is read once, whatever names it since, and what is opened is told by its own
    ``fstat`` (:func:`read_at_most`). Was: ``path`` stated again, a third time a read."""
    if status is None:
        status = _looked_at(path)
    if status is None or not stat.S_ISFIFO(status.st_mode):
        return None
    return _PIPES.get((status.st_dev, status.st_ino))


def _read_all(fd: int, most: int) -> bytes:
    """The first ``most`` bytes and one of the file open as ``fd``, waiting for each as
    long as it takes (a pipe's writer is there from the start). By ``os.read``: a file
    object made of ``fd`` (``open(fd)``) stated it once more."""
    os.set_blocking(fd, True)
    data = bytearray()
    while len(data) <= most and (chunk := os.read(fd, min(1 << 16, most + 1 - len(data)))):
        data += chunk
    return bytes(data)


def _is_fifo(status: os.stat_result) -> bool:
    """Whether ``status`` is a FIFO's (``mkfifo``): a pipe's device is Linux's pipefs."""
    return stat.S_ISFIFO(status.st_mode) and status.st_dev != _pipes_device()


@functools.cache
def _pipes_device() -> int:
    """The device of every pipe (Linux's pipefs); a FIFO is on its file system's."""
    read, write = os.pipe()
    try:
        return os.fstat(read).st_dev
    finally:
        os.close(read)
        os.close(write)


def _read_fifo(fd: int, most: int) -> bytes:
    """The first ``most`` bytes and one of the FIFO open (not blocking) as ``fd``, waiting
    at most :data:`FIFO_WAIT_SECONDS` for each bytes or the end. The end is a read of
    nothing with no writer left, once one has come: read before any writer has opened
    it, a FIFO says nothing too, so until then the wait is for one to (poll). Was: the
    end was poll's, which tells a reader that opened after the writer left of none (the
    shell's ``< fifo``, read as ``/dev/stdin``). Raises :class:`FifoSilent` when the
    wait runs out."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = bytearray()
    woken = False  # poll said a writer came (bytes, or its close)
    waited = False  # the last wait ran out: one more read says whether a writer holds it
    while len(data) <= most:
        try:
            chunk: bytes | None = os.read(fd, min(1 << 16, most + 1 - len(data)))
        except BlockingIOError:  # a writer has it open, nothing written yet
            chunk = None
        if chunk:
            data += chunk
            waited = False
        elif chunk is not None and (data or woken):  # no writer now, and one came: the end
            break
        elif waited:
            raise FifoSilent(len(data), held=chunk is None)
        elif poller.poll(FIFO_WAIT_SECONDS * 1000):
            woken = True
        else:
            waited = True
    return bytes(data)


def read_secret(path: str, var: str, named: str | None = None, undo: str | None = None) -> str:
    """The content of the file at ``path`` with its trailing newline (``\\n`` or
    ``\\r\\n``) stripped and nothing else: a space or tab around a password is part of
    it, and so is a line end a key's bytes end with. Never empty or only whitespace (a
    :class:`ConfigError` naming ``path`` and ``var``, or as ``named`` with what would
    ``undo`` it, not the content). A key's file (:data:`KEYS`) may hold any bytes, kept
    as the variable keeps them; a password's must be UTF-8. A keys file's lines may end
    in a bare ``\\r`` (old Mac) too. A UTF-8 byte order mark in front (what editors on
    Windows write) is not part of the secret: dropped, as the signing keys' parsers drop
    it from a variable. At most :data:`MAX_SECRET_BYTES` are read: a larger file is
    refused, naming the limit."""
    named, undo = named or var, undo or f"unset {var}"
    try:
        data = read_at_most(path, MAX_SECRET_BYTES, named)
    except OSError as exc:
        raise unreadable(named, path, exc, "the secret", undo) from None
    except FifoSilent as exc:
        raise unwritten(named, path, exc, undo) from None
    except PipeCut as exc:  # no setting's limit is lower: only if one comes
        raise pipe_cut_short(named, path, exc, undo) from None
    if data is None:
        raise too_large(named, path, MAX_SECRET_BYTES, "the secret", undo)
    if var.removesuffix(FILE_SUFFIX) in KEYS:  # its bytes, as the variable's are kept
        text = data.decode(errors="surrogateescape")
    else:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            fix = (
                "a list of keys is text, one per line: write them in hex, e.g. "
                "$(python3 -c 'import secrets; print(secrets.token_hex(32))'), or give one "
                "key of any bytes as DISTQ_SIGNING_KEY_FILE"
                if var.startswith("DISTQ_SIGNING_KEYS")
                else "write the password in UTF-8 (and set it so on the broker)"
            )
            raise ConfigError(f"{named} names {path!r}, which is not UTF-8 text; {fix}") from None
    text = text.removeprefix(_BOM)  # an editor's, not the secret's: master and workers
    # given the same key as a variable and as a file then disagreed, as with a wrong key
    if var.removesuffix(FILE_SUFFIX) == "DISTQ_SIGNING_KEYS":  # one key per line, whatever
        # the editor ends lines with: old Mac's bare CR read as one key, the CRs inside it
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # one newline: a key's own last bytes may be line ends (rstrip took them too)
    text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
    if not text.strip():
        what = "empty" if not data else "empty but for whitespace"
        what += " and a byte order mark" if data.startswith(_BOM.encode()) else ""
        raise ConfigError(
            f"{named} names {path!r}, which is {what}; write the secret into that file, or {undo}"
        )
    return text


def add_password(url: str, password: str, var: str) -> str:
    """``url`` with ``password`` (percent-encoded) in it; the URL must hold no other
    password (one that holds this very password is returned as it is): in its user
    part, or as redis-py's ``?password=``. A TLS option that masking hides (pika's
    ``ssl_options``, redis-py's ``ssl_password``: a key's pass phrase) is none."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, held = userinfo.partition(":")
    if at and colon and unquote(held) == password:
        return url
    if (at and colon) or "password" in parse_qs(parts.query):
        password_var = var.replace("_URL", "_PASSWORD")
        raise ConfigError(
            f"{password_var} is set and {var} ({mask_url(url)}) holds a password too; "
            f"keep the password in one place: drop it from {var}"
        )
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def drop_password(url: str) -> str:
    """``url`` without the password in its user part (the user stays)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{hostport}" if user else hostport))


def url_user(url: str) -> str:
    """The user named in ``url``, or ``""``."""
    userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
    return userinfo.partition(":")[0] if at else ""


def mask_query(text: str) -> str:
    """``text`` with the value of every password-like query parameter (``password=``,
    ``ssl_password=``, ``...secret=``, ``...token=``, ``ssl_options=``) replaced by ``***``."""
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, text)
    return _SSL_OPTIONS.sub(lambda m: m.group(1) + MASK, text)


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``; safe to print or log.

    Works on malformed URLs too: whatever stands between the first ``:`` of the user
    part and the last ``@`` before the path is masked, and so is a password given as a
    query parameter (``?password=``), to the next ``&`` or ``#``. One longer than
    :data:`~distq.ranges.SHOWN_LINE` once masked is cut (:func:`~distq.ranges.shortened`):
    a port or an option of 5,000 digits put them all on the line.
    """
    text = _SECRET_PARAM_IN_URL.sub(lambda m: m.group(1) + MASK, _mask_userinfo(url))
    return shortened(_SSL_OPTIONS.sub(lambda m: m.group(1) + MASK, text))


def _mask_userinfo(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop, rest.rfind("@") + 1 if "@" in rest else 0)
        if found != -1:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':' + MASK if colon else ''}@{hostport}{tail}"
