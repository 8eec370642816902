"""Offline validation of Roost's deployment files (run by scripts/validate-k8s, which installs
what this needs into .venv-test first).

1. Every *.yaml under deploy/k8s parses, and each is used by a kustomization (a stray or
   leftover manifest fails).
2. The kustomize base (deploy/k8s/base) and each overlay (deploy/k8s/overlays/*) are rendered
   by `render` below: a small renderer for exactly the kustomize features these files use
   (`resources`, `namespace`, `patches` with a `path` to a strategic-merge patch). Anything else
   in a kustomization.yaml is an error, not silently ignored. Where `kubectl` is installed,
   `kubectl kustomize` renders each one too and the two must agree (documents compared as
   data), which keeps this renderer honest; CI machines have no kubectl, so there it is the
   only renderer. (KUBECTL names another binary; KUBECTL=none skips the cross-check.)
3. Every rendered document is validated with kubernetes-validate, strict (an unknown field
   fails), against each Kubernetes version in K8S_VERSIONS (default: the oldest and the newest
   this script is meant for).
4. A few rules the schemas cannot know, each tied to how Roost behaves (docs/deploy.md): the
   grace period exceeds cluster.drain_timeout_ms and the leader hand-off, the disruption budget keeps a majority, the
   probes point where they should, the headless Service publishes not-ready pods, the
   StatefulSet's pods are created in parallel (a new cluster is never ready one pod at a time).
5. deploy/compose.yaml parses and names the three nodes and a client.

Exit status 0 when all holds, 1 with every problem printed otherwise.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
COMPOSE = REPO / "deploy" / "compose.yaml"
DEFAULT_VERSIONS = "1.31.0 1.37.0"

# The kustomization fields the renderer implements.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namespace", "patches"}
# Kinds the namespace transformer may set a namespace on (every kind these files use). A
# cluster-scoped kind (Namespace, ClusterRole...) would need kustomize's special cases.
NAMESPACED_KINDS = {
    "ConfigMap", "Secret", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget",
    "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding", "ServiceMonitor",
}
# Strategic merge: lists merged item by item on this key (Kubernetes' patchMergeKey); every
# other list in a patch replaces the base's. `ports` is keyed by what its items carry
# (containerPort in a container, port in a Service).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


class Problem(Exception):
    """A finding: the message names the file or the document."""


def load_yaml_documents(path: Path) -> list:
    try:
        with path.open() as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        raise Problem(f"{rel(path)}: not valid YAML: {e}") from None


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def doc_id(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{meta.get('name')}" + (f" (namespace {ns})" if ns else "")


# ---- rendering -------------------------------------------------------------------------------

def render(directory: Path, used: set[Path]) -> list[dict]:
    """The documents `kubectl kustomize directory` gives, for the supported subset."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise Problem(f"{rel(directory)}: no kustomization.yaml")
    used.add(kfile.resolve())
    docs = load_yaml_documents(kfile)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise Problem(f"{rel(kfile)}: must hold one mapping")
    k = docs[0]
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise Problem(f"{rel(kfile)}: kustomize fields {sorted(unknown)} are not supported by "
                      f"scripts/validate_k8s.py (supported: {sorted(KUSTOMIZATION_FIELDS)})")
    if k.get("kind") != "Kustomization":
        raise Problem(f"{rel(kfile)}: kind must be Kustomization")

    resources: list[dict] = []
    for entry in k.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(render(path, used))
        elif path.is_file():
            used.add(path)
            for d in load_yaml_documents(path):
                check_resource(d, path)
                resources.append(d)
        else:
            raise Problem(f"{rel(kfile)}: resource {entry!r} does not exist")
    seen = set()
    for d in resources:
        key = (d["apiVersion"], d["kind"], d["metadata"]["name"])
        if key in seen:
            raise Problem(f"{rel(kfile)}: {doc_id(d)} appears twice")
        seen.add(key)

    for entry in k.get("patches") or []:
        if not isinstance(entry, dict) or set(entry) != {"path"}:
            raise Problem(f"{rel(kfile)}: only `patches: - path: FILE` is supported, got {entry!r}")
        path = (directory / entry["path"]).resolve()
        if not path.is_file():
            raise Problem(f"{rel(kfile)}: patch {entry['path']!r} does not exist")
        used.add(path)
        for patch in load_yaml_documents(path):
            check_resource(patch, path)
            apply_patch(resources, patch, path)

    namespace = k.get("namespace")
    if namespace is not None:
        for d in resources:
            if d["kind"] not in NAMESPACED_KINDS:
                raise Problem(f"{rel(kfile)}: namespace on {doc_id(d)}: kind not supported")
            d["metadata"]["namespace"] = namespace
    return resources


