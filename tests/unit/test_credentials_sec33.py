"""Secrets of whitespace alone, as the README's Settings section says them (sec33)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distq.config import Settings
from distq.errors import ConfigError
from distq.executor_settings import load_settings

MANAGER = {"DISTQ_TRANSPORT": "manager"}


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
