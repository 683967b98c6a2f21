"""Which policy's ``delivery-limit`` applies to a quorum queue, as a worker reads it from
RabbitMQ's management API to warn of a limit its own crash can reach
(:func:`distq.management.delivery_limit_warning`)."""

from __future__ import annotations

from typing import Any

from distq.config import Settings
from distq.management import (
    _in_force,
    default_delivery_limit,
    delivery_limit_warning,
    limit_in_force,
    limit_warning,
)


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


def test_rabbitmq_4_applies_a_limit_of_20_where_none_is_set() -> None:
    """RabbitMQ 4.x limits every quorum queue to 20 deliveries when nothing sets a limit
    (3.x: no limit): "none set" read as no limit hid the limit in force from the
    warning of a worker of more than 20 slots."""
    assert default_delivery_limit("4.0.5") == 20
    assert default_delivery_limit("4.3.0") == 20
    assert default_delivery_limit("3.10.8") is None
    assert default_delivery_limit("3.13.7") is None
    assert default_delivery_limit(None) is None  # not told: as 3.x
    assert default_delivery_limit("unknown") is None
    # what a queue's argument, policy and operator policy set, else the default
    assert limit_in_force([None, None, None], "4.0.5") == 20
    assert limit_in_force([None, None, None], "3.10.8") is None
    assert limit_in_force([None, 5, None], "4.0.5") == 5
    assert limit_in_force([30, None, 9], "4.0.5") == 9
    assert limit_in_force([-1, None, None], "4.0.5") is None  # -1: none, as set


def test_a_worker_of_more_slots_than_rabbitmq_4s_default_limit_is_warned() -> None:
    said = limit_warning("jobs", 20, 25, "4.0.5")
    assert said is not None
    assert "'jobs' has a delivery-limit of 20 (RabbitMQ 4.0.5's default where" in said, said
    assert "at least 26" in said, said
    assert limit_warning("jobs", None, 25, "3.10.8") is None
    assert limit_warning("jobs", 30, 25, "4.0.5") is None


def test_a_worker_of_one_slot_is_said_to_have_1_slot() -> None:
    """It said "this worker 1 slots (--concurrency 1)", then "1 slot (--concurrency 1),
    each on a connection of its own": "each" of one slot."""
    said = limit_warning("jobs", 1, 1, "4.0.5")
    assert said is not None
    assert "and this worker 1 slot (--concurrency 1), on a connection of its own: " in said, said
    said = limit_warning("jobs", 2, 3, "4.0.5")
    assert said is not None
    assert "and this worker 3 slots (--concurrency 3), each on a connection of its own: " in said
