"""What a master or worker says at start about its own protection: signing, encryption."""

from __future__ import annotations

import ipaddress
from typing import Literal

from distq.addresses import host_port
from distq.config import Settings
from distq.signing import MIN_KEY_LENGTH, key_id, length_said

Notice = tuple[Literal["info", "warning"], str]


def notices(settings: Settings, role: Literal["master", "worker"]) -> list[Notice]:
    """Lines to print at start: the signing key in use, what the manager transport does
    not protect (it is not encrypted), and a manager master's authkey too short to stand
    guessing (any bytes work, as the stdlib's, but signing keys need 16)."""
    out: list[Notice] = []
    keys = settings.signing_keys
    if keys:
        count = len(set(keys))  # a key given twice is one key accepted
        accepted = f"; {count} keys accepted" if count > 1 else ""
        out.append(("info", f"tasks and results signed with key id {key_id(keys[0])}{accepted}"))
    if settings.transport != "manager":
        return out
    out.append(_not_encrypted(*settings.manager_address, role))
    key = settings.authkey or b""
    if role == "master" and len(key) < MIN_KEY_LENGTH:
        out.append(
            (
                "warning",
                f"DISTQ_AUTHKEY is {length_said(len(key), 'byte')}: a peer that reaches the "
                "port can "
                f"guess a short key, hundreds of tries a second; use at least {MIN_KEY_LENGTH} "
                "random characters, e.g. $(python3 -c 'import secrets; "
                "print(secrets.token_hex(16))')",
            )
        )
    return out


def _not_encrypted(host: str, port: int, role: Literal["master", "worker"]) -> Notice:
    """What the manager transport does not protect, at the address a master listens on
    or a worker reaches its master at. On loopback (127.0.0.1, ::1, localhost) nothing
    crosses a network: it said "tasks and results cross the network as plain text" all
    the same. Beyond it, a master's is a warning, and a worker's names its master."""
    where = host_port(host, port)
    if is_loopback(host):
        return (
            "info",
            "the manager transport is not encrypted (DISTQ_AUTHKEY only authenticates): on "
            f"the loopback address {where} tasks and results stay on this machine, unless "
            "something forwards that port",
        )
    plain = "the manager transport is not encrypted: tasks and results cross the network"
    authenticates = "as plain text (DISTQ_AUTHKEY only authenticates)"
    if role == "worker":
        return ("info", f"{plain} to and from the master at {where} {authenticates}")
    return (
        "warning",
        f"listening on {where}, beyond this machine, and {plain} {authenticates}; keep "
        "that network private, or use redis or rabbitmq over TLS",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may be reachable from anywhere
