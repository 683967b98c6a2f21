"""No secret reaches the output: every line master and workers print, on every transport,
on success and on the error paths (wrong password, unreachable broker, bad settings,
refused signatures), is searched for the secrets they were given."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest

from conftest import REPO, Target
from launch import free_port
from procs import Distq

pytestmark = pytest.mark.integration

SECRET_NAMES = r"(AUTHKEY|PASSWORD|SIGNING_KEYS?)"
SIGNING_KEY = "secret-signing-key-0123456789abcdef"
OTHER_SIGNING_KEY = "other-signing-key-9876543210fedcba"


def run(args: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    proc = Distq(args, env)
    try:
        code = proc.wait(timeout)
        return code, proc.output()
    finally:
        proc.stop()


def without_password(url: str) -> tuple[str, str]:
    """``url`` with its password taken out, and the password."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}@{hostport}" if user else hostport
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password or "")


def assert_clean(output: str, known: list[str]) -> None:
    for secret in known:
        assert secret and secret not in output, f"a secret is in the output:\n{output}"


def test_no_secret_in_the_output_of_a_job_or_its_failures(target: Target, tmp_path: Path) -> None:
    keys = [secrets.token_hex(20), secrets.token_hex(20)]
    known = list(keys)
    keys_file = tmp_path / "signing-keys"
    keys_file.write_text("\n".join(keys) + "\n")
    distq = {"DISTQ_SIGNING_KEYS_FILE": str(keys_file)}
    var = {"redis": "DISTQ_REDIS_URL", "rabbitmq": "DISTQ_AMQP_URL"}.get(target.name)
    if var is None:  # manager: the authkey from a file
        authkey = target.env["DISTQ_AUTHKEY"]
        known.append(authkey)
        (tmp_path / "authkey").write_text(authkey + "\n")
        distq.update(DISTQ_AUTHKEY="", DISTQ_AUTHKEY_FILE=str(tmp_path / "authkey"))
    else:  # a broker: the URL without its password, the password from a file
        url, password = without_password(target.env[var])
        known.append(password)
        (tmp_path / "password").write_text(password + "\n")
        file_var = var.replace("_URL", "_PASSWORD_FILE")
        distq.update({var: url, file_var: str(tmp_path / "password")})
    env = {k: v for k, v in target.process_env(**distq).items() if v}

    outputs: list[str] = []
    # 1. a job
    master = Distq(["master", "--tasks", "30", "--timeout", "60"], env)
    master.wait_for(r"^master .* transport")
    worker = Distq(["worker", "--exit-when-idle", "2"], env)
    try:
        assert master.wait(90) == 0, master.output() + worker.output()
        worker.wait(30)
        outputs += [master.output(), worker.output()]
    finally:
        master.stop()
        worker.stop()
    assert "tasks and results signed with key id" in outputs[0]

    # 2. a worker that holds another key: it refuses the tasks, printing why
    stranger_key = secrets.token_hex(20)
    known.append(stranger_key)
    stranger_env = {**env, "DISTQ_SIGNING_KEYS_FILE": "", "DISTQ_SIGNING_KEYS": stranger_key}
    master = Distq(["master", "--tasks", "2", "--timeout", "4"], env)
    master.wait_for(r"^master .* transport")
    stranger = Distq(["worker", "--exit-when-idle", "1", "--worker-id", "stranger"], stranger_env)
    try:
        stranger.wait_for("signed with another key")
        assert master.wait(30) == 1, master.output()  # no result came back
        stranger.wait(30)
        outputs += [master.output(), stranger.output()]
    finally:
        master.stop()
        stranger.stop()

    # 3. the error paths: wrong credentials, nobody listening, a malformed setting
    bad = dict(env)
    if var is None:
        wrong = "not-" + authkey
        bad.update(DISTQ_AUTHKEY_FILE="", DISTQ_AUTHKEY=wrong)
        bad = {k: v for k, v in bad.items() if v}
        master = Distq(["master", "--tasks", "1", "--timeout", "30"], env)
        try:
            master.wait_for(r"^master .* transport")
            code, out = run(["worker", "--connect-timeout", "1"], bad)
            assert code == 3 and "rejected DISTQ_AUTHKEY" in out, out
            outputs.append(out)
        finally:
            master.stop()
        port = free_port()
        code, out = run(
            ["worker", "--connect-timeout", "1", "--manager-address", f"127.0.0.1:{port}"], env
        )
        outputs.append(out)
        assert code == 3, out
    else:
        url, _ = without_password(target.env[var])
        wrong = "wrong-" + secrets.token_hex(8)
        (tmp_path / "wrong").write_text(wrong)
        bad[var.replace("_URL", "_PASSWORD_FILE")] = str(tmp_path / "wrong")
        code, out = run(["master", "--tasks", "1", "--timeout", "10"], bad)
        assert code == 3, out
        outputs.append(out)
        closed = re.sub(r":\d+/", f":{free_port()}/", target.env[var], count=1)
        unreachable = {**env, var: closed, var.replace("_URL", "_PASSWORD_FILE"): ""}
        code, out = run(["master", "--tasks", "1"], {k: v for k, v in unreachable.items() if v})
        assert code == 3, out
        outputs.append(out)
        # a password with an unescaped '/' ends the host part early: a malformed URL
        scheme, _, rest = url.partition("://")
        userinfo, _, hostport = rest.rpartition("@")
        malformed = {**env, var: f"{scheme}://{userinfo}:{wrong}/x@{hostport}"}
        code, out = run(["worker"], malformed, timeout=30)
        outputs.append(out)
        assert code == 2, out
        if target.name == "redis":  # redis-py also takes the password from ?password=
            outputs += password_in_the_query(env, url, password, wrong)
    known.append(wrong)
    everything = "\n".join(outputs)
    assert "Traceback" not in everything, everything
    assert_clean(everything, known)


