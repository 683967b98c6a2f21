"""`make up` on every transport, used the way an operator would, against real containers.

For each transport, in order: a batch job with every result correct; no secret in any
container's `docker inspect`; three workers that each process tasks (their own counters
in Prometheus); every Prometheus target up; a queue-depth sample of each state; the
master of `make job` scraped; a worker SIGKILLed mid-job loses nothing; `docker stop` of
a busy worker is a warm shutdown (exit 0 in seconds); a worker cut off its network past
its lease has its tasks run elsewhere and rejoins; `make down` leaves nothing of the project behind.

Collected by a module per transport (test_stack_manager.py, test_stack_redis.py,
test_stack_rabbitmq.py), each naming its TRANSPORT: `make test` (pytest-xdist, --dist
loadscope) keeps a module's tests in one process, and one module for the three stacks
made them one serial chain of about 800 s, the run's last to end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from distq.signing import key_id
from e2e.e2e_stack import Stack, names, wait_for

# The first test of each transport also waits for `make up`, which on a fresh machine
# builds the stand-in and distq images first.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

WORKER_OK = 'sum by (instance) (distq_worker_tasks_total{outcome="ok"})'


def test_batch_job_returns_every_result_correct(stack: Stack) -> None:
    result = stack.make("job", "TASKS=200", timeout=240)

    assert result.returncode == 0, result.stdout
    assert "all 200 results in and correct" in result.stdout


def test_no_container_shows_a_secret_to_docker_inspect(stack: Stack) -> None:
    """Secrets reach the containers as files: every secret make wrote to the env file is
    in none of the stack's `docker inspect` (environment, command, healthcheck, labels).
    The stack passed them in the environment, most inside URLs, and Redis's on its
    command line."""
    settings = dict(
        line.split("=", 1) for line in stack.env_file.read_text().splitlines() if "=" in line
    )
    secrets = {
        name: settings[name]
        for name in ("DISTQ_AUTHKEY", "DISTQ_SIGNING_KEYS", "REDIS_PASSWORD", "RABBITMQ_PASSWORD")
    }
    assert all(len(value) >= 16 for value in secrets.values()), "make up wrote no secrets"
    ids = [c.name for c in stack.containers()]
    assert {c.service for c in stack.containers()} >= {"master", "worker", "prometheus"}
    shown = subprocess.run(
        ["docker", "inspect", *ids], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert [name for name, value in secrets.items() if value in shown] == []
    # the files they came from: in a directory only its owner may enter
    folder = stack.env_file.parent / (stack.env_file.name + ".secrets")
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "authkey").read_text() == secrets["DISTQ_AUTHKEY"]


def test_three_workers_each_process_tasks(stack: Stack) -> None:
    result = stack.make("scale", "WORKERS=3", timeout=240)
    assert result.returncode == 0, result.stdout
    workers = stack.running("worker")
    assert len(workers) == 3, names(workers)

    def every_worker_counted() -> dict[str, float] | None:
        counts = stack.query(WORKER_OK)
        mine = {w.name: counts.get(f"{w.ip}:9100", 0.0) for w in workers}
        return mine if all(value > 0 for value in mine.values()) else None

    # Prometheus finds new replicas by DNS and scrapes every few seconds.
    wait_for("each worker's distq_worker_tasks_total above 0", every_worker_counted, 90)


def test_prometheus_reports_every_target_up(stack: Stack) -> None:
    expected = {f"{c.ip}:9100" for c in stack.running("master") + stack.running("worker")}
    assert len(expected) == 4  # the master and three workers
    # RabbitMQ's own exporter (deploy/prometheus/prometheus.yml, job rabbitmq)
    expected |= {f"{c.ip}:15692" for c in stack.running("rabbitmq")}

    def all_up() -> list[dict[str, object]] | None:
        targets = stack.targets()
        seen = {t["labels"]["instance"] for t in targets}
        healthy = all(t["health"] == "up" for t in targets)
        return targets if seen == expected and healthy else None

    wait_for(f"Prometheus: targets {sorted(expected)}, every one up", all_up, 60)


def test_the_queue_depth_has_every_state_on_every_transport(stack: Stack) -> None:
    """The compose stack set no DISTQ_RABBITMQ_MANAGEMENT_URL: on RabbitMQ the master
    exported no in_flight sample, and the dashboard's two "In flight" panels were empty."""
    for state in ("ready", "in_flight", "dead"):
        expr = f'count(distq_queue_depth{{state="{state}"}})'

        def sampled(expr: str = expr) -> dict[str, float] | None:
            return stack.query(expr) or None

        wait_for(f"Prometheus: a {state} sample", sampled, 60)


