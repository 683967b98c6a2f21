"""No secret in what the queue commands print (submit, dead-letters, requeue-dead, status)
given a broker URL that holds its password, the right one or a wrong one, in text and
JSON lines, on Redis and RabbitMQ, with signing keys set and a dead letter to show."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from conftest import Target
from procs import Distq

pytestmark = pytest.mark.integration

KEY = "sec32-secret-signing-key-0123456789"
OTHER = "sec32-other-signing-key-9876543210"


def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = Distq(args, env)
    try:
        code = proc.wait(60)
        return code, proc.output()
    finally:
        proc.stop()


@pytest.mark.parametrize("target", ["redis", "rabbitmq"], indirect=True)
def test_no_password_nor_key_in_what_the_queue_commands_print(target: Target) -> None:
    var = "DISTQ_REDIS_URL" if target.name == "redis" else "DISTQ_AMQP_URL"
    password = unquote(urlsplit(target.env[var]).password or "")
    wrong = unquote(urlsplit(target.bad_credentials_env[var]).password or "")
    assert password and wrong
    outputs = []
    for log_format in ("text", "json"):
        env = target.process_env(DISTQ_SIGNING_KEYS=KEY, DISTQ_LOG_FORMAT=log_format)
        # a task signed with another key, refused by a worker: a dead letter to show
        other = {**env, "DISTQ_SIGNING_KEYS": OTHER}
        code, out = run(["submit", "square", "3"], other)
        assert code == 0, out
        outputs.append(out)
        code, out = run(["worker", "--exit-when-idle", "1"], env)
        assert code == 0, out
        outputs.append(out)
        for args in (["status"], ["dead-letters"], ["requeue-dead"], ["dead-letters"]):
            code, out = run(args, env)
            outputs.append(out)
        code, out = run(["submit", "--wait", "--timeout", "1", "square", "3"], env)
        outputs.append(out)
        bad = target.process_env(
            **target.bad_credentials_env, DISTQ_SIGNING_KEYS=KEY, DISTQ_LOG_FORMAT=log_format
        )
        for args in (["status"], ["dead-letters"], ["requeue-dead"], ["submit", "square", "3"]):
            code, out = run(args, bad)
            assert code == 3, out
            outputs.append(out)
    everything = "\n".join(outputs)
    assert "signed with another key" in everything, everything
    assert "Traceback" not in everything, everything
    for secret in (password, wrong, KEY, OTHER):
        assert secret not in everything, (secret, everything)