def check_resource(d, path: Path):
    if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind") \
            or not isinstance(d.get("metadata"), dict) or not d["metadata"].get("name"):
        raise Problem(f"{rel(path)}: every document needs apiVersion, kind and metadata.name")


def apply_patch(resources: list[dict], patch: dict, path: Path):
    """Strategic merge of `patch` into the resource of the same apiVersion, kind and name."""
    for i, d in enumerate(resources):
        if (d["apiVersion"], d["kind"], d["metadata"]["name"]) == \
                (patch["apiVersion"], patch["kind"], patch["metadata"]["name"]):
            resources[i] = merge(d, patch, None, path)
            return
    raise Problem(f"{rel(path)}: patch target {doc_id(patch)} not among the resources")


def merge(base, patch, field, path: Path):
    if isinstance(patch, dict):
        if any(str(key).startswith("$") for key in patch):
            raise Problem(f"{rel(path)}: strategic-merge directives ($patch, ...) are not supported")
        if not isinstance(base, dict):
            return copy.deepcopy(patch)
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, key, path)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(patch, list):
        key = MERGE_KEYS.get(field)
        if field == "ports" and patch and isinstance(patch[0], dict):
            key = "containerPort" if "containerPort" in patch[0] else "port"
        keyed = key is not None and isinstance(base, list) and all(
            isinstance(x, dict) and key in x for x in base + patch)
        if not keyed:
            return copy.deepcopy(patch)
        merged = list(base)
        new = []
        for item in patch:
            for i, old in enumerate(merged):
                if old[key] == item[key]:
                    merged[i] = merge(old, item, None, path)
                    break
            else:
                new.append(copy.deepcopy(item))
        # As kustomize (kyaml) does: items the base did not have come first.
        return new + merged
    return copy.deepcopy(patch)


def kubectl_render(directory: Path) -> list[dict] | None:
    kubectl = shutil.which(os.environ.get("KUBECTL", "kubectl"))
    if kubectl is None:
        return None
    r = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise Problem(f"kubectl kustomize {rel(directory)} failed: {r.stderr.strip()}")
    return [d for d in yaml.safe_load_all(r.stdout) if d is not None]


def canonical(docs: list[dict]) -> dict[str, str]:
    return {doc_id(d): json.dumps(d, sort_keys=True) for d in docs}


# ---- rules the schemas do not know -------------------------------------------------------------

