"""The start line counts the keys a process accepts, not the entries of its list: a key
given twice (pasted again in a rotation's first step) is one key accepted."""

from __future__ import annotations

from distq.config import Settings
from distq.security import notices
from distq.signing import key_id

OLD = "sec32-old-signing-key-0123456789"
NEW = "sec32-new-signing-key-9876543210"


def line(keys: str) -> str:
    settings = Settings.load({"DISTQ_TRANSPORT": "redis", "DISTQ_SIGNING_KEYS": keys})
    [(level, text)] = notices(settings, "worker")
    assert level == "info"
    return text


def test_a_key_given_twice_is_one_key_accepted() -> None:
    assert line(f"{OLD},{OLD}") == f"tasks and results signed with key id {key_id(OLD.encode())}"
    assert line(f"{OLD}\n{NEW}\n{OLD}").endswith("; 2 keys accepted")
    assert line(f"{OLD},{NEW}").endswith("; 2 keys accepted")
