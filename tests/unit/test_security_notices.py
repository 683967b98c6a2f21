"""What a process says of its security at start (distq.security.notices): the manager
transport's lack of encryption, a short authkey, the signing keys it accepts. The start
line counts the keys a process accepts, not the entries of its list: a key given twice
(pasted again in a rotation's first step) is one key accepted."""

from __future__ import annotations

import re
from typing import Literal

import pytest

from distq.config import Settings
from distq.security import notices
from distq.signing import key_id

OLD = "old-signing-key-0123456789abcdef"
NEW = "new-signing-key-9876543210fedcba"
KEY = {"DISTQ_AUTHKEY": "secret-authkey-value"}
SIGNING = "k" * 16 + "-signing"


def start_line(keys: str) -> str:
    settings = Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_SIGNING_KEYS": keys})
    [(level, text)] = notices(settings, "worker")
    assert level == "info"
    return text


def test_a_key_given_twice_is_one_key_accepted() -> None:
    assert (
        start_line(f"{OLD},{OLD}") == f"tasks and results signed with key id {key_id(OLD.encode())}"
    )
    assert start_line(f"{OLD}\n{NEW}\n{OLD}").endswith("; 2 keys accepted")
    assert start_line(f"{OLD},{NEW}").endswith("; 2 keys accepted")


def test_the_manager_transport_says_it_is_not_encrypted() -> None:
    local = Settings.load(KEY)
    [(level, line)] = notices(local, "master")
    assert level == "info" and "not encrypted" in line
    everywhere = Settings.load({**KEY, "DISTQ_MANAGER_ADDRESS": "0.0.0.0:9000"})
    [(level, line)] = notices(everywhere, "master")
    assert level == "warning" and "0.0.0.0:9000" in line and "not encrypted" in line
    assert notices(everywhere, "worker")[0][0] == "info"
    short = Settings.load({"DISTQ_AUTHKEY": "q7"})  # guessed in 0.9 s: once not said
    assert [level for level, _ in notices(short, "master")] == ["info", "warning"]
    assert notices(short, "master")[1][1].startswith("DISTQ_AUTHKEY is 2 bytes long: a peer")
    assert len(notices(short, "worker")) == 1  # the master's to say
    one = Settings.load({"DISTQ_AUTHKEY": "q"})  # it said "1 bytes long"
    assert notices(one, "master")[1][1].startswith("DISTQ_AUTHKEY is 1 byte long: a peer")
    v6 = Settings.load({**KEY, "DISTQ_MANAGER_ADDRESS": "[::]:9000"})  # was "listening on :::9000"
    assert "listening on [::]:9000, beyond" in notices(v6, "master")[0][1]
    signed = Settings.load({**KEY, "DISTQ_SIGNING_KEYS": f"{SIGNING}1,{SIGNING}2"})
    line = notices(signed, "worker")[0][1]
    assert re.search(r"signed with key id [0-9a-f]{8}; 2 keys accepted", line)
    assert notices(Settings.load({"DISTQ_TRANSPORT": "redis"}), "master") == []


@pytest.mark.parametrize("role", ["master", "worker"])
@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("127.0.0.1:9000", "127.0.0.1:9000"),
        ("[::1]:9000", "[::1]:9000"),
        ("localhost:9000", "localhost:9000"),
    ],
)
def test_on_loopback_the_manager_transport_says_nothing_crosses_a_network(
    role: Literal["master", "worker"], address: str, shown: str
) -> None:
    """On a loopback address the line said "tasks and results cross the network as plain
    text", where nothing crosses a network: it says they stay on this machine, and still
    that the transport is not encrypted and the authkey only authenticates."""
    settings = Settings.load({**KEY, "DISTQ_MANAGER_ADDRESS": address})
    [(level, line)] = notices(settings, role)
    assert level == "info", line
    assert "cross the network" not in line, line
    assert line == (
        "the manager transport is not encrypted (DISTQ_AUTHKEY only authenticates): on the "
        f"loopback address {shown} tasks and results stay on this machine, unless something "
        "forwards that port"
    )


def test_beyond_loopback_a_master_warns_and_a_worker_names_its_master() -> None:
    """Beyond loopback a master warns, as before; a worker says its tasks and results
    cross the network as plain text, to and from the master at the address it reaches."""
    settings = Settings.load({**KEY, "DISTQ_MANAGER_ADDRESS": "10.1.2.3:9000"})
    assert notices(settings, "master") == [
        (
            "warning",
            "listening on 10.1.2.3:9000, beyond this machine, and the manager transport is not "
            "encrypted: tasks and results cross the network as plain text (DISTQ_AUTHKEY only "
            "authenticates); keep that network private, or use redis or rabbitmq over TLS",
        )
    ]
    assert notices(settings, "worker") == [
        (
            "info",
            "the manager transport is not encrypted: tasks and results cross the network to "
            "and from the master at 10.1.2.3:9000 as plain text (DISTQ_AUTHKEY only "
            "authenticates)",
        )
    ]
