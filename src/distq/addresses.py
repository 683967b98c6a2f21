"""Where a process connects or listens: broker URLs, ``host:port`` addresses and hosts.

Each parser takes a setting's or a flag's text and returns it checked, or raises
``ValueError`` with what is wrong and what to write instead (:class:`~distq.config.
Setting` names the variable in front of it). Everything a connection would fail on
later, often with a traceback at the first connect, is refused here: bytes that are not
UTF-8, a host no lookup can take, a missing or out-of-range port, URL options distq
cannot work with. A password in a URL is never shown (:func:`~distq.credentials.
mask_url`).
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from distq import credentials
from distq.ranges import SHOWN_LINE, Number, cut, decimal, float_reads, shown_digits


def address(text: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 address in brackets) as the host and the port."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if "://" in text:
        raise ValueError(f"is {_shown(text)}; use host:port without a scheme, e.g. 127.0.0.1:9000")
    bare_ipv6 = _is_ipv6(text)
    if bare_ipv6 or (":" in host and not bracketed):  # ::1 read as host ':', port 1
        example = f"[{text}]:PORT" if bare_ipv6 else "[ADDRESS]:PORT"
        raise ValueError(
            f"is {_shown(text)}, not host:port; write an IPv6 address in brackets, then its port: "
            f"{example}, e.g. [::1]:9000"
        )
    if not sep or not host or "[" in host or "]" in host:
        port = ""  # refused below
    if not port.isascii() or not port.isdigit() or not 0 < _digits(port) < 65536:
        raise ValueError(
            f"is {_shown(text)}; use host:port, e.g. 127.0.0.1:9000 "
            "(the master listens there, workers connect there)"
        )
    if unusable_as_a_host(host):  # user@h, "a b": no lookup takes it (a worker waited)
        raise ValueError(
            f"is {_shown(text)}: {_shown(host)} is not a host (it holds a blank, a control "
            "character, '/' or '@'); use host:port, e.g. 127.0.0.1:9000"
        )
    if problem := host_problem(host):
        raise ValueError(f"is {_shown(text)}: {_shown(host)} is {problem}")
    return host, int(port)


def _shown(text: str) -> str:
    """An address (or its host) as its refusal quotes it: past 300 characters, which no
    host:port reaches, its start and its length (:func:`~distq.ranges.cut`)."""
    return cut(text, SHOWN_LINE)


def host_problem(host: str) -> str | None:
    """Why ``host`` is no name or address a connection can look up, or None.

    Python turns a host name into its ASCII form before any lookup; a name it cannot
    (an empty label, as in ``redis..local``, a label over 63 characters, bytes that are
    not UTF-8) failed there with a traceback, at the first connect.
    """
    if _is_ip(host):
        return None
    try:
        host.encode("idna")
    except UnicodeError:
        return (
            "not a host name (an empty label between dots, a label over 63 characters, or "
            "bytes that are not UTF-8); use a name such as host.example, or an address"
        )
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.partition("%")[0])  # fe80::1%eth0: a scoped address
    except ValueError:
        return False
    return True


def utf8(text: str, hint: str = "give it in UTF-8") -> str:
    """``text`` if it is UTF-8 text; a byte that is not becomes a lone surrogate in Python,
    which no broker protocol can send (a traceback at the first connect)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"holds bytes that are not UTF-8 (at character {exc.start + 1}); {hint}"
        ) from None
    return text


