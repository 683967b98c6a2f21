"""The rendered master, worker and broker containers run for real, exactly as rendered.

For each transport: the overlay is rendered, every pod template is turned into the
`docker run` the kubelet's work amounts to (tests/k8s/pod_to_docker.py: image, command,
args, env with ConfigMap and Secret values resolved, security context, emptyDirs as
tmpfs, Secret files mounted read-only, limits) and started on a Docker network of the
test's own, where each container answers to its Service names. The master's job must
complete (results come back, each worker runs tasks, and so does one more started from
the same spec, as `kubectl scale` would), and every probe the manifests declare must pass
on those containers. Needs Docker and the images (`make images`);
DISTQ_IMAGE_TAG builds and runs another tag of the same images, so parallel checkouts
on one Docker engine do not overwrite each other's.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from k8s.pod_to_docker import DockerRun, docker_run
from k8s.render import NAMESPACE, ROOT, Doc, Tree, find, load

pytestmark = [pytest.mark.docker, pytest.mark.integration]

RESULTS_WANTED = 20
#: The broker's StatefulSet per transport (manager has none).
BROKERS = {"manager": None, "redis": "redis", "rabbitmq": "rabbitmq"}
#: Each official broker image's local stand-in, from scripts/build-local-images.sh.
STANDIN_VARIABLES = {"redis": "DISTQ_REDIS_IMAGE", "rabbitmq": "DISTQ_RABBITMQ_IMAGE"}


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def have_image(image: str) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, check=False
        ).returncode
        == 0
    )


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no Docker engine answers (make test starts one on Debian as root)")


@pytest.fixture(scope="session")
def image_map(docker_engine: None, k8s_tree: Tree) -> dict[str, str]:
    """Images to run in place of the rendered ones: only other tags and broker stand-ins.

    The distq images are built from this tree with `make images` (Docker's cache makes a
    rebuild of an unchanged tree take seconds). A broker image that is neither here nor
    pullable (no registry) is replaced by the local stand-in the tests' brokers use.
    """
    if not (ROOT / "services" / "worker" / "Dockerfile").exists():
        pytest.fail("services/worker/Dockerfile is missing: this checkout cannot build the images")
    tag = os.environ.get("DISTQ_IMAGE_TAG")
    done = subprocess.run(
        ["make", "-s", "images"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"make images failed:\n{done.stdout}{done.stderr}")
    mapping: dict[str, str] = {}
    docs = load(k8s_tree.render("redis")) + load(k8s_tree.render("rabbitmq"))
    for role in ("master", "worker"):
        image: str = container_of(find(docs, "Deployment", role))["image"]
        if tag:
            mapping[image] = f"{image.rsplit(':', 1)[0]}:{tag}"
        assert have_image(mapping.get(image, image)), f"make images did not build {image}"
    standins = (
        dict(
            line.split("=", 1)
            for line in (ROOT / ".build" / "images.env").read_text().splitlines()
            if "=" in line
        )
        if (ROOT / ".build" / "images.env").exists()
        else {}
    )
    # as tests/brokers.py reads them: a variable of the environment wins over the file
    standins.update({v: os.environ[v] for v in STANDIN_VARIABLES.values() if os.environ.get(v)})
    for broker, variable in STANDIN_VARIABLES.items():
        image = container_of(find(docs, "StatefulSet", broker))["image"]
        if have_image(image) or docker("pull", "-q", image, check=False, timeout=60):
            continue
        if variable not in standins:
            pytest.fail(
                f"{image} cannot be had and no stand-in is built: run make test (or set "
                f"{variable} to a local image)"
            )
        mapping[image] = standins[variable]
    for rendered, local in mapping.items():
        print(f"running {local} in place of {rendered}")  # shown with a failure's output
    return mapping


def container_of(workload: Doc) -> Doc:
    container: Doc = workload["spec"]["template"]["spec"]["containers"][0]
    return container


def service_names(docs: list[Doc], labels: dict[str, str]) -> list[str]:
    """The Services whose selector picks pods with ``labels``: the names they answer to,
    short and full (``redis.distq.svc``), as the cluster's DNS answers."""
    return [
        name
        for d in docs
        if d["kind"] == "Service"
        and d["spec"].get("selector")
        and d["spec"]["selector"].items() <= labels.items()
        for name in (d["metadata"]["name"], f"{d['metadata']['name']}.{NAMESPACE}.svc")
    ]


