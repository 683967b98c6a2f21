"""Broker URL options the settings must refuse, shown against a real broker: what each
did to a command before it was refused (exit 2 with one line, before anything connects)."""

from __future__ import annotations

import subprocess

import pytest

from brokers import Broker
from procs import checkout_env, run_distq

pytestmark = pytest.mark.integration


def distq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_distq(args, checkout_env(**env), timeout=60)


@pytest.mark.parametrize("channel_max", ["1", "2"])
def test_an_amqp_channel_max_too_low_for_distq_exits_2_naming_it(
    rabbitmq_broker: Broker, channel_max: str
) -> None:
    """channel_max=1 failed `status` and a master's reply queue, 2 `dead-letters` and
    `requeue-dead`, each with "failed: NoFreeChannels" and exit 3, as if the broker
    were out of reach: the setting was to change."""
    url = f"{rabbitmq_broker.url}?channel_max={channel_max}"
    done = distq("dead-letters", DISTQ_TRANSPORT="rabbitmq", DISTQ_AMQP_URL=url)
    assert done.returncode == 2, done.stderr
    said = f"): channel_max is {channel_max}; use a whole number from 3 to 65535 ("
    assert said in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    fine = distq("dead-letters", DISTQ_TRANSPORT="rabbitmq", DISTQ_AMQP_URL=url[:-1] + "3")
    assert fine.returncode == 0, fine.stderr
