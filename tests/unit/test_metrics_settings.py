"""The observability settings: defaults, and one line naming the variable when one is wrong."""

from __future__ import annotations

import pytest

from distq.config import Settings
from distq.errors import ConfigError

KEY = {"DISTQ_AUTHKEY": "secret"}


def test_defaults() -> None:
    settings = Settings.load(KEY)
    assert settings.metrics_port is None and settings.metrics_host == "0.0.0.0"
    assert settings.stall_seconds == 60 and settings.stats_seconds == 5
    assert settings.log_format == "text" and settings.rabbitmq_management_url is None


def test_values_and_flags() -> None:
    settings = Settings.load(
        {
            **KEY,
            "DISTQ_METRICS_PORT": "9100",
            "DISTQ_METRICS_HOST": "127.0.0.1",
            "DISTQ_STALL_SECONDS": "0.5",
            "DISTQ_STATS_SECONDS": "2",
            "DISTQ_RABBITMQ_MANAGEMENT_URL": "http://admin:pw@rabbit:15672",
        },
        {"DISTQ_LOG_FORMAT": "json", "DISTQ_METRICS_HOST": "[::1]"},
    )
    assert (settings.metrics_port, settings.metrics_host) == (9100, "::1")
    assert (settings.stall_seconds, settings.stats_seconds) == (0.5, 2.0)
    assert settings.log_format == "json"
    assert settings.rabbitmq_management_url == "http://admin:pw@rabbit:15672"
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DISTQ_METRICS_HOST": "my host"}, ["DISTQ_METRICS_HOST", "0.0.0.0"]),
        ({"DISTQ_STALL_SECONDS": "soon"}, ["DISTQ_STALL_SECONDS", "not a number"]),
        ({"DISTQ_STALL_SECONDS": "0"}, ["DISTQ_STALL_SECONDS", "0.1 to 86400"]),
        ({"DISTQ_STATS_SECONDS": "-1"}, ["DISTQ_STATS_SECONDS", "0.1 to 3600"]),
        ({"DISTQ_LOG_FORMAT": "yaml"}, ["DISTQ_LOG_FORMAT", "text, json"]),
        ({"DISTQ_RABBITMQ_MANAGEMENT_URL": "amqp://u:pw@h"}, ["DISTQ_RABBITMQ_MANAGEMENT_URL"]),
        ({"DISTQ_RABBITMQ_MANAGEMENT_URL": "http://"}, ["DISTQ_RABBITMQ_MANAGEMENT_URL", "host"]),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load({**KEY, **env})
    message = str(caught.value)
    assert "\n" not in message and "pw" not in message
    for name in names:
        assert name in message
