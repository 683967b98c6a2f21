"""deploy/prometheus and deploy/grafana: promtool accepts them, each alert fires when it
should and only then, and every query of the rules and the dashboard names only metrics
distq exports and returns data from a real Prometheus scraping those metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixture_exporter import registry_for, serve
from grafana_dashboard import Query, panels, queries, substitute, variables_used
from promql_refs import problems, references
from spec_metrics import FAMILIES, HISTOGRAM_SUFFIXES, series_names

from launch import LocalPrometheus

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "distq.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "distq.yml"

ALERT_NAMES = {
    "DistqNoWorkers",
    "DistqQueueGrowing",
    "DistqDeadLettersRising",
    "DistqTaskErrorRatioHigh",
    "DistqTargetDown",
    "DistqNotReady",
}
SEVERITIES = {"critical", "warning", "info"}
GRID_WIDTH = 24  # Grafana's dashboard grid has 24 columns

_INSTALL_HINT = (
    "`make test` installs it (Debian's prometheus package, as root on Debian); elsewhere "
    "install Prometheus 2.x so that `prometheus` and `promtool` are on PATH"
)


def require_binary(name: str) -> str:
    """The path of ``name`` (prometheus, promtool); fails the test saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {_INSTALL_HINT}", pytrace=False)
    return path


