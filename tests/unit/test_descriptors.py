"""A worker's slots against ``ulimit -n``: each Redis or RabbitMQ slot opens its own
connection, and one that could not failed as if the broker were away, for ever (env11,
scale11)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from distq import descriptors

PROBE = (
    "import resource; from distq import descriptors; "
    "opened = descriptors.open_now(); "
    "print(descriptors.room_for(64, 'rabbitmq')); "
    "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0]); print(opened)"
)


def _limited(
    argv: list[str], soft: int, hard: int, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` run with that limit on open files."""
    return subprocess.run(
        argv,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _under(soft: int, hard: int) -> list[str]:
    """What PROBE prints in a process started with that limit on open files."""
    done = _limited([sys.executable, "-c", PROBE], soft, hard)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_soft_limit_is_raised_as_far_as_the_slots_need() -> None:
    line, soft, opened = _under(64, 4096)
    own = descriptors.OWN["rabbitmq"]
    assert line == "None" and int(soft) == int(opened) + own + descriptors.MARGIN + 64 * 4


def test_a_hard_limit_too_low_for_the_slots_says_how_many_fit() -> None:
    line, soft, opened = _under(64, 100)
    assert soft == "100"  # raised as far as it may go
    others = int(opened) + descriptors.OWN["rabbitmq"] + descriptors.MARGIN  # 41 for 8 slots
    need, fit = others + 64 * 4, (100 - others) // 4
    assert line == (
        f"--concurrency 64 needs about {need} open files and this process may have 100 "
        f"(ulimit -n; its hard limit: 100): lower --concurrency to {fit} or less, or raise "
        "the hard limit (docker run --ulimit nofile=N, a pod's or service's LimitNOFILE)"
    )


@pytest.mark.parametrize(
    ("error", "out"),
    [
        (OSError(24, "Too many open files"), True),
        ("Error 24 connecting to 127.0.0.1:6379. Too many open files.", True),
        ("[Errno 24] Too many open files: '/x/METADATA'", True),
        (ConnectionRefusedError(111, "Connection refused"), False),
    ],
)
def test_out_of_descriptors_is_told_from_a_broker_away(error: object, out: bool) -> None:
    assert descriptors.out_of_descriptors(error) is out


def test_a_worker_whose_hard_limit_is_too_low_does_not_start() -> None:
    """Before: a warning, then the slots past the limit retried for ever and took every
    descriptor that came free, so its /healthz went unanswered (a container marked
    unhealthy, a pod restarted; stack12). Refused before it connects: no broker here."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": ":".join(sys.path),
        "DISTQ_TRANSPORT": "redis",
        "DISTQ_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    done = _limited([sys.executable, "-m", "distq", "worker", "-c", "64", "--quiet"], 40, 40, env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("distq: --concurrency 64 needs about "), done.stderr
    assert "lower --concurrency to 3" in done.stderr, done.stderr  # about 34 fit in 40
    assert "cannot reach" not in done.stderr
