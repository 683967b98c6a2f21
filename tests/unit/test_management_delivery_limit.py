"""Which policy's ``delivery-limit`` applies to a quorum queue, as a worker reads it from
RabbitMQ's management API to warn of a limit its own crash can reach
(:func:`distq.management.delivery_limit_warning`)."""

from __future__ import annotations

from typing import Any

from distq.config import Settings
from distq.management import _in_force, delivery_limit_warning


def _policy(pattern: str, limit: int, priority: int = 0, apply_to: str = "all") -> dict[str, Any]:
    return {
        "name": f"p{limit}",
        "pattern": pattern,
        "apply-to": apply_to,
        "priority": priority,
        "definition": {"delivery-limit": limit},
    }


def test_the_matching_policy_of_highest_priority_applies() -> None:
    policies = [_policy("^jobs$", 2), _policy("^jo", 9, priority=5), _policy("^other$", 1, 9)]
    assert _in_force(policies, "jobs") == {"delivery-limit": 9}


def test_a_policy_for_exchanges_or_an_unreadable_pattern_is_passed_over() -> None:
    policies = [
        _policy("^jobs$", 1, priority=9, apply_to="exchanges"),
        _policy("(", 2, priority=8),  # no regex Python reads
        _policy("^jobs$", 3, apply_to="quorum_queues"),
    ]
    assert _in_force(policies, "jobs") == {"delivery-limit": 3}
    assert _in_force(policies, "other") == {}


def test_no_warning_without_a_management_api_or_off_rabbitmq() -> None:
    assert delivery_limit_warning(Settings(transport="rabbitmq"), 8) is None
    redis = Settings(transport="redis", rabbitmq_management_url="http://127.0.0.1:1")
    assert delivery_limit_warning(redis, 8) is None
