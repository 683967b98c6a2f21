"""What a secret's value or file holds, as the README's Settings section says it.

A secret's file holds the secret and one trailing newline, as the README and
``read_secret`` say: a key whose own last byte is a line end keeps it. A keys file
written with old Mac line ends (a bare CR) holds one key per line all the same.
Secrets of whitespace alone are refused as such, and a UTF-8 byte order mark in front of
a secret file (what editors on Windows write) is not part of the secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distq.config import Settings
from distq.credentials import read_secret
from distq.errors import ConfigError
from distq.executor_settings import load_settings

MANAGER = {"DISTQ_TRANSPORT": "manager"}
BOM = b"\xef\xbb\xbf"
SIGNING = "k" * 16 + "-signing"


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


def _file(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "secret"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("key", [b"0123456789abcdef\n", b"0123456789abcdef\r\n", b"k\xff\n\n"])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_an_authkey_file_drops_its_trailing_newline_and_nothing_of_the_key(
    tmp_path: Path, key: bytes, newline: bytes
) -> None:
    path = _file(tmp_path, key + newline)
    assert Settings.load({"DISTQ_AUTHKEY_FILE": path}).authkey == key
    # the same key as a program that passes its bytes
    given = load_settings(None, {"transport": "manager", "authkey": key}, {})
    assert Settings.load({"DISTQ_AUTHKEY_FILE": path}).authkey == given.authkey


def test_a_password_file_drops_one_trailing_newline(tmp_path: Path) -> None:
    assert read_secret(_file(tmp_path, b"pw\r\n\r\n"), "DISTQ_REDIS_PASSWORD_FILE") == "pw\r\n"
    assert read_secret(_file(tmp_path, b"pw\n"), "DISTQ_REDIS_PASSWORD_FILE") == "pw"


@pytest.mark.parametrize("ending", [b"\r", b"\r\n", b"\n"])
def test_a_signing_keys_file_holds_one_key_per_line_whatever_its_line_ends(
    tmp_path: Path, ending: bytes
) -> None:
    keys = (f"{SIGNING}1".encode(), f"{SIGNING}2".encode())
    path = _file(tmp_path, ending.join(keys) + ending)
    env = {"DISTQ_TRANSPORT": "redis", "DISTQ_SIGNING_KEYS_FILE": path}
    assert Settings.load(env).signing_keys == keys
    over = load_settings(None, {"transport": "redis", "signing_keys_file": path}, {})
    assert over.signing_keys == keys
