"""Secrets: read from files (what Docker and Kubernetes secrets mount), never printed.

Every secret setting ``X`` may instead be given as ``X_FILE``, the path of a file whose
content (trailing newline stripped) is the secret. Setting both in one place (both as
variables, or both as flags) is a configuration error; a flag still wins over the
environment. A broker password given this way is put into the broker URL, so the URL
itself need not hold it. :func:`mask_url` is how a URL is shown anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from distq.errors import ConfigError

#: Settings that are secrets: each also has an ``_FILE`` variant.
SECRETS: tuple[str, ...] = (
    "DISTQ_AUTHKEY",
    "DISTQ_SIGNING_KEY",
    "DISTQ_SIGNING_KEYS",
    "DISTQ_REDIS_PASSWORD",
    "DISTQ_AMQP_PASSWORD",
)
FILE_SUFFIX = "_FILE"
MASK = "***"

_Bad = Callable[[str, str], ConfigError]


def read_secret_files(given: Mapping[str, str], from_flag: set[str], bad: _Bad) -> dict[str, str]:
    """``given`` with every ``X_FILE`` replaced by ``X`` (the file's content).

    ``from_flag`` names the variables that came from flags: a flag for ``X`` or
    ``X_FILE`` wins over either in the environment.
    """
    out = dict(given)
    for var in SECRETS:
        file_var = var + FILE_SUFFIX
        if file_var not in out:
            continue
        if var in out:
            flagged = {var, file_var} & from_flag
            if len(flagged) != 1:
                raise bad(
                    file_var,
                    f"and {var} are both set; give the secret one way only "
                    f"(the file, for a mounted secret)",
                )
            if var in flagged:
                del out[file_var]
                continue
        out[var] = read_secret(out.pop(file_var), file_var, bad)
    return out


def read_secret(path: str, var: str, bad: _Bad) -> str:
    """The content of the file at ``path``, trailing newline stripped; never empty."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise bad(
            var,
            f"names {path!r}, which cannot be read ({exc.strerror or exc}); "
            f"mount the secret there or unset {var}",
        ) from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise bad(var, f"names {path!r}, which is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise bad(var, f"names {path!r}, which is empty")
    return text


def add_password(url: str, password: str, var: str, password_var: str, bad: _Bad) -> str:
    """``url`` with ``password`` (percent-encoded) in it; the URL must not hold one already."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if at and colon:
        raise bad(
            password_var,
            f"is set and {var} ({mask_url(url)}) holds a password too; "
            f"keep the password in one place: drop it from {var}",
        )
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def url_user(url: str) -> str:
    """The user named in ``url``, or ``""``."""
    userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
    return userinfo.partition(":")[0] if at else ""


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``; safe to print or log.

    Works on malformed URLs too: whatever stands between the first ``:`` of the user
    part and the last ``@`` before the path is masked.
    """
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
