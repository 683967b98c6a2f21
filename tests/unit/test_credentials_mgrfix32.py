"""A secret's file holds the secret and one trailing newline, as the README and
``read_secret`` say: a key whose own last byte is a line end keeps it. A keys file
written with old Mac line ends (a bare CR) holds one key per line all the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from distq.config import Settings
from distq.credentials import read_secret
from distq.executor_settings import load_settings

SIGNING = "k" * 16 + "-signing"


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
