"""Render k8s/ with kustomize and check the result with the pinned tools, without a cluster.

The tools come from ``scripts/check-k8s.sh --provision``: kubectl (kustomize),
kubernetes-validate and checkov in ``.build/k8s-tools``, the custom-resource validator
in ``tests/k8s/crd``. Rendering happens in a copy of ``k8s/`` that holds throw-away
secret files, so nothing is ever written into the repository's secret folders.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
TOOLS = ROOT / ".build" / "k8s-tools" / "bin"
CRD_VALIDATOR = ROOT / "tests" / "k8s" / "crd" / "validate.mjs"
CHECKOV_CONFIG = K8S / "checkov.yaml"

#: The oldest Kubernetes the manifests support (PodSecurity labels, autoscaling/v2 and
#: policy/v1 are all older) and the newest schemas kubernetes-validate carries.
KUBERNETES_VERSIONS = ("1.30", "1.37")
OVERLAYS = ("manager", "redis", "rabbitmq")
COMPONENTS = ("hpa", "keda-redis", "keda-rabbitmq", "servicemonitor")


def fits(overlay: str, component: str | None) -> bool:
    """Whether ``component`` goes with ``overlay``: a keda-* component reads its broker's
    address from that overlay's URL (DISTQ_REDIS_URL, DISTQ_AMQP_URL), which no other
    overlay has, and refuses to render without it."""
    return component is None or not component.startswith("keda-") or component == f"keda-{overlay}"


NAMESPACE = "distq"

#: Kinds that kubernetes-validate has no schema for; validate.mjs checks them instead.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}

#: The secret files README.md tells users to create, relative to k8s/.
SECRET_FILES = (
    "base/secrets/signing-keys",
    "overlays/manager/secrets/authkey",
    "overlays/redis/secrets/redis-password",
    "overlays/rabbitmq/secrets/amqp-password",
)

Doc = dict[str, Any]


class CheckFailed(AssertionError):
    """A tool rejected the manifests; the message holds its output."""


def provision() -> None:
    """Make sure the pinned tools are installed (quiet and fast when they are)."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "check-k8s.sh"), "--provision"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise CheckFailed(f"scripts/check-k8s.sh --provision failed:\n{done.stderr}")


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


