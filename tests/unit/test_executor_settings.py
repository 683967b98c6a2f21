"""An executor's settings: the DISTQ_* environment, a Settings object, keyword overrides."""

from __future__ import annotations

import pytest

from distq.config import Settings
from distq.errors import ConfigError
from distq.executor import Executor, load_settings


def test_the_environment_with_keyword_overrides_by_field_name() -> None:
    env = {"DISTQ_TRANSPORT": "manager", "DISTQ_AUTHKEY": "k", "DISTQ_QUEUE": "from-env"}
    assert load_settings(None, {}, env).queue == "from-env"
    got = load_settings(
        None,
        {"transport": "redis", "redis_url": "redis://h:1/0", "lease_seconds": 2, "queue": "q"},
        {},  # no DISTQ_AUTHKEY needed once the transport is redis
    )
    assert (got.transport, got.redis_url, got.lease_seconds, got.queue) == (
        "redis",
        "redis://h:1/0",
        2.0,
        "q",
    )
    address = load_settings(None, {"manager_address": ("0.0.0.0", 9100), "authkey": b"k"}, {})
    assert address.manager_address == ("0.0.0.0", 9100) and address.authkey == b"k"


def test_overrides_of_a_settings_object_are_parsed_and_checked() -> None:
    base = Settings(transport="redis")
    assert load_settings(base, {"prefetch": "7"}, {}).prefetch == 7
    assert load_settings(base, {"prefetch": 9}, {}).prefetch == 9
    with pytest.raises(ConfigError, match=r"prefetch='x': DISTQ_PREFETCH is 'x', not a whole"):
        load_settings(base, {"prefetch": "x"}, {})
    with pytest.raises(ConfigError, match="manager transport needs a shared secret"):
        load_settings(base, {"transport": "manager"}, {})


def test_bad_values_and_unknown_names_are_refused_before_anything_connects() -> None:
    with pytest.raises(ConfigError, match="DISTQ_TRANSPORT --transport is 'kafka'"):
        load_settings(None, {"transport": "kafka"}, {})
    with pytest.raises(ConfigError, match="DISTQ_AUTHKEY is not set"):
        load_settings(None, {}, {})
    with pytest.raises(TypeError, match="unexpected keyword argument 'queu'; settings are: "):
        load_settings(None, {"queu": "x"}, {})
    with pytest.raises(ValueError, match="max_attempts is 0"):
        Executor(Settings(transport="redis"), max_attempts=0)
    with pytest.raises(ValueError, match="task_timeout is -1"):
        Executor(Settings(transport="redis"), task_timeout=-1)


def test_a_misspelled_variable_is_logged_as_the_command_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"DISTQ_TRANSPORT": "redis", "DISTQ_QEUE": "x"}
    assert load_settings(None, {}, env).queue == "distq"
    assert "DISTQ_QEUE is not a distq setting (ignored); did you mean DISTQ_QUEUE?" in caplog.text
