"""What the manifests promise, read from the rendered output of every overlay.

Pod hardening, probes, resources and scrape annotations on every distq pod; settings in
the ConfigMap and every secret in a file; NetworkPolicies that admit only who must get
in; the autoscalers pointing at the ready-task count of the right queue; scaling the
worker Deployment needing nothing but its replica count.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from k8s.render import (
    COMPONENTS,
    K8S,
    NAMESPACE,
    OVERLAYS,
    ROOT,
    SECRET_FILES,
    TOOLS,
    CheckFailed,
    Doc,
    Tree,
    find,
    find_prefixed,
    fits,
    load,
)

DISTQ_UID = 10001
METRICS_PORT = 9100
BROKER_PORTS = {"redis": "redis", "rabbitmq": "amqp"}
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "distq.json"
SECRET_SETTINGS = {
    "DISTQ_AUTHKEY",
    "DISTQ_SIGNING_KEY",
    "DISTQ_SIGNING_KEYS",
    "DISTQ_REDIS_PASSWORD",
    "DISTQ_AMQP_PASSWORD",
}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(k8s_tree: Tree, overlay: str) -> list[Doc]:
    return load(k8s_tree.render(overlay))


def pod_of(workload: Doc) -> Doc:
    pod: Doc = workload["spec"]["template"]["spec"]
    return pod


def config(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = find_prefixed(docs, "ConfigMap", "distq-config")["data"]
    return data


def secret_data(docs: list[Doc]) -> dict[str, str]:
    data = find_prefixed(docs, "Secret", "distq-secrets")["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def port_number(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    number: int = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
    return number


@pytest.mark.parametrize("role", ["master", "worker"])
def test_distq_pods_are_hardened_probed_limited_and_scraped(docs: list[Doc], role: str) -> None:
    deployment = find(docs, "Deployment", role)
    pod = pod_of(deployment)
    (container,) = pod["containers"]
    assert container["image"].split(":")[0] == f"distq-{role}"

    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": DISTQ_UID,
        "runAsGroup": DISTQ_UID,
        "fsGroup": DISTQ_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    assert "emptyDir" in volumes[writable[0]["name"]]

    assert pod["automountServiceAccountToken"] is False
    account = find(docs, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False

    assert config(docs)["DISTQ_METRICS_PORT"] == str(METRICS_PORT)
    for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[kind]["httpGet"]
        assert get["path"] == path
        assert port_number(container, get["port"]) == METRICS_PORT

    for need in ("requests", "limits"):
        assert set(container["resources"][need]) == {"cpu", "memory"}

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }


def test_worker_grace_period_outlasts_its_warm_shutdown(docs: list[Doc]) -> None:
    drain = float(config(docs)["DISTQ_DRAIN_SECONDS"])
    grace = pod_of(find(docs, "Deployment", "worker"))["terminationGracePeriodSeconds"]
    # The drain, then handing back what was not started and closing the connections.
    assert grace >= drain + 10


def test_scaling_workers_needs_only_the_replica_count(docs: list[Doc]) -> None:
    worker = find(docs, "Deployment", "worker")
    pod = pod_of(worker)
    (container,) = pod["containers"]
    assert worker["spec"]["replicas"] >= 2
    assert "hostNetwork" not in pod and "nodeName" not in pod and "affinity" not in pod
    assert all("hostPort" not in p for p in container["ports"])
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    # No per-replica identity in the settings: each pod names itself.
    assert "DISTQ_WORKER_ID" not in config(docs)
    assert all(e["name"] != "DISTQ_WORKER_ID" for e in container.get("env", []))


def test_secrets_come_from_files_never_from_the_environment_or_a_url(
    docs: list[Doc], k8s_tree: Tree
) -> None:
    settings = config(docs)
    assert not SECRET_SETTINGS & set(settings), "a secret itself in the ConfigMap"
    for key, value in settings.items():
        if "://" in value:
            assert urlsplit(value).password is None, f"{key} holds a password"
    secret = secret_data(docs)
    for role in ("master", "worker"):
        pod = pod_of(find(docs, "Deployment", role))
        (container,) = pod["containers"]
        assert all("secretRef" not in s for s in container.get("envFrom", []))
        assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in container.get("env", []))
        mounts = {
            m["mountPath"]: m["name"]
            for m in container["volumeMounts"]
            if "secret" in {v["name"]: v for v in pod["volumes"]}[m["name"]]
        }
        for key, path in settings.items():
            if key.endswith("_FILE"):
                folder, _, name = path.rpartition("/")
                assert folder in mounts, f"{key}={path} is not in a mounted Secret"
                assert name in secret, f"{key}={path}: the Secret has no key {name!r}"
    # The values are the ones the user's files hold, byte for byte (here: the test's random
    # ones, each with the trailing newline README's `print` writes).
    for name, value in secret.items():
        if name in k8s_tree.secrets:
            assert value == k8s_tree.secrets[name]


def test_every_setting_a_transport_needs_is_there(docs: list[Doc], overlay: str) -> None:
    settings = config(docs)
    assert settings["DISTQ_TRANSPORT"] == overlay
    secret = secret_data(docs)
    if overlay == "manager":
        assert settings["DISTQ_MANAGER_ADDRESS"] == "master:9000"
        master = find(docs, "Deployment", "master")
        (container,) = pod_of(master)["containers"]
        assert {"name": "DISTQ_MANAGER_ADDRESS", "value": "0.0.0.0:9000"} in container["env"]
        service = find(docs, "Service", "master")
        port = next(p for p in service["spec"]["ports"] if p["port"] == 9000)
        assert port_number(container, port["targetPort"]) == 9000
        assert "authkey" in secret
    elif overlay == "redis":
        assert urlsplit(settings["DISTQ_REDIS_URL"]).hostname == f"redis.{NAMESPACE}.svc"
        assert "redis-password" in secret
    else:
        url = urlsplit(settings["DISTQ_AMQP_URL"])
        assert url.hostname == f"rabbitmq.{NAMESPACE}.svc"
        assert url.username == secret["amqp-username"]
        assert "amqp-password" in secret


def test_brokers_are_statefulsets_with_storage_probes_and_a_service(
    docs: list[Doc], overlay: str
) -> None:
    if overlay == "manager":
        assert not [d for d in docs if d["kind"] == "StatefulSet"]
        return
    broker = find(docs, "StatefulSet", overlay)
    pod = pod_of(broker)
    (container,) = pod["containers"]
    assert broker["spec"]["volumeClaimTemplates"]
    assert {"readinessProbe", "livenessProbe"} <= set(container)
    # the kernel accepts a frozen process's connections: a tcpSocket liveness never fails
    assert "tcpSocket" not in container["livenessProbe"], container["livenessProbe"]
    assert container["livenessProbe"].get("timeoutSeconds", 1) >= 3
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = find(docs, "Service", broker["spec"]["serviceName"])
    assert service["metadata"]["name"] == overlay
    assert service["spec"]["selector"].items() <= pod_labels(broker).items()


def test_brokers_read_their_passwords_from_secret_files_without_the_newline(
    docs: list[Doc], overlay: str
) -> None:
    """The README's secret files end with a newline, and so do the Secret's values.

    distq's ``*_FILE`` settings drop it; a broker must too, so it reads each file through
    ``"$(cat FILE)"`` in its command. Through the environment (a secretKeyRef) RabbitMQ
    kept the newline in the user's password and refused distq.
    """
    if overlay == "manager":
        return
    pod = pod_of(find(docs, "StatefulSet", overlay))
    (container,) = pod["containers"]
    assert all("secretRef" not in s for s in container.get("envFrom", []))
    assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in container.get("env", []))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = {
        f"{mount['mountPath']}/{item['path']}"
        for mount in container["volumeMounts"]
        if "secret" in volumes.get(mount["name"], {})
        for item in volumes[mount["name"]]["secret"]["items"]
    }
    read = set(re.findall(r'"\$\(cat (/[^)"]+)\)"', " ".join(container.get("command", []))))
    assert read, "the broker's command reads no Secret file"
    assert read <= mounted, f"read but not mounted from the Secret: {sorted(read - mounted)}"
    # A probe runs every few seconds: a secret in its program's arguments (redis-cli -a)
    # shows in `ps` on the node; in a variable of the probe's shell (REDISCLI_AUTH) it does not
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        command = " ".join(container.get(kind, {}).get("exec", {}).get("command", []))
        for at in re.finditer(r'"\$\(cat /[^)"]+\)"', command):
            assert re.search(r"\b[A-Z_]+=$", command[: at.start()]), f"{kind}: {command}"


def memory_limit(container: Doc) -> int:
    """The container's ``limits.memory`` in bytes."""
    limit = container["resources"]["limits"]["memory"]
    units = {"Gi": 1 << 30, "Mi": 1 << 20}
    number, unit = re.fullmatch(r"(\d+)(Gi|Mi)", limit).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