def password_in_the_query(env: dict[str, str], url: str, password: str, wrong: str) -> list[str]:
    """The outputs of commands given a Redis URL with ``?password=``: right (a status),
    wrong, and in a URL with a bad port, in text and in JSON lines."""
    base = {k: v for k, v in env.items() if k != "DISTQ_REDIS_PASSWORD_FILE"}
    parts = urlsplit(url)
    bad_port = urlunsplit(parts._replace(netloc=f"{parts.hostname}:70000"))
    outputs = []
    for query_url, expected in (
        (f"{url}?password={password}", 0),
        (f"{url}?password={wrong}", 3),
        (f"{bad_port}?db=0&password={password}", 2),
        (f"{bad_port.replace(':70000', ':x')}?password={password}", 2),
    ):
        for log_format in ("text", "json"):
            shown_env = {**base, "DISTQ_REDIS_URL": query_url, "DISTQ_LOG_FORMAT": log_format}
            code, out = run(["status"], shown_env, timeout=30)
            assert code == expected, out
            outputs.append(out)
    return outputs


# --- images ------------------------------------------------------------------------

_BAKED = re.compile(rf"^\s*(ENV|ARG)\s+[^#\n]*DISTQ_\w*{SECRET_NAMES}\b", re.I | re.M)
_COPIED = re.compile(r"^\s*(COPY|ADD)\s+[^#\n]*(\.env\b|secret|\.pem|\.key)", re.I | re.M)


def baked_secrets(dockerfile: str) -> list[str]:
    """Lines of a Dockerfile that would put a secret into the image's layers."""
    found = (*_BAKED.finditer(dockerfile), *_COPIED.finditer(dockerfile))
    return [match.group(0).strip() for match in found]


def test_the_image_check_finds_a_baked_secret() -> None:
    bad = "FROM x\nENV DISTQ_AUTHKEY=abc\nARG DISTQ_REDIS_PASSWORD\nCOPY .env /app/\n"
    assert len(baked_secrets(bad)) == 3
    good = "FROM x\nENV DISTQ_METRICS_PORT=9100\n# ENV DISTQ_AUTHKEY comes at run time\n"
    assert baked_secrets(good) == []


def test_no_dockerfile_bakes_a_secret_into_an_image() -> None:
    dockerfiles = [p for p in REPO.rglob("Dockerfile*") if ".venv" not in p.parts]
    found = {str(p.relative_to(REPO)): baked_secrets(p.read_text()) for p in dockerfiles}
    assert not {path: lines for path, lines in found.items() if lines}


@pytest.mark.parametrize("target", ["redis", "rabbitmq"], indirect=True)
def test_no_password_nor_key_in_what_the_queue_commands_print(target: Target) -> None:
    """No secret in what the queue commands print (submit, dead-letters, requeue-dead, status)
    given a broker URL that holds its password, the right one or a wrong one, in text and
    JSON lines, on Redis and RabbitMQ, with signing keys set and a dead letter to show."""
    var = "DISTQ_REDIS_URL" if target.name == "redis" else "DISTQ_AMQP_URL"
    password = unquote(urlsplit(target.env[var]).password or "")
    wrong = unquote(urlsplit(target.bad_credentials_env[var]).password or "")
    assert password and wrong
    outputs = []
    for log_format in ("text", "json"):
        env = target.process_env(DISTQ_SIGNING_KEYS=SIGNING_KEY, DISTQ_LOG_FORMAT=log_format)
        # a task signed with another key, refused by a worker: a dead letter to show
        other = {**env, "DISTQ_SIGNING_KEYS": OTHER_SIGNING_KEY}
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
            **target.bad_credentials_env,
            DISTQ_SIGNING_KEYS=SIGNING_KEY,
            DISTQ_LOG_FORMAT=log_format,
        )
        for args in (["status"], ["dead-letters"], ["requeue-dead"], ["submit", "square", "3"]):
            code, out = run(args, bad)
            assert code == 3, out
            outputs.append(out)
    everything = "\n".join(outputs)
    assert "signed with another key" in everything, everything
    assert "Traceback" not in everything, everything
    for secret in (password, wrong, SIGNING_KEY, OTHER_SIGNING_KEY):
        assert secret not in everything, (secret, everything)