class Tree:
    """A copy of k8s/ with a random value in every secret file, ready to render.

    Each file is written as README.md's ``print(secrets.token_hex(32)) > FILE`` writes
    it: the value and a trailing newline. ``secrets[name]`` is the file's whole text,
    newline included: the bytes kustomize copies into the Secret and the kubelet into
    the mounted file. Whoever reads it must strip the newline (distq's ``*_FILE``
    settings, ``$(cat FILE)`` in a broker's command); ``password(name)`` is the value
    without it.
    """

    def __init__(self, workdir: Path | None = None) -> None:
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="distq-k8s-"))
        shutil.copytree(K8S, self.dir / "k8s", dirs_exist_ok=True)
        self.secrets: dict[str, str] = {}
        for rel in SECRET_FILES:
            text = secrets.token_hex(16) + "\n"
            (self.dir / "k8s" / rel).write_text(text)
            self.secrets[Path(rel).name] = text

    def password(self, name: str) -> str:
        """The secret file ``name``'s value, without the newline its file ends with."""
        return self.secrets[name].rstrip("\n")

    def path(self, rel: str) -> Path:
        return self.dir / "k8s" / rel

    def render(
        self, overlay: str, component: str | None = None, settings: dict[str, str] | None = None
    ) -> str:
        """kubectl kustomize of the overlay, with the component added as a user would.

        ``settings`` are merged into ``distq-config`` by that kustomization of the user's
        own, as a user changes one (``DISTQ_QUEUE=jobs``).
        """
        target = self.path(f"overlays/{overlay}")
        if component is not None or settings:
            # A kustomization of the user's own: namespace, our overlay, our component.
            kustomization: dict[str, Any] = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": NAMESPACE,
                "resources": [f"../k8s/overlays/{overlay}"],
            }
            if component is not None:
                kustomization["components"] = [f"../k8s/components/{component}"]
            if settings:
                kustomization["configMapGenerator"] = [
                    {
                        "name": "distq-config",
                        "behavior": "merge",
                        "literals": [f"{k}={v}" for k, v in settings.items()],
                    }
                ]
            name = f"with-{overlay}-{component}" + ("-settings" if settings else "")
            target = self.dir / name
            target.mkdir(exist_ok=True)
            (target / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        done = run([str(TOOLS / "kubectl"), "kustomize", str(target)])
        if done.returncode != 0:
            raise CheckFailed(f"kubectl kustomize {target} failed:\n{done.stderr}")
        return done.stdout


def load(rendered: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def is_custom(doc: Doc) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS


def validate_core(docs: Iterable[Doc], workdir: Path, version: str) -> None:
    """kubernetes-validate --strict at ``version``; any error or unknown kind fails."""
    core = [d for d in docs if not is_custom(d)]
    path = workdir / f"core-{version}.yaml"
    path.write_text(yaml.safe_dump_all(core))
    done = run(
        [str(TOOLS / "kubernetes-validate"), "-k", version, "--strict", "--quiet", str(path)]
    )
    # A kind without a schema is only a warning to the tool: here it is a failure.
    if done.returncode != 0 or done.stdout.strip() or done.stderr.strip():
        raise CheckFailed(
            f"kubernetes-validate -k {version} --strict (exit {done.returncode}):\n"
            f"{done.stdout}{done.stderr}"
        )


def validate_custom(docs: Iterable[Doc], workdir: Path) -> list[str]:
    """validate.mjs on the custom resources; returns its OK lines, raises on any error."""
    verdicts = custom_verdicts([d for d in docs if is_custom(d)], workdir)
    errors = [line for lines in verdicts for line in lines if not line.startswith("OK ")]
    if errors:
        raise CheckFailed("validate.mjs:\n" + "\n".join(errors))
    return [line for lines in verdicts for line in lines]


def custom_verdicts(docs: list[Doc], workdir: Path) -> list[list[str]]:
    """validate.mjs on ``docs`` in one run: for each doc, its output lines (OK or ERROR)."""
    if not docs:
        return []
    path = workdir / "custom.json"
    path.write_text(json.dumps(docs))
    done = run(["node", str(CRD_VALIDATOR), str(path)])
    verdicts: list[list[str]] = [[] for _ in docs]
    stray = []
    for line in done.stdout.splitlines():
        match = re.match(r"^(?:OK|ERROR) \[(\d+)\] ", line)
        if match:
            verdicts[int(match.group(1))].append(line)
        else:
            stray.append(line)
    if done.returncode not in (0, 1) or stray or any(not v for v in verdicts):
        raise CheckFailed(
            f"validate.mjs (exit {done.returncode}) did not judge every object:\n"
            f"{done.stdout}{done.stderr}"
        )
    return verdicts


def checkov(files: Iterable[Path]) -> None:
    """checkov with k8s/checkov.yaml (the one place skips are listed) on rendered files."""
    args = [str(TOOLS / "checkov"), "--config-file", str(CHECKOV_CONFIG)]
    for f in files:
        args += ["-f", str(f)]
    done = run(args)
    if done.returncode != 0:
        raise CheckFailed(f"checkov (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def find(docs: Iterable[Doc], kind: str, name: str) -> Doc:
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise KeyError(f"no {kind}/{name} in the rendered manifests")


def find_prefixed(docs: Iterable[Doc], kind: str, prefix: str) -> Doc:
    """A generated object (ConfigMap, Secret) whose name kustomize suffixed with a hash."""
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"].startswith(prefix + "-"):
            return d
    raise KeyError(f"no {kind}/{prefix}-* in the rendered manifests")