def promtool(*args: str | Path, explain: str = "") -> str:
    """Runs promtool; its output, or a failed test showing that output (and ``explain``)."""
    command = [require_binary("promtool"), *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(
            f"promtool {' '.join(command[1:])} exited {done.returncode}:\n{output}{explain}",
            pytrace=False,
        )
    return output


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def defined_variables(board: dict[str, Any]) -> set[str]:
    return {variable["name"] for variable in board["templating"]["list"]}


def dashboard_promql(board: dict[str, Any]) -> list[tuple[Query, str]]:
    """Each dashboard query with its PromQL as Grafana sends it ("All" selected)."""
    defined = defined_variables(board)
    return [(query, substitute(query.expr, defined)) for query in queries(board)]


# promtool ------------------------------------------------------------------------------


def test_scrape_config_passes_promtool_check_config() -> None:
    output = promtool("check", "config", SCRAPE_CONFIG)
    assert "1 rule files found" in output  # alerts.yml, resolved next to the config


def test_alert_rules_pass_promtool_check_rules() -> None:
    output = promtool("check", "rules", ALERTS)
    assert f"{len(ALERT_NAMES)} rules found" in output


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", ALERTS_TEST)


def test_dashboard_queries_parse_as_recording_rules(tmp_path: Path) -> None:
    board = dashboard()
    records = {f"distq_dashboard:query_{i}": item for i, item in enumerate(dashboard_promql(board))}
    rules = [{"record": name, "expr": promql} for name, (_, promql) in records.items()]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    where = "".join(f"\n  {name}: {query.where}" for name, (query, _) in records.items())
    output = promtool("check", "rules", rules_file, explain=f"\nwhich rule is which:{where}")
    assert f"{len(rules)} rules found" in output


# prometheus.yml ------------------------------------------------------------------------


def test_scrape_config_discovers_every_master_and_worker_replica_by_dns() -> None:
    config = load_yaml(SCRAPE_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job, service in (("distq-master", "master"), ("distq-worker", "worker")):
        assert "static_configs" not in jobs[job], f"{job}: a fixed target misses scaled replicas"
        [discovery] = jobs[job]["dns_sd_configs"]
        assert discovery["names"] == [service]
        assert discovery["type"] == "A"  # one address per replica
        assert discovery["port"] == 9100  # DISTQ_METRICS_PORT in both images


# alerts.yml ----------------------------------------------------------------------------


def test_every_alert_waits_and_has_severity_summary_description_and_runbook() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERT_NAMES
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for:`, so one bad sample pages someone"
        assert rule["labels"]["severity"] in SEVERITIES, name
        for annotation in ("summary", "description", "runbook"):
            assert rule["annotations"].get(annotation, "").strip(), f"{name}: no {annotation}"


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    cases = [case for test in load_yaml(ALERTS_TEST)["tests"] for case in test["alert_rule_test"]]
    for name in ALERT_NAMES:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no case where it is quiet"


def test_alert_rules_use_only_metrics_distq_exports() -> None:
    names = series_names()
    found = {rule["alert"]: problems(rule["expr"], names) for rule in alert_rules()}
    assert {alert: p for alert, p in found.items() if p} == {}


def test_readme_lists_every_alert() -> None:
    readme = (REPO / "README.md").read_text()
    assert [name for name in sorted(ALERT_NAMES) if f"`{name}`" not in readme] == []


# Grafana -------------------------------------------------------------------------------


def test_dashboard_has_the_shape_grafana_loads() -> None:
    board = dashboard()
    assert board["id"] is None  # provisioned: Grafana assigns the database id
    assert isinstance(board["uid"], str) and 0 < len(board["uid"]) <= 40
    assert board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert {"from", "to"} <= board["time"].keys()
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    for panel in panels(board):
        name = f"panel {panel['id']} {panel.get('title')!r}"
        assert panel["type"] and panel["title"], name
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy"), name
        assert grid["x"] + grid["w"] <= GRID_WIDTH and grid["h"] > 0 and grid["w"] > 0, name
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        assert panel["targets"], f"{name}: no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{name}: refIds repeat"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{name} target {target['refId']}: empty expr"
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], name


def test_dashboard_variables_exist_and_the_datasource_is_a_variable() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    used = set().union(*(variables_used(query.expr) for query in queries(board)))
    assert used - variables.keys() - {"__rate_interval", "__interval", "__range"} == set()


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_dashboard_queries_use_only_metrics_distq_exports() -> None:
    names = series_names()
    found = {query.where: problems(query.expr, names) for query in queries(dashboard())}
    assert {where: p for where, p in found.items() if p} == {}


def test_dashboard_shows_every_distq_metric() -> None:
    used = {
        selector.metric.removesuffix(suffix)
        for query in queries(dashboard())
        for selector in references(query.expr).selectors
        for suffix in ("", *HISTOGRAM_SUFFIXES)
    }
    assert [family.name for family in FAMILIES if family.name not in used] == []


def stat_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in panels(board) if panel["type"] == "stat"]


def test_stat_panels_are_instant_queries_that_say_why_they_are_empty() -> None:
    """A stat over a range reduces to its last point: during a broker outage it showed
    "Worker slots 3" from before the outage, the series being gone. An instant query
    shows the absence, and ``noValue`` says what it means."""
    board = dashboard()
    assert len(stat_panels(board)) == 6
    for panel in stat_panels(board):
        name = f"panel {panel['id']} {panel['title']!r}"
        for target in panel["targets"]:
            assert target.get("instant") is True, f"{name}: not an instant query"
            assert target.get("range") is False, f"{name}: also a range query"
        assert panel["fieldConfig"]["defaults"].get("noValue", "").strip(), f"{name}: no noValue"
        assert panel["options"]["graphMode"] == "none", f"{name}: a sparkline needs a range"
        exprs = " ".join(target["expr"] for target in panel["targets"])
        if re.search(r"\bdistq_(queue_depth|workers)\b", exprs):  # the master's broker samples
            assert "broker" in panel["fieldConfig"]["defaults"]["noValue"], name


# Queries where nothing to count means 0, not "no data": (panel title, refId).
ZERO_IS_THE_TRUTH = {
    ("Tasks/s run ok", "A"),
    ("Workers", "B"),  # worker processes up
    ("Workers", "C"),  # processes not ready
}


def zero_is_the_truth(board: dict[str, Any]) -> dict[str, str]:
    """where -> expr of the queries that must give 0, never an empty result."""
    found = {
        f"panel {panel['id']} {panel['title']!r} target {target['refId']}": target["expr"]
        for panel in panels(board)
        for target in panel.get("targets", [])
        if (panel["title"], target["refId"]) in ZERO_IS_THE_TRUTH
    }
    return found


def test_counts_and_rates_that_can_be_zero_are_never_empty() -> None:
    """``count(up{job="distq-worker"} == 1)`` is empty, not 0, when no worker is up: the
    line ended where it mattered. Each such query falls back to ``vector(0)``."""
    board = dashboard()
    exprs = zero_is_the_truth(board)
    assert len(exprs) == len(ZERO_IS_THE_TRUTH), exprs
    assert 'count(up{job="distq-worker"} == 1) or vector(0)' in exprs.values()
    for where, expr in exprs.items():
        assert expr.rstrip().endswith("or vector(0)"), f"{where}: {expr}"


def test_grafana_provisioning_points_at_the_compose_prometheus_and_dashboards() -> None:
    [datasource] = load_yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"  # the compose service
    board = dashboard()
    [variable] = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"]
    [provider] = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


# A real Prometheus ---------------------------------------------------------------------


def _test_config(master: str, workers: list[str]) -> str:
    """Like prometheus.yml, with loopback exporters in place of compose DNS names."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "distq-master", "static_configs": [{"targets": [master]}]},
            {"job_name": "distq-worker", "static_configs": [{"targets": workers}]},
        ],
    }
    return yaml.safe_dump(config)


def _wait_for(
    what: str, ready: Callable[[], bool], prometheus: LocalPrometheus, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            log = prometheus.log_path.read_text(errors="replace").splitlines()[-20:]
            pytest.fail(f"no {what} within {timeout} s; Prometheus log:\n" + "\n".join(log))
        time.sleep(0.2)


def _rules(prometheus: LocalPrometheus) -> list[dict[str, Any]]:
    """The rules Prometheus loaded (/api/v1/rules), with their health and last evaluation."""
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/rules", timeout=10) as answer:
        groups = json.load(answer)["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    """Prometheus scraping a master and two workers that export every distq family."""
    with ExitStack() as stack:
        master = stack.enter_context(serve(registry_for("master")))
        workers = [stack.enter_context(serve(registry_for("worker"))) for _ in range(2)]
        workdir = tmp_path_factory.mktemp("prometheus")
        server = LocalPrometheus(workdir, _test_config(master, workers)).start()
        stack.callback(server.stop)

        def three_samples_of_each_target() -> bool:
            samples = server.query("count_over_time(up[1m]) >= 3 and up == 1")
            return len(samples) == 3

        _wait_for("three scrapes of every target", three_samples_of_each_target, server)
        yield server


def test_dashboard_queries_return_data_from_prometheus(prometheus: LocalPrometheus) -> None:
    empty = []
    for query, promql in dashboard_promql(dashboard()):
        result = prometheus.query(promql)  # raises with Prometheus' reason on a bad query
        if not result:
            empty.append(f"{query.where}: {promql}")
        elif query.label and not all(query.label in r["metric"] for r in result):
            empty.append(f"{query.where}: no {query.label!r} label in {result}")
    assert empty == [], "queries that find no data among every metric distq exports"


def test_zero_count_queries_answer_0_when_nothing_matches(prometheus: LocalPrometheus) -> None:
    """On a real Prometheus, with no queue and no worker job matching: 0, not empty."""
    board = dashboard()
    defined = defined_variables(board)
    wrong = []
    for where, expr in zero_is_the_truth(board).items():
        promql = substitute(expr, defined).replace('=~".+"', '="no-such-queue"')
        promql = promql.replace('job="distq-worker"', 'job="no-such-job"')
        assert promql != substitute(expr, defined), f"{where}: nothing made to match nothing"
        result = prometheus.query(promql)
        if [float(r["value"][1]) for r in result] != [0.0]:
            wrong.append(f"{where}: {promql} -> {result}")
    assert wrong == []


def test_alert_rules_load_and_evaluate_on_prometheus(prometheus: LocalPrometheus) -> None:
    def all_evaluated() -> bool:
        loaded = _rules(prometheus)
        return bool(loaded) and all(not r["lastEvaluation"].startswith("0001") for r in loaded)

    _wait_for("evaluation of every rule", all_evaluated, prometheus)
    rules = _rules(prometheus)
    assert {rule["name"] for rule in rules} == ALERT_NAMES
    assert {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"} == {}