def host_port(host: str, port: int | None = None) -> str:
    """``host`` and ``port`` as an address or a URL's netloc has them: an IPv6 address in
    brackets (``[::1]:9000``), the port left out when None."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def url_host_port(host: str, port: int) -> str:
    """``host`` and ``port`` as a URL's netloc: :func:`host_port`, with a scoped IPv6
    address's zone written as RFC 6874 does (``[fe80::1%25eth0]:9000``): a bare '%'
    starts a percent-escape in a URL."""
    return host_port(host.replace("%", "%25") if ":" in host else host, port)


def ipv6_listen_address(host: str, port: int) -> tuple[Any, ...]:
    """The address an IPv6 socket binds to listen on ``host``: a scoped address
    (``fe80::1%eth0``) with its interface's index, which bind() takes only as the
    address's fourth item (a host with its '%' was refused: "Invalid argument").
    Raises OSError (``socket.gaierror``) for an interface this machine does not have."""
    if "%" not in host:
        return host, port
    found = socket.getaddrinfo(host, port, socket.AF_INET6, 0, 0, socket.AI_NUMERICHOST)
    return tuple(found[0][4])


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def url(schemes: tuple[str, ...], example: str) -> Callable[[str], str]:
    """A broker URL: one of ``schemes``, a host and a port (a number), except ``unix://``."""

    def parse(text: str) -> str:
        utf8(text, "give it in UTF-8, or percent-encode those bytes (%E9)")
        try:
            parts = urlsplit(text)
            port = parts.port  # raises ValueError on a port not a number, or above 65535
        except ValueError:  # its message may quote part of the password: not shown
            userinfo, _, host = _netloc(text).rpartition("@")
            if "[" in userinfo or "]" in userinfo:  # read as an IPv6 host's brackets
                raise ValueError(
                    f"({credentials.mask_url(text)}) is not a valid URL: its user or "
                    "password holds '[' or ']'; percent-encode them (%5B, %5D)"
                ) from None
            if host.count("[") != host.count("]"):
                raise ValueError(
                    f"({credentials.mask_url(text)}) is not a valid URL: its host has a '[' "
                    "without a ']' (or a ']' without a '['); write an IPv6 host in "
                    "brackets, then its port, e.g. [::1]:PORT"
                ) from None
            digits = _port_text(text)
            number = digits.isascii() and digits.isdigit()  # '²' is isdigit(), no int()
            if number and 0 < _digits(digits) < 65536:  # fe80::1:6379, h:1:2
                raise ValueError(
                    f"({credentials.mask_url(text)}) is not a valid URL: its host and port "
                    "hold more than one ':'; write an IPv6 host in brackets, then its port, "
                    "e.g. [::1]:PORT"
                ) from None
            if number:
                raise ValueError(
                    f"({credentials.mask_url(text)}) has port {shown_digits(digits)}; use 1 to "
                    f"65535, e.g. {example}"
                ) from None
            raise ValueError(
                f"({credentials.mask_url(text)}) is not a valid URL: its port is not a "
                f"number; {_PERCENT_ENCODE}"
            ) from None
        if "@" not in parts.netloc and "@" in _after_the_host_part(parts):
            # a password of digits before its '#' or '?': "user:12" read as host:port
            raise ValueError(
                f"({credentials.mask_url(text)}) is not a valid URL: an '@' stands after "
                f"its host part; {_PERCENT_ENCODE}"
            )
        if parts.scheme not in schemes:
            raise ValueError(
                f"has scheme {_shown(parts.scheme)}; use one of "
                + ", ".join(s + "://" for s in schemes)
            )
        _options(text, parts.query)
        if parts.scheme == "unix":
            if parts.hostname or parts.path in ("", "/"):  # unix://tmp/r.sock: /r.sock
                raise ValueError(
                    f"({credentials.mask_url(text)}) names no socket path after three "
                    "slashes; use e.g. unix:///run/redis/redis.sock"
                )
            return text
        if not parts.hostname:
            raise ValueError(f"names no host; use e.g. {example}")
        if unusable_as_a_host(parts.hostname):  # "redis host": no lookup takes it
            raise ValueError(
                f"({credentials.mask_url(text)}) has host {_shown(parts.hostname)}: not a host (it "
                f"holds a blank or a control character); use e.g. {example}"
            )
        if problem := host_problem(parts.hostname):
            raise ValueError(
                f"({credentials.mask_url(text)}) has host {_shown(parts.hostname)}: {problem}"
            )
        if port is None:  # absent, or empty after the colon: never guess one
            raise ValueError(f"names no port after the host; use e.g. {example}")
        if not 0 < port < 65536:
            raise ValueError(f"has port {port}; use 1 to 65535, e.g. {example}")
        if parts.scheme.startswith("amqp") and "/" in parts.path[1:].rstrip("/"):
            # pika takes the first segment as the vhost, without a word (input17)
            raise ValueError(
                f"({credentials.mask_url(text)}) has path {_shown(parts.path)}: a vhost is one "
                "segment; percent-encode a '/' in its name (/a%2Fb for vhost 'a/b'; /%2F "
                "for '/')"
            )
        return text

    return parse


#: What ends a URL's host part early when a password holds it: a '#' or a '?' as a '/'.
_PERCENT_ENCODE = (
    "percent-encode '/', '@', ':', '#' and '?' in a password (%2F, %40, %3A, %23, %3F)"
)