class Stack:
    """Containers started on one network of the test's own; all removed at the end."""

    def __init__(self, docs: list[Doc], workdir: Path, image_map: dict[str, str]) -> None:
        self.docs = docs
        self.workdir = workdir
        self.image_map = image_map
        self.network = f"distq-k8s-test-{secrets.token_hex(4)}"
        self.started: list[DockerRun] = []
        docker("network", "create", self.network)

    def start(self, kind: str, workload_name: str, name: str) -> DockerRun:
        workload = find(self.docs, kind, workload_name)
        template = workload["spec"]["template"]
        claims = [c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])]
        run = docker_run(
            name,
            template["spec"],
            self.docs,
            self.workdir,
            network=self.network,
            aliases=service_names(self.docs, template["metadata"]["labels"]),
            image_map=self.image_map,
            claims=claims,
        )
        self.started.append(run)
        docker(*run.argv()[1:])
        return run

    def logs(self) -> str:
        out = []
        for run in self.started:
            tail = subprocess.run(
                ["docker", "logs", "--tail", "25", run.name],
                capture_output=True,
                text=True,
                check=False,
            )
            out.append(f"--- {run.name} ---\n{tail.stdout}{tail.stderr}")
        return "\n".join(out)

    def close(self) -> None:
        for run in self.started:
            docker("rm", "--force", "--volumes", run.name, check=False)
        docker("network", "rm", self.network, check=False)


def host_port(run: DockerRun, port: int | str) -> int:
    state = docker("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", run.name)
    running, code = state.split()
    if running != "true":
        raise AssertionError(f"{run.name} is not running: it exited with code {code}")
    number = run.ports[port] if isinstance(port, str) else port
    out = docker("port", run.name, f"{number}/tcp")
    return int(out.splitlines()[0].rsplit(":", 1)[1])


def container_ip(run: DockerRun) -> str:
    network = run.options[run.options.index("--network") + 1]
    template = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return docker("inspect", "--format", template, run.name).strip()


