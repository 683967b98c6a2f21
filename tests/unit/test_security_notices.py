"""What a process says of its security at start (distq.security.notices): the manager
transport's lack of encryption, a short authkey, the signing keys it accepts. The start
line counts the keys a process accepts, not the entries of its list: a key given twice
(pasted again in a rotation's first step) is one key accepted."""

from __future__ import annotations

import re

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
    v6 = Settings.load({**KEY, "DISTQ_MANAGER_ADDRESS": "[::]:9000"})  # was "listening on :::9000"
    assert "listening on [::]:9000, beyond" in notices(v6, "master")[0][1]
    signed = Settings.load({**KEY, "DISTQ_SIGNING_KEYS": f"{SIGNING}1,{SIGNING}2"})
    line = notices(signed, "worker")[0][1]
    assert re.search(r"signed with key id [0-9a-f]{8}; 2 keys accepted", line)
    assert notices(Settings.load({"DISTQ_TRANSPORT": "redis"}), "master") == []