def _after_the_host_part(parts: SplitResult) -> str:
    """The part of a URL where an '@' means that its password held a '#' or a '?': the
    fragment, which no broker reads, and a first query field with no '=' (ignored)."""
    first = parts.query.partition("&")[0]
    return parts.fragment + ("" if "=" in first else first)


#: Options of a broker URL that are seconds: each must be a number above 0 (NaN made a
#: connect wait for good, -1 a traceback at the first connect).
_SECONDS_OPTIONS = (
    "socket_timeout",
    "socket_connect_timeout",
    "stack_timeout",
    "blocked_connection_timeout",
)
#: An AMQP URL's pause between connection attempts: 0 or more seconds (pika waited for
#: good on NaN or inf, and raised a traceback on -5, at the first failed attempt).
_PAUSE_OPTIONS = ("retry_delay",)
#: Fewest channels an AMQP connection must allow: with 2, ``dead-letters`` and
#: ``requeue-dead`` failed (NoFreeChannels, exit 3); with 1, ``status`` and a master.
_FEWEST_CHANNELS = 3
#: An AMQP URL's channel_max: at least those, at most what pika (and AMQP's 16-bit
#: channel numbers) allow, said as a variable's number out of range.
_CHANNELS = Number(int, _FEWEST_CHANNELS, 65535)
#: The longest of them: a socket's timeout of 1e10 s overflowed at the first connect.
_MOST_SECONDS = 1_000_000


def _options(url: str, query: str) -> None:
    """Refuse a URL's timeout options that are not seconds above 0, Redis's
    ``socket_timeout``, which distq sets itself (the URL's would win), and an
    ``ssl_cert_reqs`` redis-py does not take (it failed at each connect, an outage)."""
    options = parse_qs(query)
    for value in options.get("ssl_cert_reqs", []) if url.lower().startswith("rediss") else []:
        if value not in ("none", "optional", "required"):
            raise ValueError(
                f"({credentials.mask_url(url)}) has ssl_cert_reqs={cut(value)}; use required, "
                "optional or none, in lower case"
            )
    # redis-py reads 0, no, f, n... as false too: a check turned off by a spelling the
    # README does not name (sec16); one spelling each way
    for value in options.get("ssl_check_hostname", []) if url.lower().startswith("rediss") else []:
        if value not in ("true", "false"):
            raise ValueError(
                f"({credentials.mask_url(url)}) has ssl_check_hostname={cut(value)}; use true or "
                "false, in lower case"
            )
    redis = url.lower().startswith(("redis", "unix"))
    for name in ("decode_responses", "encoding", "encoding_errors") if redis else ():
        if name in options:  # every reply a str, or names encoded unlike other processes
            raise ValueError(
                f"({credentials.mask_url(url)}) sets {name}, which distq cannot work with "
                "(it reads and writes bytes, alike in every process): remove it"
            )
    for value in options.get("protocol", []) if redis else []:
        if value not in ("2", "3"):
            raise ValueError(
                f"({credentials.mask_url(url)}) has protocol={cut(value)}; use 2 or 3, or leave "
                "the option out"
            )
    for value in options.get("client_name", []) if redis else []:
        if any(c.isspace() or not c.isprintable() for c in value):  # Redis refuses them
            raise ValueError(
                f"({credentials.mask_url(url)}) has client_name={cut(value)}; use a name "
                "without spaces or control characters, or leave the option out"
            )
    if redis and "socket_timeout" in options:
        raise ValueError(
            f"({credentials.mask_url(url)}) sets socket_timeout, which distq sets itself "
            "(a blocking read waits up to a third of DISTQ_LEASE_SECONDS, and a shorter "
            "timeout reads as an outage): remove it"
        )
    amqp = url.lower().startswith("amqp")
    for value in options.get("channel_max", []) if amqp else []:
        if value.isascii() and value.isdigit():  # other text pika refuses in its words
            try:  # 5,000 digits: pika's int() raised Python's digit limit, every digit shown
                _CHANNELS(value)
            except ValueError as exc:  # fewer: NoFreeChannels at the first command short
                raise ValueError(
                    f"({credentials.mask_url(url)}): channel_max {exc} (distq opens "
                    "several channels on a connection; AMQP numbers them in 16 bits), or "
                    "leave the option out"
                ) from None
    for name in _SECONDS_OPTIONS + _PAUSE_OPTIONS:
        for value in options.get(name, []):
            pause = name in _PAUSE_OPTIONS  # 0: the next attempt at once
            seconds, plainly = _seconds(value)
            above = seconds >= 0 if pause else seconds > 0
            if not (math.isfinite(seconds) and above and seconds <= _MOST_SECONDS):
                span = "from 0 to" if pause else "above 0 and at most"
                raise ValueError(
                    f"({credentials.mask_url(url)}) has {name}={cut(value)}; use a number of "
                    f"seconds {span} {_MOST_SECONDS:,}{plainly}, or leave the option out"
                )


