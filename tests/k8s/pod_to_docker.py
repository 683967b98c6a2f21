"""Turn a rendered pod template into the `docker run` that does what the kubelet would.

What is translated: image; command and args (``command`` replaces the entrypoint);
environment from ``env`` and ``envFrom`` with ConfigMap and Secret values resolved and
``$(VAR)`` references expanded as Kubernetes does; the security context (``--user``,
``--group-add`` for fsGroup, ``--read-only``, ``--cap-drop``, ``--security-opt
no-new-privileges``); emptyDirs and volume claims as tmpfs, Secret volumes as read-only
bind mounts of files written here; CPU and memory limits; every container port published
on 127.0.0.1 so the probes can be run from the host. Anything else in the pod spec that
would change what runs makes :func:`docker_run` raise instead of silently dropping it.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Doc = dict[str, Any]

#: Pod and container fields that change nothing the docker run must reproduce.
_POD_FIELDS_KEPT_OUT = {
    "serviceAccountName",  # no API access either way: automountServiceAccountToken is false
    "automountServiceAccountToken",
    "terminationGracePeriodSeconds",  # the caller uses it as `docker stop --time`
}
_CONTAINER_FIELDS_KEPT_OUT = {"name", "readinessProbe", "livenessProbe", "imagePullPolicy"}
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass
class DockerRun:
    """A container to start: the arguments of `docker run` after the options."""

    name: str
    options: list[str]
    image: str
    args: list[str]
    ports: dict[str, int] = field(default_factory=dict)  # port name (or number) -> port

    def argv(self) -> list[str]:
        return [
            "docker",
            "run",
            "--detach",
            "--name",
            self.name,
            *self.options,
            self.image,
            *self.args,
        ]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables replaced, $$ an escaped $."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(one, text)


def _config_maps(docs: Iterable[Doc]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


def _secrets(docs: Iterable[Doc]) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for d in docs:
        if d["kind"] == "Secret":
            data = {k: base64.b64decode(v) for k, v in d.get("data", {}).items()}
            data.update({k: v.encode() for k, v in d.get("stringData", {}).items()})
            out[d["metadata"]["name"]] = data
    return out


def resolve_env(container: Doc, docs: list[Doc]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (env wins over envFrom)."""
    maps, secrets = _config_maps(docs), _secrets(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        elif "secretRef" in source:
            ref = secrets[source["secretRef"]["name"]]
            env.update({k: v.decode() for k, v in ref.items()})
        else:
            raise ValueError(f"envFrom source not translated: {source}")
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]].decode()
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = maps[ref["name"]][ref["key"]]
        else:
            raise ValueError(f"env source not translated: {var}")
    return env


def _size(quantity: str) -> str:
    """A Kubernetes memory quantity as docker understands it (Mi -> m, Gi -> g)."""
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    for suffix, docker in units.items():
        if quantity.endswith(suffix):
            return quantity.removesuffix(suffix) + docker
    return quantity


def _cpus(quantity: str) -> str:
    if quantity.endswith("m"):
        return str(int(quantity[:-1]) / 1000)
    return quantity


def docker_run(
    name: str,
    pod: Doc,
    docs: list[Doc],
    workdir: Path,
    *,
    network: str,
    aliases: Iterable[str] = (),
    image_map: Mapping[str, str] | None = None,
    claims: Iterable[str] = (),
) -> DockerRun:
    """The `docker run` for one container of ``pod`` (a pod template's ``spec``).

    ``docs`` are all rendered objects (for ConfigMaps and Secrets); ``workdir`` receives
    the Secret files to bind-mount and the env file; ``image_map`` swaps an image for a
    local stand-in (brokers without a registry) and nothing else; ``claims`` names a
    StatefulSet's volumeClaimTemplates.
    """
    unknown = set(pod) - _POD_FIELDS_KEPT_OUT - {"securityContext", "containers", "volumes"}
    if unknown:
        raise ValueError(f"pod fields not translated: {sorted(unknown)}")
    if len(pod["containers"]) != 1:
        raise ValueError("pods with more than one container are not translated")
    container = pod["containers"][0]
    unknown = (
        set(container)
        - _CONTAINER_FIELDS_KEPT_OUT
        - {
            "image",
            "command",
            "args",
            "env",
            "envFrom",
            "ports",
            "resources",
            "securityContext",
            "volumeMounts",
        }
    )
    if unknown:
        raise ValueError(f"container fields not translated: {sorted(unknown)}")

    options = ["--network", network, "--hostname", name]
    for alias in aliases:
        options += ["--network-alias", alias]

    env = resolve_env(container, docs)
    # An env file holds one variable a line: a value with a newline in it (a Secret's
    # value taken from a file that ends with one) would lose it there, and what runs would
    # not be what the kubelet runs. Such values go on the command line, bytes intact.
    plain = {k: v for k, v in env.items() if "\n" not in v}
    env_file = workdir / f"{name}.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in plain.items()))
    env_file.chmod(0o600)
    options += ["--env-file", str(env_file)]
    for key, value in env.items():
        if key not in plain:
            options += ["--env", f"{key}={value}"]

    options += _security(pod.get("securityContext", {}), container.get("securityContext", {}))
    options += _volumes(name, pod, container, _secrets(docs), workdir, set(claims))

    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        options += ["--cpus", _cpus(str(limits["cpu"]))]
    if "memory" in limits:
        options += ["--memory", _size(str(limits["memory"]))]

    ports: dict[str, int] = {}
    for port in container.get("ports", []):
        options += ["--publish", f"127.0.0.1::{port['containerPort']}"]
        ports[port.get("name", str(port["containerPort"]))] = port["containerPort"]

    command = [expand(a, env) for a in container.get("command", [])]
    args = [expand(a, env) for a in container.get("args", [])]
    if command:
        options += ["--entrypoint", command[0]]
        args = command[1:] + args
    image = (image_map or {}).get(container["image"], container["image"])
    return DockerRun(name=name, options=options, image=image, args=args, ports=ports)


