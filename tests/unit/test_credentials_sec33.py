"""Secrets of whitespace alone, and a UTF-8 byte order mark in front of a secret file
(what editors on Windows write), as the README's Settings section says them (sec33)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distq.config import Settings
from distq.errors import ConfigError
from distq.executor_settings import load_settings

MANAGER = {"DISTQ_TRANSPORT": "manager"}
BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("value", ["   ", "\t", " \n "])
def test_an_authkey_of_whitespace_alone_is_refused_as_such_not_as_unset(value: str) -> None:
    """Was "DISTQ_AUTHKEY is not set", for a variable that was set: to blanks."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({**MANAGER, "DISTQ_AUTHKEY": value})
    said = str(caught.value)
    assert "DISTQ_AUTHKEY holds only whitespace" in said and "not set" not in said, said


@pytest.mark.parametrize("key", [b"   ", b"\n", "  "])
def test_an_executor_authkey_of_whitespace_alone_is_refused_as_such(key: Any) -> None:
    """The README said an authkey may be any bytes; b"\\n" was refused as "not set"."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"transport": "manager", "authkey": key}, {})
    assert "holds only whitespace" in str(caught.value), caught.value


def test_an_authkey_with_whitespace_inside_or_around_other_bytes_is_kept() -> None:
    settings = load_settings(None, {"transport": "manager", "authkey": b" a key \n"}, {})
    assert settings.authkey == b" a key \n"


def test_an_authkey_file_holding_only_a_line_break_says_so(tmp_path: Path) -> None:
    """Was "which is empty", of a file that held a newline."""
    path = tmp_path / "authkey"
    path.write_bytes(b"\n")
    with pytest.raises(ConfigError, match="empty but for whitespace"):
        Settings.load({**MANAGER, "DISTQ_AUTHKEY_FILE": str(path)})


@pytest.mark.parametrize(
    ("variable", "field", "value"),
    [
        ("DISTQ_AUTHKEY", "authkey", b"authkey-0123456789abcdef"),
        ("DISTQ_SIGNING_KEY", "signing_keys", (b"signing-key-0123456789abcdef",)),
        ("DISTQ_SIGNING_KEYS", "signing_keys", (b"signing-key-0123456789abcdef",)),
    ],
)
def test_a_byte_order_mark_in_front_of_a_key_file_is_not_part_of_the_key(
    tmp_path: Path, variable: str, field: str, value: Any
) -> None:
    """The authkey kept it: a master reading a file an editor wrote refused every worker
    given the same key by its variable, as a wrong key."""
    key = value if isinstance(value, bytes) else value[0]
    path = tmp_path / "secret"
    path.write_bytes(BOM + key + b"\r\n")
    environ = {**MANAGER, "DISTQ_AUTHKEY": "authkey-0123456789abcdef"}
    environ.pop(variable, None)  # given as the file instead
    settings = Settings.load({**environ, f"{variable}_FILE": str(path)})
    assert getattr(settings, field) == value


def test_a_byte_order_mark_in_front_of_a_password_file_is_not_part_of_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "password"
    path.write_bytes(BOM + b"pass word\n")
    settings = Settings.load(
        {
            "DISTQ_TRANSPORT": "redis",
            "DISTQ_REDIS_URL": "redis://127.0.0.1:6379/0",
            "DISTQ_REDIS_PASSWORD_FILE": str(path),
        }
    )
    assert settings.redis_url == "redis://:pass%20word@127.0.0.1:6379/0"


def test_a_file_holding_only_a_byte_order_mark_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "authkey"
    path.write_bytes(BOM + b"\n")
    with pytest.raises(ConfigError, match="empty but for whitespace and a byte order mark"):
        Settings.load({**MANAGER, "DISTQ_AUTHKEY_FILE": str(path)})