def _seconds(value: str) -> tuple[float, str]:
    """A URL option's seconds, read as a flag's or a variable's are (:func:`decimal`, not
    stripped), NaN (refused) for any other text; and what its refusal adds: for a text
    float() reads, as redis-py and pika do (other scripts' digits, "1_0" as 10, a sign,
    spaces around), to write it in the digits 0-9 alone, and for a space (what a '+' in
    a URL's query reads as: ``=+5`` is " 5"), that too."""
    try:
        return float(decimal(value, "")), ""
    except ValueError:
        pass
    if not float_reads(value):
        return math.nan, ""
    space = " (a URL's query reads a '+' or %20 as a space)" if value != value.strip() else ""
    return math.nan, f"{space}, in the digits 0-9 alone"


_DATABASE_PATH = re.compile(r"(/[0-9]*)?/?")
#: Highest database number Redis's SELECT reads (a C int); past it the server answers
#: "value is out of range", which read as a broker failing at start (exit 3).
_MOST_DATABASE = 2**31 - 1


def redis_url(example: str) -> Callable[[str], str]:
    """A Redis URL whose path, if any, is a database number: redis-py reads any other
    path as database 0 without a word (``redis://h:6379/abc``)."""
    parse_url = url(("redis", "rediss", "unix"), example)

    def parse(text: str) -> str:
        checked = parse_url(text)
        parts = urlsplit(checked)
        if parts.scheme != "unix" and not _DATABASE_PATH.fullmatch(parts.path):
            raise ValueError(
                f"({credentials.mask_url(checked)}) has path {_shown(parts.path)}, not a database "
                f"number; end it with the database, e.g. {example} (or no path: database 0)"
            )
        path = parts.path.strip("/") if parts.scheme != "unix" else ""
        for number in [path, *parse_qs(parts.query).get("db", [])]:
            digits = number.lstrip("0") if number.isascii() and number.isdigit() else ""
            if len(digits) > 10 or (digits and int(digits) > _MOST_DATABASE):
                raise ValueError(
                    f"({credentials.mask_url(checked)}) names a database past any Redis "
                    f"server's (above {_MOST_DATABASE}); use one from 0 to its `databases` "
                    "setting minus 1 (0 to 15 by default)"
                )
        return checked

    return parse


def _netloc(url: str) -> str:
    """The user, password, host and port of ``url`` as written; ``""`` if an ``@`` after
    them says a password's '/', '?' or '#' cut them short (``redis://:12/3@h``)."""
    netloc = url.partition("://")[2]
    for stop in "/?#":
        netloc = netloc.partition(stop)[0]
    return netloc if netloc.count("@") == url.count("@") else ""


def _digits(digits: str) -> int:
    """ASCII ``digits`` as their number; past 30 significant digits, 10**30 (above every
    port, channel count and database here): int() of more than 4300 raised Python's
    "Exceeds the limit (4300 digits) for integer string conversion", the setting's
    refusal then in Python's words."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 30 else 10**30


def _port_text(url: str) -> str:
    """What stands after the host's ``:`` in ``url``; ``""`` if nothing does, or if an
    ``@`` after the host part says that part is a password's (``redis://:12/3@h``)."""
    netloc = _netloc(url)
    if not netloc:
        return ""
    host, colon, port = netloc.rpartition("@")[2].rpartition(":")
    return port if colon and (host.endswith("]") or not host.startswith("[")) else ""


def unusable_as_a_host(text: str) -> bool:
    """Whether ``text`` is empty or holds what no host has: a blank, a control
    character, '/' or '@' (a setting's and a flag's check alike)."""
    return not text or any(c.isspace() or not c.isprintable() or c in "/@" for c in text)


def listen_host(text: str) -> str:
    """A host to listen on: a name or an address (brackets around IPv6 taken off)."""
    if unusable_as_a_host(text):
        raise ValueError(
            f"is {_shown(text)}; use an address to listen on, e.g. 0.0.0.0 or 127.0.0.1"
        )
    if problem := host_problem(text.strip("[]")):
        raise ValueError(f"is {_shown(text)}, {problem}")
    return text.strip("[]")