def http_get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def probe_passes(run: DockerRun, probe: Doc) -> tuple[bool, str]:
    """Runs one probe as the kubelet would: httpGet, tcpSocket or exec."""
    try:
        if "httpGet" in probe:
            status, body = http_get(
                host_port(run, probe["httpGet"]["port"]), probe["httpGet"]["path"]
            )
            return 200 <= status < 400, f"{status} {body[:200]}"
        if "tcpSocket" in probe:
            # To the container's own address on the test's network, as the kubelet
            # connects to the pod's: a published port would be accepted by Docker's proxy
            # even while nothing listens behind it.
            port = probe["tcpSocket"]["port"]
            number = run.ports[port] if isinstance(port, str) else port
            with socket.create_connection((container_ip(run), number), timeout=5):
                return True, "connected"
        if "exec" in probe:
            done = subprocess.run(
                ["docker", "exec", run.name, *probe["exec"]["command"]],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            return done.returncode == 0, f"exit {done.returncode} {done.stderr.strip()[:200]}"
    except (OSError, http.client.HTTPException, subprocess.TimeoutExpired, AssertionError) as exc:
        return False, str(exc)
    raise AssertionError(f"probe not translated: {probe}")


def wait_for(what: str, check: Callable[[], tuple[bool, str]], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            ok, last = check()
        except (OSError, http.client.HTTPException) as exc:
            # Docker's proxy accepts on a published port before the process listens.
            ok, last = False, repr(exc)
        if ok:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s; last: {last}")


def metric_sum(port: int, family: str, **labels: str) -> float:
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    total = 0.0
    for line in body.splitlines():
        match = re.match(rf"^{family}(?:{{(.*)}})? ([0-9.e+-]+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def worker_ran_tasks(port: int) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        n = metric_sum(port, "distq_worker_tasks_total", outcome="ok")
        return n > 0, f"{n:g} tasks"

    return check


def sampled(port: int, state: str) -> Callable[[], tuple[bool, str]]:
    """Whether the metrics on ``port`` have a ``distq_queue_depth`` sample of ``state``."""
    sample = re.compile(rf'^distq_queue_depth{{[^}}]*state="{state}"', re.M)

    def check() -> tuple[bool, str]:
        return bool(sample.search(http_get(port, "/metrics")[1])), "no sample"

    return check


@pytest.fixture
def stack_for(
    k8s_tree: Tree, image_map: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[str], tuple[Stack, list[Doc]]]]:
    stacks: list[Stack] = []

    def make(transport: str) -> tuple[Stack, list[Doc]]:
        docs = load(k8s_tree.render(transport))
        stack = Stack(docs, tmp_path, image_map)
        stacks.append(stack)
        return stack, docs

    yield make
    for stack in stacks:
        stack.close()


@pytest.mark.parametrize("transport", list(BROKERS))
def test_rendered_containers_complete_a_job_and_answer_their_probes(
    stack_for: Callable[[str], tuple[Stack, list[Doc]]], transport: str
) -> None:
    stack, docs = stack_for(transport)
    try:
        runs: list[tuple[DockerRun, Doc]] = []
        broker = BROKERS[transport]
        if broker is not None:
            run = stack.start("StatefulSet", broker, f"{stack.network}-{broker}-0")
            spec = container_of(find(docs, "StatefulSet", broker))
            wait_for(f"{broker} readiness", lambda: probe_passes(run, spec["readinessProbe"]), 120)
            runs.append((run, spec))

        master = stack.start("Deployment", "master", f"{stack.network}-master")
        runs.append((master, container_of(find(docs, "Deployment", "master"))))
        worker_deployment = find(docs, "Deployment", "worker")
        workers = [
            stack.start("Deployment", "worker", f"{stack.network}-worker-{i}")
            for i in range(worker_deployment["spec"]["replicas"])
        ]
        assert len(workers) >= 2, "the worker Deployment should start with several replicas"
        runs += [(w, container_of(worker_deployment)) for w in workers]

        # Results come back to the master, and every worker replica ran tasks: a replica
        # needs nothing but the shared settings to join.
        master_metrics = host_port(master, "metrics")
        wait_for(
            "master's results",
            lambda: (
                (n := metric_sum(master_metrics, "distq_master_results_total", status="ok"))
                >= RESULTS_WANTED,
                f"{n:g} results",
            ),
            120,
        )
        # The queue as the broker sees it, every state: on RabbitMQ in_flight comes from
        # the management API, which the overlay names without a password (it had none).
        for state in ("ready", "in_flight", "dead"):
            wait_for(f"the master's {state} sample", sampled(master_metrics, state), 30)
        for w in workers:
            wait_for(f"{w.name} ran tasks", worker_ran_tasks(host_port(w, "metrics")), 60)
        # `kubectl scale deployment worker --replicas=N+1`: one more pod from the same spec.
        extra = stack.start("Deployment", "worker", f"{stack.network}-worker-{len(workers)}")
        runs.append((extra, container_of(worker_deployment)))
        wait_for(f"{extra.name} ran tasks", worker_ran_tasks(host_port(extra, "metrics")), 60)
        assert metric_sum(master_metrics, "distq_master_results_total", status="error") == 0

        for run, spec in runs:
            for kind in ("readinessProbe", "livenessProbe"):
                ok, detail = probe_passes(run, spec[kind])
                assert ok, f"{run.name} {kind}: {detail}"
        # distq's probe paths are real endpoints (a JSON status), not a catch-all page.
        for run in [master, *workers, extra]:
            port = host_port(run, "metrics")
            for path, status in (("/readyz", "ready"), ("/healthz", "ok")):
                answer, body = http_get(port, path)
                assert (answer, json.loads(body)["status"]) == (200, status), (run.name, body)
            assert http_get(port, "/no-such-path")[0] == 404

        # Warm shutdown within the pod's grace period, exit 0.
        grace = worker_deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        started = time.monotonic()
        docker("stop", "--time", str(grace), workers[0].name, timeout=grace + 30)
        assert time.monotonic() - started < grace
        code = docker("inspect", "--format", "{{.State.ExitCode}}", workers[0].name).strip()
        assert code == "0", f"the worker exited {code} on SIGTERM"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from None
