from __future__ import annotations

import pytest

from distq.config import Settings
from distq.errors import ConfigError

KEY = {"DISTQ_AUTHKEY": "secret"}


def test_defaults_and_flags_over_environment() -> None:
    settings = Settings.load(
        {**KEY, "DISTQ_QUEUE": "from-env", "DISTQ_LEASE_SECONDS": "2"},
        {"DISTQ_QUEUE": "from-flag", "DISTQ_PREFETCH": None},
    )
    assert settings.transport == "manager"
    assert settings.manager_address == ("127.0.0.1", 9000)
    assert settings.queue == "from-flag"
    assert settings.lease_seconds == 2.0
    assert settings.prefetch == 128
    assert settings.heartbeat_interval == pytest.approx(2 / 3)


def test_repr_hides_secrets() -> None:
    settings = Settings.load(
        {**KEY, "DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": "redis://:pw@127.0.0.1:6379/0"}
    )
    assert "secret" not in repr(settings) and "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DISTQ_TRANSPORT": "kafka"}, ["DISTQ_TRANSPORT", "manager, redis, rabbitmq"]),
        ({"DISTQ_AUTHKEY": ""}, ["DISTQ_AUTHKEY", "not set"]),
        ({**KEY, "DISTQ_MANAGER_ADDRESS": "localhost"}, ["DISTQ_MANAGER_ADDRESS", "host:port"]),
        ({**KEY, "DISTQ_MANAGER_ADDRESS": "h:70000"}, ["DISTQ_MANAGER_ADDRESS"]),
        ({**KEY, "DISTQ_REDIS_URL": "http://x"}, ["DISTQ_REDIS_URL", "redis://"]),
        ({**KEY, "DISTQ_AMQP_URL": "amqp://h:port/"}, ["DISTQ_AMQP_URL", "not a valid URL"]),
        ({**KEY, "DISTQ_QUEUE": "has space"}, ["DISTQ_QUEUE"]),
        ({**KEY, "DISTQ_LEASE_SECONDS": "soon"}, ["DISTQ_LEASE_SECONDS", "not a number"]),
        ({**KEY, "DISTQ_LEASE_SECONDS": "0"}, ["DISTQ_LEASE_SECONDS", "0.3 to 3600"]),
        ({**KEY, "DISTQ_PREFETCH": "1.5"}, ["DISTQ_PREFETCH", "whole number"]),
        ({**KEY, "DISTQ_METRICS_PORT": "99999"}, ["DISTQ_METRICS_PORT"]),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(env)
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_authkey_is_needed_only_by_manager() -> None:
    assert Settings.load({"DISTQ_TRANSPORT": "redis"}).authkey is None


def test_flag_origin_is_named() -> None:
    with pytest.raises(ConfigError, match="DISTQ_QUEUE --queue"):
        Settings.load(KEY, {"DISTQ_QUEUE": "bad name"})