def test_rabbitmq_sizes_its_memory_alarm_from_its_limit(docs: list[Doc], overlay: str) -> None:
    """RabbitMQ takes its memory from the node, not the pod's limit: its alarm (0.4 of
    it) lay above the 1 GiB limit, and a backlog got it OOM-killed, never flow-controlled."""
    if overlay != "rabbitmq":
        return
    (container,) = pod_of(find(docs, "StatefulSet", "rabbitmq"))["containers"]
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    args = env.get("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "").split()
    assert args[:2] == ["-rabbit", "total_memory_available_override_value"], args
    assert int(args[2]) == memory_limit(container), args


def test_redis_refuses_writes_when_full_before_its_limit_kills_it(
    docs: list[Doc], overlay: str
) -> None:
    """Without maxmemory a backlog grew Redis to its 512Mi limit: OOM-killed, restarted,
    its AOF replayed, killed again (6 times in 40 s), where a full Redis with noeviction
    refuses the submits, which distq waits out."""
    if overlay != "redis":
        return
    (container,) = pod_of(find(docs, "StatefulSet", "redis"))["containers"]
    command = " ".join(container["command"])
    found = re.search(r"--maxmemory (\d+)mb --maxmemory-policy (\S+)", command)
    assert found, command
    assert found[2] == "noeviction"
    limit = memory_limit(container)
    assert 0.5 * limit <= int(found[1]) << 20 <= 0.8 * limit, (found[0], limit)


def pod_labels(workload: Doc) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_network_policies_admit_only_who_must_get_in(docs: list[Doc], overlay: str) -> None:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for workload in workloads:  # every pod is covered by a policy
        labels = pod_labels(workload)
        assert any(selects(p["spec"]["podSelector"]["matchLabels"], labels) for p in policies)
    distq = {"app.kubernetes.io/name": "distq"}
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    worker_pods = pod_labels(find(docs, "Deployment", "worker"))
    for role in ("master", "worker"):
        rules = find(docs, "NetworkPolicy", role)["spec"]["ingress"]
        scrape = [r for r in rules if r["ports"] == [{"port": "metrics", "protocol": "TCP"}]]
        assert len(scrape) == 1
        assert scrape[0]["from"][0]["podSelector"]["matchLabels"] == prometheus
        others = [r for r in rules if r not in scrape]
        if role == "master" and overlay == "manager":
            (manager,) = others
            assert manager["ports"] == [{"port": "manager", "protocol": "TCP"}]
            (peer,) = manager["from"]
            assert set(peer) == {"podSelector"}  # this namespace only
            assert selects(peer["podSelector"]["matchLabels"], worker_pods)
        else:
            assert others == []
    if overlay != "manager":
        rules = find(docs, "NetworkPolicy", overlay)["spec"]["ingress"]
        broker_port = {"port": BROKER_PORTS[overlay], "protocol": "TCP"}
        admitted = [r for r in rules if broker_port in r["ports"]]
        assert [r["from"] for r in admitted] == [[{"podSelector": {"matchLabels": distq}}]]


def test_every_namespaced_object_lands_in_the_namespace(k8s_tree: Tree) -> None:
    for overlay in OVERLAYS:
        for component in filter(lambda c: fits(overlay, c), (None, *COMPONENTS)):
            for d in load(k8s_tree.render(overlay, component)):
                if d["kind"] != "Namespace":
                    assert d["metadata"].get("namespace") == NAMESPACE, (overlay, component, d)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_keda_scales_workers_on_the_ready_tasks_of_the_queue(k8s_tree: Tree, broker: str) -> None:
    docs = load(k8s_tree.render(broker, f"keda-{broker}"))
    scaled = find(docs, "ScaledObject", "worker")
    assert find(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    # cooldownPeriod is KEDA's wait before scaling to 0 only: from N to minReplicaCount
    # (1) the HPA's scale-down window is the cool-down the README gives (5 minutes)
    scale_down = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert scale_down["scaleDown"]["stabilizationWindowSeconds"] == 300
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    queue = config(docs)["DISTQ_QUEUE"]
    # KEDA's operator lives in another namespace: the broker's Service, fully named.
    service_host = f"{broker}.{NAMESPACE}.svc"
    if broker == "redis":
        assert trigger["type"] == "redis"
        assert meta["listName"] == queue  # the ready list is named exactly DISTQ_QUEUE
        assert meta["address"] == f"{service_host}:6379"
    else:
        assert trigger["type"] == "rabbitmq"
        assert (meta["queueName"], meta["mode"], meta["protocol"]) == (queue, "QueueLength", "amqp")
        host = urlsplit(meta["host"])
        assert (host.hostname, host.port, host.password) == (service_host, 5672, None)
    auth = find(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret = find_prefixed(docs, "Secret", "distq-secrets")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"]  # the generated (hashed) name
        assert ref["key"] in secret["data"]
    # KEDA's operator may reach the broker, on the broker's port.
    rules = find(docs, "NetworkPolicy", broker)["spec"]["ingress"]
    keda = {"kubernetes.io/metadata.name": "keda"}
    (rule,) = [
        r for r in rules if r["from"][0].get("namespaceSelector", {}).get("matchLabels") == keda
    ]
    assert rule["ports"] == [{"port": BROKER_PORTS[broker], "protocol": "TCP"}]


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_keda_follows_a_queue_named_other_than_distq(k8s_tree: Tree, broker: str) -> None:
    # A user who names the queue (DISTQ_QUEUE in distq-config, merged in a kustomization
    # of their own) has master and workers use that list / queue: KEDA must read it too,
    # or it scales on an empty "distq" and never adds a worker.
    docs = load(k8s_tree.render(broker, f"keda-{broker}", {"DISTQ_QUEUE": "jobs"}))
    assert config(docs)["DISTQ_QUEUE"] == "jobs"
    (trigger,) = find(docs, "ScaledObject", "worker")["spec"]["triggers"]
    name = {"redis": "listName", "rabbitmq": "queueName"}[broker]
    assert trigger["metadata"][name] == "jobs"


@pytest.mark.parametrize(
    ("broker", "url"),
    [
        ("redis", "redis://redis.jobs.svc:6379/2"),
        ("rabbitmq", "amqp://distq@rabbitmq.jobs.svc:5672/jobs"),
    ],
)
def test_keda_reads_the_broker_the_workers_use(k8s_tree: Tree, broker: str, url: str) -> None:
    # Another namespace, database or vhost is one edit of the workers' URL in distq-config:
    # KEDA's address was its own copy (redis.distq.svc:6379, database 0, vhost /), which
    # went on counting another broker's queue, or none, and never added a worker.
    setting = {"redis": "DISTQ_REDIS_URL", "rabbitmq": "DISTQ_AMQP_URL"}[broker]
    for settings in ({}, {setting: url}):
        docs = load(k8s_tree.render(broker, f"keda-{broker}", settings))
        workers = urlsplit(config(docs)[setting])
        (trigger,) = find(docs, "ScaledObject", "worker")["spec"]["triggers"]
        meta = trigger["metadata"]
        if broker == "redis":
            assert meta["address"] == workers.netloc, (meta, workers)
            assert meta["databaseIndex"] == workers.path.strip("/"), (meta, workers)
        else:
            keda = urlsplit(meta["host"])
            assert (keda.hostname, keda.port, keda.path) == (
                workers.hostname,
                workers.port,
                workers.path,
            ), (meta, workers)
            assert keda.username is None  # the user and password: the TriggerAuthentication


@pytest.mark.parametrize("overlay", ["manager", "rabbitmq"])
def test_keda_redis_on_another_transport_refuses_to_render_naming_the_url(
    k8s_tree: Tree, overlay: str
) -> None:
    with pytest.raises(CheckFailed, match="DISTQ_REDIS_URL"):
        k8s_tree.render(overlay, "keda-redis")


def test_hpa_scales_workers_on_cpu_they_request(k8s_tree: Tree) -> None:
    docs = load(k8s_tree.render("redis", "hpa"))
    hpa = find(docs, "HorizontalPodAutoscaler", "worker")
    target = find(docs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "worker"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    (container,) = pod_of(target)["containers"]
    assert "cpu" in container["resources"]["requests"]  # Utilization is relative to it


def test_servicemonitor_finds_master_and_every_worker(k8s_tree: Tree) -> None:
    docs = load(k8s_tree.render("redis", "servicemonitor"))
    monitor = find(docs, "ServiceMonitor", "distq")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        d for d in docs if d["kind"] == "Service" and selects(selector, d["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["name"] for s in services) == ["master", "worker"]
    assert find(docs, "Service", "worker")["spec"]["clusterIP"] == "None"  # every pod
    for endpoint in monitor["spec"]["endpoints"]:
        for service in services:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def meta_labels(kind: str, labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes service discovery's __meta_kubernetes_<kind>_label_* for ``labels``."""
    return {
        f"__meta_kubernetes_{kind}_label_{re.sub(r'[^A-Za-z0-9_]', '_', key)}": value
        for key, value in labels.items()
    }


def relabel(rules: list[Doc], labels: dict[str, str]) -> dict[str, str]:
    """Prometheus' relabeling, the ``replace`` action only (the one that can set a job),
    in either spelling (scrape config: source_labels; Prometheus Operator: sourceLabels)."""
    labels = dict(labels)
    for rule in rules:
        assert rule.get("action", "replace").lower() == "replace", f"not simulated: {rule}"
        sources: list[str] = rule.get("sourceLabels") or rule.get("source_labels") or []
        value = rule.get("separator", ";").join(labels.get(s, "") for s in sources)
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if match:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            target: str = rule.get("targetLabel") or rule["target_label"]
            labels[target] = match.expand(replacement)
    return labels


def operator_job(monitor: Doc, endpoint: Doc, service: Doc) -> str:
    """The job label the Prometheus Operator gives one Service's targets of ``endpoint``.

    As its API reference says: the Service's label named by ``spec.jobLabel``, else (no
    jobLabel, or the Service lacks that label) the Service's name. Then the endpoint's
    ``relabelings`` run, after the operator's own, on the target's metadata labels.
    """
    name = service["metadata"]["name"]
    labels = service["metadata"].get("labels", {})
    meta = {"__meta_kubernetes_service_name": name, **meta_labels("service", labels)}
    meta["job"] = labels.get(monitor["spec"].get("jobLabel", ""), "") or name
    return relabel(endpoint.get("relabelings", []), meta)["job"]


def assert_alerts_and_dashboard_select(jobs: set[str], how: str) -> None:
    matchers = job_matchers()
    assert matchers, "alerts.yml and the dashboard select no job: this test checks nothing"
    for where, op, value in matchers:
        assert op in ("=", "=~"), f"{where}: job{op}{value!r} is not simulated"
        selected = {j for j in jobs if (j == value if op == "=" else re.fullmatch(value, j))}
        assert selected, f"{where}: job{op}{value!r} selects no distq target {how}"


def job_matchers() -> list[tuple[str, str, str]]:
    """Every (where, op, value) matcher on ``job`` in alerts.yml and the Grafana dashboard."""
    exprs = [
        (f"alert {rule['alert']}", rule["expr"])
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    ]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append((f"dashboard {node.get('refId', '')}", node["expr"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()))
    return [
        (where, m.group(1), m.group(2))
        for where, expr in exprs
        for m in re.finditer(r'\bjob\s*(=~|!~|!=|=)\s*"([^"]*)"', expr)
    ]


def test_servicemonitor_targets_carry_the_jobs_the_alerts_and_dashboard_select(
    k8s_tree: Tree,
) -> None:
    docs = load(k8s_tree.render("redis", "servicemonitor"))
    monitor = find(docs, "ServiceMonitor", "distq")
    jobs = {
        name: {
            operator_job(monitor, e, find(docs, "Service", name))
            for e in monitor["spec"]["endpoints"]
        }
        for name in ("master", "worker")
    }
    assert_alerts_and_dashboard_select(set().union(*jobs.values()), "through the ServiceMonitor")
    # The same jobs as the compose stack's Prometheus (deploy/prometheus/prometheus.yml).
    compose_jobs = {
        j["job_name"] for j in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    }
    assert jobs == {"master": {"distq-master"}, "worker": {"distq-worker"}}
    assert {"distq-master", "distq-worker"} <= compose_jobs


def test_the_readme_relabeling_gives_annotation_scraped_pods_the_same_jobs(
    docs: list[Doc],
) -> None:
    """Annotation-based scraping names the job after its own scrape config; README.md gives
    the rule that sets distq's jobs there (and leaves every other pod's job alone)."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"relabel_configs`[^`]*?```yaml\n(.*?)```", readme, re.S)
    assert match, "README.md has no relabel_configs rule for annotation-based scraping"
    rules = yaml.safe_load(match.group(1))
    jobs = {}
    for role in ("master", "worker"):
        pod = find(docs, "Deployment", role)["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        meta = {"job": "kubernetes-pods", **meta_labels("pod", pod["metadata"]["labels"])}
        jobs[role] = relabel(rules, meta)["job"]
    assert jobs == {"master": "distq-master", "worker": "distq-worker"}
    assert_alerts_and_dashboard_select(set(jobs.values()), "with the README's relabeling")
    other = {"job": "kubernetes-pods", **meta_labels("pod", {"app.kubernetes.io/name": "x"})}
    assert relabel(rules, other)["job"] == "kubernetes-pods"


def test_disruption_budget_covers_the_workers(docs: list[Doc]) -> None:
    budget = find(docs, "PodDisruptionBudget", "worker")
    assert selects(
        budget["spec"]["selector"]["matchLabels"], pod_labels(find(docs, "Deployment", "worker"))
    )
    # workers are not ready while the broker is away: the default policy (IfHealthyBudget)
    # would then refuse to evict any, and a drain of the broker's node would never end
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_every_secret_file_is_in_the_readme_and_none_is_committed() -> None:
    wanted = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        text = kustomization.read_text()
        for match in re.finditer(r"^\s*-\s*[\w.-]+=(secrets/[\w.-]+)\s*$", text, re.M):
            wanted.add(str((kustomization.parent / match.group(1)).relative_to(K8S)))
    assert wanted == set(SECRET_FILES)
    readme = (ROOT / "README.md").read_text()
    for rel in SECRET_FILES:
        assert f"k8s/{rel}" in readme, f"README.md does not say to create k8s/{rel}"
    tracked = subprocess.run(
        ["git", "ls-files", "k8s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert [t for t in tracked if "/secrets/" in t and not t.endswith(".gitignore")] == []


def test_the_readme_kustomization_renders_as_it_says(k8s_tree: Tree) -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```yaml\n(# my-distq/kustomization.yaml.*?)```", readme, re.S)
    assert match, "README.md has no my-distq/kustomization.yaml example"
    folder = k8s_tree.dir / "my-distq"
    folder.mkdir(exist_ok=True)
    (folder / "kustomization.yaml").write_text(match.group(1))
    done = subprocess.run(
        [str(TOOLS / "kubectl"), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    docs = load(done.stdout)
    assert find(docs, "ScaledObject", "worker")["metadata"]["namespace"] == NAMESPACE
    for role in ("master", "worker"):
        (container,) = pod_of(find(docs, "Deployment", role))["containers"]
        assert container["image"] == f"registry.example/distq-{role}:0.1.0"


def test_images_are_tagged_with_the_package_version(docs: list[Doc]) -> None:
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    for role in ("master", "worker"):
        (container,) = pod_of(find(docs, "Deployment", role))["containers"]
        assert container["image"] == f"distq-{role}:{version.group(1)}"


def test_every_pod_meets_the_restricted_pod_security_standard(docs: list[Doc]) -> None:
    """What the namespace's `pod-security.kubernetes.io/enforce: restricted` admits."""
    namespace = find(docs, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    allowed_volumes = {"name", "emptyDir", "secret", "configMap", "persistentVolumeClaim"}
    for workload in (d for d in docs if d["kind"] in ("Deployment", "StatefulSet")):
        pod = pod_of(workload)
        what = f"{workload['kind']}/{workload['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, what
        assert pod["securityContext"]["runAsUser"] != 0, what
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), what
        for volume in pod.get("volumes", []):
            assert set(volume) <= allowed_volumes, what
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, what
            assert context["capabilities"] == {"drop": ["ALL"]}, what
            assert context["readOnlyRootFilesystem"] is True, what
            assert all("hostPort" not in p for p in container.get("ports", [])), what
