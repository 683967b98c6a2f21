"""Every overlay, alone and with each component, renders and validates strictly.

Core kinds: kubernetes-validate --strict at the pinned Kubernetes versions (unknown
fields and unknown kinds fail). KEDA and Prometheus Operator objects: those projects'
published models (tests/k8s/crd/validate.mjs). Then checkov with k8s/checkov.yaml.
The negative tests show each validator rejects what it must.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from k8s.render import (
    COMPONENTS,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    CheckFailed,
    Doc,
    Tree,
    checkov,
    custom_verdicts,
    find,
    fits,
    is_custom,
    load,
    validate_core,
    validate_custom,
)

Combo = tuple[str, str | None]
COMBINATIONS: list[Combo] = [(o, None) for o in OVERLAYS] + [
    (o, c) for o in OVERLAYS for c in COMPONENTS if fits(o, c)
]

#: The custom kinds each component brings.
CUSTOM_BY_COMPONENT = {
    None: set(),
    "hpa": set(),
    "keda-redis": {"ScaledObject", "TriggerAuthentication"},
    "keda-rabbitmq": {"ScaledObject", "TriggerAuthentication"},
    "servicemonitor": {"ServiceMonitor"},
}


def combo_id(combo: Combo) -> str:
    overlay, component = combo
    return overlay if component is None else f"{overlay}+{component}"


@pytest.fixture(scope="module")
def renderings(k8s_tree: Tree) -> dict[Combo, list[Doc]]:
    return {combo: load(k8s_tree.render(*combo)) for combo in COMBINATIONS}


@pytest.fixture(scope="module")
def custom_verdicts_by_combo(
    renderings: dict[Combo, list[Doc]], tmp_path_factory: pytest.TempPathFactory
) -> dict[Combo, list[str]]:
    """validate.mjs once over every combination's custom resources (it takes seconds)."""
    owners = [(combo, d) for combo, docs in renderings.items() for d in docs if is_custom(d)]
    verdicts = custom_verdicts([d for _, d in owners], tmp_path_factory.mktemp("crd"))
    by_combo: dict[Combo, list[str]] = {combo: [] for combo in renderings}
    for (combo, _), lines in zip(owners, verdicts, strict=True):
        by_combo[combo] += lines
    return by_combo


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_renders_and_validates_strictly(
    renderings: dict[Combo, list[Doc]],
    custom_verdicts_by_combo: dict[Combo, list[str]],
    tmp_path: Path,
    combo: Combo,
) -> None:
    docs = renderings[combo]
    for version in KUBERNETES_VERSIONS:
        validate_core(docs, tmp_path, version)
    custom = [d for d in docs if is_custom(d)]
    assert {d["kind"] for d in custom} == CUSTOM_BY_COMPONENT[combo[1]]
    verdicts = custom_verdicts_by_combo[combo]
    assert [v for v in verdicts if not v.startswith("OK ")] == []
    assert len(verdicts) == len(custom)


def test_checkov_is_clean_on_every_rendering(
    renderings: dict[Combo, list[Doc]], tmp_path: Path
) -> None:
    files = []
    for combo, docs in renderings.items():
        path = tmp_path / f"{combo_id(combo)}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        files.append(path)
    checkov(files)


# Negative cases: each check must be able to fail.


def worker_with(docs: list[Doc], change: dict[str, object]) -> list[Doc]:
    worker = find(docs, "Deployment", "worker")
    worker["spec"]["template"]["spec"].update(change)
    return docs


def test_kubernetes_validate_rejects_an_unknown_field(k8s_tree: Tree, tmp_path: Path) -> None:
    docs = load(k8s_tree.render("redis"))
    worker_with(docs, {"terminationGracePeriod": 45})  # misspelt: ...PeriodSeconds
    with pytest.raises(CheckFailed, match="terminationGracePeriod"):
        validate_core(docs, tmp_path, KUBERNETES_VERSIONS[0])


def test_kubernetes_validate_rejects_a_wrong_type(k8s_tree: Tree, tmp_path: Path) -> None:
    docs = load(k8s_tree.render("redis"))
    find(docs, "Deployment", "worker")["spec"]["replicas"] = "two"
    with pytest.raises(CheckFailed, match="replicas"):
        validate_core(docs, tmp_path, KUBERNETES_VERSIONS[0])


def test_an_unknown_kind_fails_instead_of_passing_with_a_warning(
    k8s_tree: Tree, tmp_path: Path
) -> None:
    docs = load(k8s_tree.render("redis"))
    find(docs, "Service", "redis")["apiVersion"] = "v2"
    with pytest.raises(CheckFailed, match="Couldn't find schema"):
        validate_core(docs, tmp_path, KUBERNETES_VERSIONS[0])


def test_custom_resource_validator_rejects_unknown_fields_and_wrong_types(
    k8s_tree: Tree, tmp_path: Path
) -> None:
    docs = [d for d in load(k8s_tree.render("redis", "keda-redis")) if is_custom(d)]
    scaled = find(docs, "ScaledObject", "worker")
    scaled["spec"]["coolDownPeriod"] = scaled["spec"].pop("cooldownPeriod")  # misspelt
    with pytest.raises(CheckFailed, match="coolDownPeriod"):
        validate_custom(docs, tmp_path)
    scaled["spec"]["cooldownPeriod"] = "five minutes"
    del scaled["spec"]["coolDownPeriod"]
    with pytest.raises(CheckFailed, match="cooldownPeriod"):
        validate_custom(docs, tmp_path)


def test_custom_resource_validator_rejects_a_bad_servicemonitor(
    k8s_tree: Tree, tmp_path: Path
) -> None:
    docs = [d for d in load(k8s_tree.render("redis", "servicemonitor")) if is_custom(d)]
    find(docs, "ServiceMonitor", "distq")["spec"]["endpoints"] = {"port": "metrics"}
    with pytest.raises(CheckFailed, match="endpoints"):
        validate_custom(docs, tmp_path)


def test_checkov_rejects_a_container_that_may_write_its_root_file_system(
    k8s_tree: Tree, tmp_path: Path
) -> None:
    docs = load(k8s_tree.render("redis"))
    container = find(docs, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(CheckFailed, match="CKV_K8S_22"):
        checkov([path])


def test_rendering_fails_without_the_secret_files(k8s_tree: Tree, tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.path("overlays/redis/secrets/redis-password").unlink()
    with pytest.raises(CheckFailed, match="redis-password"):
        tree.render("redis")
