"""The pod-template-to-`docker run` translation the container test relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from k8s.pod_to_docker import docker_run, expand
from k8s.render import Doc, Tree, find, find_prefixed, load


def worker_run(k8s_tree: Tree, tmp_path: Path, change: Doc | None = None) -> list[str]:
    docs = load(k8s_tree.render("redis"))
    pod = find(docs, "Deployment", "worker")["spec"]["template"]["spec"]
    pod.update(change or {})
    run = docker_run("w0", pod, docs, tmp_path, network="net0", aliases=["worker"])
    return run.argv()


def test_the_security_context_becomes_docker_flags(k8s_tree: Tree, tmp_path: Path) -> None:
    argv = worker_run(k8s_tree, tmp_path)
    joined = " ".join(argv)
    for flag in (
        "--user 10001:10001",
        "--group-add 10001",
        "--read-only",
        "--cap-drop ALL",
        "--security-opt no-new-privileges",
        "--network net0",
        "--network-alias worker",
        "--cpus 1",
        "--memory 256m",
    ):
        assert flag in joined
    assert "--tmpfs /tmp:rw,exec,uid=10001,gid=10001,mode=1777,size=64m" in joined
    # no command: the image entrypoint
    assert argv[-4:] == ["distq-worker:0.1.0", "--connect-timeout", "120", "--quiet"]


def test_env_is_resolved_from_the_configmap_and_secrets_are_files(
    k8s_tree: Tree, tmp_path: Path
) -> None:
    argv = worker_run(k8s_tree, tmp_path)
    env = dict(
        line.split("=", 1)
        for line in Path(argv[argv.index("--env-file") + 1]).read_text().splitlines()
    )
    for arg, flag in zip(argv[1:], argv, strict=False):
        if flag == "--env":
            key, _, value = arg.partition("=")
            env[key] = value
    assert env["DISTQ_TRANSPORT"] == "redis"
    assert env["DISTQ_REDIS_PASSWORD_FILE"] == "/etc/distq/secrets/redis-password"
    password = k8s_tree.password("redis-password")
    assert all(password not in value for value in env.values())
    volume = argv[argv.index("--volume") + 1]
    host, container, mode = volume.split(":")
    assert (container, mode) == ("/etc/distq/secrets", "ro")
    # The file holds the Secret's bytes as they are, the user's trailing newline included.
    assert (Path(host) / "redis-password").read_text() == k8s_tree.secrets["redis-password"]


def test_an_env_value_keeps_its_trailing_newline(k8s_tree: Tree, tmp_path: Path) -> None:
    # What a secretKeyRef gives when the user's file ends with a newline (README's way):
    # docker's env file would drop it, so such a value goes on the command line intact.
    docs = load(k8s_tree.render("redis"))
    pod = find(docs, "Deployment", "worker")["spec"]["template"]["spec"]
    secret = {
        "secretKeyRef": {
            "name": find_prefixed(docs, "Secret", "distq-secrets")["metadata"]["name"],
            "key": "redis-password",
        }
    }
    pod["containers"][0]["env"] = [{"name": "FROM_SECRET", "valueFrom": secret}]
    argv = docker_run("w0", pod, docs, tmp_path, network="net0").argv()
    value = k8s_tree.secrets["redis-password"]
    assert value.endswith("\n")
    assert f"FROM_SECRET={value}" in argv
    env_file = Path(argv[argv.index("--env-file") + 1]).read_text()
    assert "FROM_SECRET" not in env_file


def test_anything_not_translated_is_refused_not_dropped(k8s_tree: Tree, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hostNetwork"):
        worker_run(k8s_tree, tmp_path, {"hostNetwork": True})
    with pytest.raises(ValueError, match="initContainers"):
        worker_run(k8s_tree, tmp_path, {"initContainers": []})


def test_var_references_expand_as_in_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("x$(A)y$(B)", env) == "x1ytwo"
    assert expand("$(MISSING) stays", env) == "$(MISSING) stays"
    assert expand("$$(A) is escaped", env) == "$(A) is escaped"