def test_prometheus_scrapes_the_master_of_a_make_job(stack: Stack) -> None:
    """Prometheus finds masters by the service's name (dns_sd_configs `master`). The
    one-off container of `make job` had that name only on the manager transport (where
    it stands in for the stack's master): on Redis and RabbitMQ the job's master was never
    scraped, so its submissions, results and round trips were in no panel."""
    job = stack.start_job(tasks=200, task_delay=0.5, timeout=150)
    try:
        job.wait_lines(r"^Get result", count=5, timeout=120)

        def job_master_ip() -> str | None:
            ids = subprocess.run(
                [
                    "docker",
                    "ps",
                    "-q",
                    "--filter",
                    f"label=com.docker.compose.project={stack.project}",
                    "--filter",
                    "label=com.docker.compose.oneoff=True",
                    "--filter",
                    "label=com.docker.compose.service=master",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.split()
            if len(ids) != 1:
                return None
            out = subprocess.run(
                [
                    "docker",
                    "inspect",
                    "--format",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    ids[0],
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.strip()
            return out or None

        ip = wait_for("the job's master container", job_master_ip, 30)

        def scraped() -> list[dict[str, object]] | None:
            found = [
                t
                for t in stack.targets()
                if t["labels"]["instance"] == f"{ip}:9100" and t["health"] == "up"
            ]
            return found or None

        targets = wait_for(f"Prometheus: the job's master {ip}:9100 up", scraped, 60)
        assert {t["labels"]["job"] for t in targets} == {"distq-master"}  # type: ignore[index]
    finally:
        code, output = job.finish(timeout=200)
    assert code == 0, output[-3000:]


def test_sigkill_of_a_worker_mid_job_loses_nothing(stack: Stack) -> None:
    victim = stack.running("worker")[0]
    job = stack.start_job(tasks=300, task_delay=0.1, timeout=150)
    job.wait_lines(r"^Get result", count=30, timeout=120)

    subprocess.run(["docker", "kill", victim.name], check=True, capture_output=True, timeout=30)

    code, output = job.finish(timeout=200)
    assert code == 0, output[-3000:]
    assert "all 300 results in and correct" in output
    killed = next(c for c in stack.containers("worker") if c.name == victim.name)
    assert (killed.status, killed.exit_code) == ("exited", 137)


def test_docker_stop_of_a_busy_worker_is_a_warm_shutdown(stack: Stack) -> None:
    victim = stack.running("worker")[0]
    job = stack.start_job(tasks=40, task_delay=0.5, timeout=150)
    job.wait_lines(r"^Get result", count=10, timeout=120)

    started = time.monotonic()
    subprocess.run(["docker", "stop", victim.name], check=True, capture_output=True, timeout=60)
    took = time.monotonic() - started

    stopped = next(c for c in stack.containers("worker") if c.name == victim.name)
    assert (stopped.status, stopped.exit_code) == ("exited", 0)
    assert took < 5, f"docker stop took {took:.1f} s"
    log = subprocess.run(
        ["docker", "logs", victim.name], capture_output=True, text=True, timeout=30
    ).stdout
    assert "SIGTERM: finishing the tasks that run" in log
    code, output = job.finish(timeout=200)
    assert code == 0, output[-3000:]
    assert "all 40 results in and correct" in output


PARTITION_SECONDS = 12.0  # past the stack's lease (DISTQ_LEASE_SECONDS, 5 s) twice


def test_a_worker_cut_off_its_network_has_its_tasks_run_elsewhere_and_rejoins(
    stack: Stack,
) -> None:
    """`docker network disconnect` of a busy worker past its lease, then `connect`: the
    job completes with every result once, and the worker carries on.

    ``make test`` runs it on Redis (tests/faults cuts a worker off on every transport
    through a proxy); ``make faults`` runs it on every transport.
    """
    if stack.transport != "redis" and os.environ.get("DISTQ_FAULTS_FULL") != "1":
        pytest.skip("on this transport in make faults (DISTQ_FAULTS_FULL=1) only")
    victim = stack.running("worker")[0]
    info = subprocess.run(
        ["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", victim.name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    networks = sorted(json.loads(info))
    job = stack.start_job(tasks=200, task_delay=0.1, timeout=240)
    job.wait_lines(r"^Get result", count=20, timeout=120)
    for network in networks:
        docker("network", "disconnect", network, victim.name)
    time.sleep(PARTITION_SECONDS)
    for network in networks:
        docker("network", "connect", "--alias", "worker", network, victim.name)

    code, output = job.finish(timeout=300)
    assert code == 0, output[-3000:]
    assert "all 200 results in and correct" in output
    assert victim.name in names(stack.running("worker"))  # it rode the partition out
    log = subprocess.run(
        ["docker", "logs", victim.name], capture_output=True, text=True, timeout=30
    )
    text = log.stdout + log.stderr
    assert "Traceback" not in text, text[-3000:]


def docker(*args: str) -> None:
    subprocess.run(["docker", *args], check=True, capture_output=True, timeout=60)


def test_a_signing_key_changed_through_make_up_has_no_task_refused_for_it(
    stack: Stack,
) -> None:
    """A new key in the env file and `make up`: the master is recreated before the
    workers (they depend on it), and workers still holding the old key refused its
    first tasks ("signed with another key"), which its job then waited for in vain
    (new16). The workers stop first now: no letter names the new key."""
    text = stack.env_file.read_text()
    key = secrets.token_hex(16)
    changed = re.sub(r"(?m)^DISTQ_SIGNING_KEYS=.*$", f"DISTQ_SIGNING_KEYS={key}", text)
    assert changed != text
    stack.env_file.write_text(changed)
    result = stack.make("up", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    # the new master's tasks, 10 a second, meet the workers: NEW_MASTER_RESULTS come back
    waited = stack.compose(
        "exec",
        "-T",
        "master",
        "python",
        "-c",
        RESULTS_WAIT,
        str(NEW_MASTER_RESULTS),
        "60",
        timeout=120,
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    letters = stack.compose("exec", "-T", "master", "distq", "dead-letters", "--limit", "5000")
    assert letters.returncode == 0, letters.stdout + letters.stderr
    assert f"key id {key_id(key.encode())!r}" not in letters.stdout, letters.stdout[-3000:]
    results = float(waited.stdout)
    assert results >= NEW_MASTER_RESULTS, f"the new master had {results:g} results in 60 s"
    assert "stopping the workers first" in result.stdout, result.stdout[-3000:]


# Results the new master of the signing-key test has before its dead letters are read:
# its tasks went through the workers (each takes two at a time), where one still holding
# the old key would have refused some. A fixed 6 s wait stood for them.
NEW_MASTER_RESULTS = 30

# Run in the master's container (one `exec`, its own /metrics: Prometheus would add its
# scrape interval): waits until distq_master_results_total, every status, reaches
# argv[1] or argv[2] seconds have passed, and prints it.
RESULTS_WAIT = """
import sys, time, urllib.request
wanted, deadline = float(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while True:
    text = urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=10).read().decode()
    lines = [x for x in text.splitlines() if x.startswith("distq_master_results_total{")]
    got = sum(float(x.rsplit(" ", 1)[1]) for x in lines)
    if got >= wanted or time.monotonic() > deadline:
        print(got)
        break
    time.sleep(0.2)
"""


def test_the_readmes_commands_into_the_stack_answer(stack: Stack) -> None:
    """`scripts/compose.sh exec` as the README shows it: its Redis example answered
    "NOAUTH Authentication required." (exit 0) on the stack's Redis, which has a
    password (new16)."""
    commands = [["exec", "-T", "master", "distq", "status"]]
    if stack.transport == "redis":
        readme = (REPO / "README.md").read_text()
        line = next(x for x in readme.splitlines() if "REDISCLI_AUTH" in x and "LLEN" in x)
        commands.append(shlex.split(line)[1:])  # after scripts/compose.sh
    for args in commands:
        done = stack.compose(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "NOAUTH" not in done.stdout + done.stderr, done.stdout + done.stderr
        if args[2] == "redis":
            assert done.stdout.strip().isdigit(), done.stdout
        else:
            assert "ready" in done.stdout, done.stdout


def test_an_interrupted_make_job_leaves_no_job_running(stack: Stack) -> None:
    # Ctrl-C (SIGINT to make's process group) of a job run without a terminal (-T):
    # Compose v2's `run` returned and left the job's container running: the job went on
    # unseen, and on the manager transport beside the master make restarted, under its
    # name on the network (the workers stayed with the job's; the stack's got no result).
    job = stack.start_job(tasks=2000, task_delay=0.5, timeout=300, new_session=True)
    job.wait_lines(r"^Get result", 3, timeout=180)

    os.killpg(job.process.pid, signal.SIGINT)
    job.finish(timeout=120)

    wait_for("no one-off container left running", lambda: not stack.running_oneoffs(), 30)
    assert names(stack.running("master")), stack.logs()


# DistqTargetDown's `for:` in the stack's Prometheus while the alert test waits for it:
# waiting out its 1m took that test 85 s on each transport, the module's longest wait;
# promtool test rules (deploy/prometheus/alerts_test.yml) checks the 1m itself.
TARGET_DOWN_FOR = "10s"


def rules_firing_sooner(folder: Path) -> Path:
    """``folder`` made a copy of deploy/prometheus whose alerts.yml differs from the
    stack's in DistqTargetDown's `for:` alone (TARGET_DOWN_FOR), checked here."""
    source = REPO / "deploy" / "prometheus"
    text = (source / "alerts.yml").read_text()
    rule = re.compile(r"(- alert: DistqTargetDown\n(?:(?!\s+- alert:).*\n)*?\s+for: )1m\n")
    changed, count = rule.subn(rf"\g<1>{TARGET_DOWN_FOR}\n", text)
    assert count == 1, "no `for: 1m` in DistqTargetDown of deploy/prometheus/alerts.yml"

    def by_alert(rules_text: str) -> dict[str, dict[str, object]]:
        groups = yaml.safe_load(rules_text)["groups"]
        return {rule["alert"]: rule for group in groups for rule in group["rules"]}

    before, after = by_alert(text), by_alert(changed)
    fors = {name: (before[name].pop("for"), after[name].pop("for")) for name in before}
    assert before == after, "the shortened rules differ in more than `for:`"
    assert {name for name, (old, new) in fors.items() if old != new} == {"DistqTargetDown"}
    assert fors["DistqTargetDown"] == ("1m", TARGET_DOWN_FOR)

    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # Prometheus runs as a user of its own in the container
    shutil.copy(source / "prometheus.yml", folder / "prometheus.yml")
    (folder / "alerts.yml").write_text(changed)
    for file in folder.iterdir():
        file.chmod(0o644)
    return folder


def test_prometheus_alerts_when_every_worker_has_exited(stack: Stack, tmp_path: Path) -> None:
    """Compose drops an exited container from its DNS: Prometheus loses the worker's
    target instead of seeing it down, and DistqTargetDown (up == 0) never fired for it.

    The stack's Prometheus runs the stack's rules with DistqTargetDown's `for:`
    shortened (rules_firing_sooner) from here on: no test after this one reads
    Prometheus (the image tags, `make down`), and one that does must first call
    ``stack.recreate_prometheus()``, which made it as `make up` had, for 5-10 s.

    Prometheus, its rules and compose's DNS are the same whatever the transport: the
    manager's stack shows it (35-40 s on each)."""
    if stack.transport != "manager":
        pytest.skip("the alert is Prometheus' and compose's: one stack shows it")
    workers = stack.containers("worker")
    running = {f"{c.ip}:9100" for c in stack.running("worker")}
    # the job's own alert (absent(), no instance label): a target seen down (up == 0) for
    # the few seconds before DNS drops it would fire the rule's first line for TARGET_DOWN_FOR
    firing = (
        'ALERTS{alertname="DistqTargetDown", alertstate="firing", job="distq-worker", instance=""}'
    )
    stack.recreate_prometheus(rules_firing_sooner(tmp_path / "prometheus"))
    try:

        def scraped_and_quiet() -> bool:
            up = stack.query('up{job="distq-worker"} == 1')
            return set(up) == running and not stack.query(firing)

        # before: every running worker scraped, the alert not firing
        wait_for(f"Prometheus: workers {sorted(running)} up, no alert", scraped_and_quiet, 60)
        for worker in workers:
            docker("stop", worker.name)
        # `for:` after the target is gone (DNS refreshed every 5 s, rules every 5 s)
        wait_for(f"Prometheus: {firing}", lambda: stack.query(firing), 90)
    finally:
        for worker in workers:
            docker("start", worker.name)
    wait_for("the workers running again", lambda: len(stack.running("worker")) == len(workers), 60)


def test_the_stack_runs_images_tagged_by_its_project_not_the_shared_ones(stack: Stack) -> None:
    """`make up` without DISTQ_IMAGE_TAG tagged its images distq-*:0.1.0 and :latest,
    which every checkout on the machine shares: two checkouts overwrote each other's."""
    for role in ("master", "worker"):
        running = {c.image for c in stack.containers(role)}
        assert running == {f"distq-{role}:{stack.project}"}, running
    # What `make up` itself built and tagged, not the machine's shared tags: another test
    # (tests/k8s' `make images`) may make those while this stack runs.
    built = re.findall(r"building (distq-\w+:\S+)", stack.up_output)
    assert sorted(built) == [f"distq-{r}:{stack.project}" for r in ("master", "worker")], (
        stack.up_output
    )


def test_make_down_leaves_nothing_behind(stack: Stack) -> None:
    assert stack.leftovers()  # the stack is there to be removed

    result = stack.make("down", timeout=180)

    assert result.returncode == 0, result.stdout
    assert stack.leftovers() == {}