def _security(pod: Doc, container: Doc) -> list[str]:
    merged = {**pod, **container}  # the container's settings win, as in Kubernetes
    unknown = set(merged) - {
        "runAsNonRoot",
        "runAsUser",
        "runAsGroup",
        "fsGroup",
        "seccompProfile",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "capabilities",
    }
    if unknown:
        raise ValueError(f"securityContext fields not translated: {sorted(unknown)}")
    options = []
    if "runAsUser" in merged:
        user = str(merged["runAsUser"])
        if "runAsGroup" in merged:
            user += f":{merged['runAsGroup']}"
        options += ["--user", user]
    if merged.get("runAsNonRoot") and merged.get("runAsUser", 0) == 0:
        raise ValueError("runAsNonRoot without a non-zero runAsUser: the kubelet would refuse")
    if "fsGroup" in pod:
        options += ["--group-add", str(pod["fsGroup"])]
    if merged.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    for cap in merged.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", cap]
    for cap in merged.get("capabilities", {}).get("add", []):
        options += ["--cap-add", cap]
    if merged.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    profile = merged.get("seccompProfile", {}).get("type")
    if profile not in (None, "RuntimeDefault"):  # Docker's default profile is RuntimeDefault
        raise ValueError(f"seccompProfile {profile} not translated")
    return options


def _volumes(
    name: str,
    pod: Doc,
    container: Doc,
    secrets: dict[str, dict[str, bytes]],
    workdir: Path,
    claims: set[str],
) -> list[str]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    security = pod.get("securityContext", {})
    fs_group = security.get("fsGroup")
    # Owned by the pod's user and fsGroup: writable by the pod as an emptyDir or a volume
    # with fsGroup applied is (a tmpfs over a directory of the image keeps its mode).
    owner = f"uid={security.get('runAsUser', 0)},gid={fs_group or security.get('runAsGroup', 0)}"
    options = []
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        path = mount["mountPath"]
        if volume is None and mount["name"] not in claims:
            raise ValueError(f"volumeMount {mount['name']} names no volume or claim")
        if volume is None:
            # A volumeClaimTemplate: storage that outlives the container; a tmpfs is
            # enough for one test run.
            options += ["--tmpfs", f"{path}:rw,exec,{owner},mode=1777"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            extra = f",size={_size(str(size))}" if size else ""
            options += ["--tmpfs", f"{path}:rw,exec,{owner},mode=1777{extra}"]
        elif "secret" in volume:
            spec = volume["secret"]
            data = secrets[spec["secretName"]]
            items = spec.get("items") or [{"key": k, "path": k} for k in data]
            folder = workdir / f"{name}-{mount['name']}"
            folder.mkdir(mode=0o755)
            for item in items:
                target = folder / item["path"]
                target.write_bytes(data[item["key"]])
                _own(target, fs_group, spec.get("defaultMode", 0o644))
            options += ["--volume", f"{folder}:{path}:ro"]
        else:
            raise ValueError(f"volume not translated: {volume}")
    return options


def _own(path: Path, group: int | None, mode: int) -> None:
    """Root-owned with the pod's fsGroup, as the kubelet writes Secret files."""
    if group is not None and os.geteuid() == 0:
        os.chown(path, 0, group)
        path.chmod(mode)
    else:
        path.chmod(0o444)  # without root the files cannot carry the group: readable by all