def roost_rules(name: str, docs: list[dict]) -> list[str]:
    problems = []
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    sets = by_kind.get("StatefulSet", [])
    if len(sets) != 1:
        return [f"{name}: expected one StatefulSet, found {len(sets)}"]
    sts = sets[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    replicas = spec.get("replicas", 1)
    containers = {c["name"]: c for c in pod["containers"]}
    roost = containers.get("roost")
    if roost is None:
        return [f"{name}: the StatefulSet has no container named roost"]

    if spec.get("podManagementPolicy") != "Parallel":
        problems.append(f"{name}: podManagementPolicy must be Parallel (a new cluster has no "
                        f"leader, so no ready pod, before a majority of the seeds runs)")

    config = None
    for cm in by_kind.get("ConfigMap", []):
        if "roost.toml" in (cm.get("data") or {}):
            try:
                config = tomllib.loads(cm["data"]["roost.toml"])
            except tomllib.TOMLDecodeError as e:
                problems.append(f"{name}: {doc_id(cm)}: roost.toml is not valid TOML: {e}")
    cluster = (config or {}).get("cluster") or {}
    drain_ms = cluster.get("drain_timeout_ms", 20000)
    # After the drain, a leader hands Raft leadership over: at most 4 election timeouts.
    hand_off_ms = 4 * cluster.get("election_timeout_ms", 500)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace * 1000 <= drain_ms + hand_off_ms + 5000:
        problems.append(f"{name}: terminationGracePeriodSeconds ({grace}) must exceed "
                        f"cluster.drain_timeout_ms ({drain_ms} ms) plus the leader hand-off "
                        f"(4 x cluster.election_timeout_ms: {hand_off_ms} ms) by more than 5 s")

    probes = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, want in probes.items():
        got = ((roost.get(probe) or {}).get("httpGet") or {}).get("path")
        if got != want:
            problems.append(f"{name}: the roost container's {probe} must GET {want} (got {got})")

    if "--node-id-from-hostname" not in (roost.get("args") or []):
        problems.append(f"{name}: the roost container must run with --node-id-from-hostname")

    majority_loss = replicas - (replicas // 2 + 1)
    for pdb in by_kind.get("PodDisruptionBudget", []):
        max_unavailable = pdb["spec"].get("maxUnavailable")
        if not isinstance(max_unavailable, int) or max_unavailable > max(majority_loss, 0) \
                or max_unavailable < 1:
            problems.append(f"{name}: {doc_id(pdb)}: maxUnavailable must be an integer between "
                            f"1 and {majority_loss} for {replicas} replicas (keep a majority)")
    if not by_kind.get("PodDisruptionBudget"):
        problems.append(f"{name}: no PodDisruptionBudget")

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = services.get(spec.get("serviceName"))
    if headless is None:
        problems.append(f"{name}: no Service named by serviceName {spec.get('serviceName')!r}")
    else:
        if headless["spec"].get("clusterIP") != "None":
            problems.append(f"{name}: {doc_id(headless)} must be headless (clusterIP: None)")
        if headless["spec"].get("publishNotReadyAddresses") is not True:
            problems.append(f"{name}: {doc_id(headless)} must publish not-ready addresses "
                            f"(peers find each other before any is ready)")
    return problems


def compose_rules() -> list[str]:
    docs = load_yaml_documents(COMPOSE)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        return [f"{rel(COMPOSE)}: must hold one mapping"]
    services = docs[0].get("services") or {}
    problems = []
    for want in ("roost-0", "roost-1", "roost-2", "client"):
        if want not in services:
            problems.append(f"{rel(COMPOSE)}: no service {want!r}")
    return problems


# ---- main ----------------------------------------------------------------------------------------

def main() -> int:
    versions = os.environ.get("K8S_VERSIONS", DEFAULT_VERSIONS).split()
    problems: list[str] = []
    used: set[Path] = set()
    targets = [K8S / "base"] + sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    validated = 0
    cross_checked = False

    # 1. Every YAML file parses (whether or not it is used).
    yaml_files = sorted(p.resolve() for p in K8S.rglob("*.yaml"))
    for path in yaml_files:
        try:
            load_yaml_documents(path)
        except Problem as e:
            problems.append(str(e))
    if problems:
        return report(problems, validated, versions, cross_checked)

    for target in targets:
        name = rel(target)
        try:
            docs = render(target, used)
        except Problem as e:
            problems.append(str(e))
            continue
        # 2. The same documents as kubectl kustomize, where kubectl exists.
        try:
            theirs = kubectl_render(target)
        except Problem as e:
            problems.append(str(e))
            theirs = None
        if theirs is not None:
            cross_checked = True
            ours, reference = canonical(docs), canonical(theirs)
            for key in sorted(set(ours) | set(reference)):
                if ours.get(key) != reference.get(key):
                    problems.append(f"{name}: {key} renders differently from kubectl kustomize:\n"
                                    f"  ours:    {ours.get(key)}\n  kubectl: {reference.get(key)}")
        # 3. Schemas, strict.
        before = len(problems)
        for d in docs:
            for version in versions:
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                    validated += 1
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    problems.append(f"{name}: {doc_id(d)} (Kubernetes {version}): "
                                    f"{path or '(document)'}: {e.message}")
                except (kubernetes_validate.SchemaNotFoundError,
                        kubernetes_validate.InvalidSchemaError) as e:
                    problems.append(f"{name}: {doc_id(d)} (Kubernetes {version}): {e}")
        # 4. Roost's own rules, on documents the schemas accepted (they assume the types).
        if len(problems) == before:
            problems.extend(roost_rules(name, docs))
        print(f"validate-k8s: {name}: {len(docs)} documents: "
              + ", ".join(doc_id(d) for d in docs))

    for path in yaml_files:
        if path not in used:
            problems.append(f"{rel(path)}: not used by any kustomization (leftover?)")

    # 5. The compose file.
    try:
        problems.extend(compose_rules())
    except Problem as e:
        problems.append(str(e))
    return report(problems, validated, versions, cross_checked)


def report(problems: list[str], validated: int, versions: list[str], cross_checked: bool) -> int:
    for p in problems:
        print(f"validate-k8s: FAIL: {p}", file=sys.stderr)
    renderer = ("rendering cross-checked with kubectl kustomize" if cross_checked
                else "kubectl not installed: rendering not cross-checked")
    if problems:
        print(f"validate-k8s: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"validate-k8s: ok: {validated} document validations (strict, Kubernetes "
          f"{', '.join(versions)}), {rel(COMPOSE)} parses; {renderer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
