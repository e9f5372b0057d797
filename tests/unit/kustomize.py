"""The subset of `kustomize build` that deploy/k8s uses, for tests on machines without kustomize or kubectl.

Supported, with kustomize's semantics: `resources` (files and directories holding a kustomization.yaml),
`namespace` (namespaced kinds only), `images` (name -> newName/newTag), `labels` with
includeSelectors: false (metadata only), and `patches` by path: a YAML list is a JSON6902 patch applied
to every resource its `target` selects (kind, name, labelSelector of equality terms); a resource is a
strategic-merge patch, which merges lists of named items (containers, env, volumes, ...) by name for
built-in kinds and replaces lists for custom resources (where kustomize falls back to a JSON merge patch).
Anything else raises, so a manifest using more than this cannot pass unnoticed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]
CLUSTER_KINDS = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
BUILTIN_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}
KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "labels", "patches"}


def build(directory: Path) -> list[Resource]:
    """The resources `kustomize build directory` would print, in order."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise ValueError(f"{directory}: kustomization fields not supported here: {sorted(unknown)}")
    out: list[Resource] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        out += build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in spec.get("patches", []):
        _patch(out, directory / patch["path"], patch.get("target"))
    for label in spec.get("labels", []):
        if label.get("includeSelectors", False):
            raise ValueError("labels with includeSelectors are not supported here")
        for r in out:
            r.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for r in out:
            _retag(r, image)
    if "namespace" in spec:
        for r in out:
            if r["kind"] not in CLUSTER_KINDS:
                r["metadata"]["namespace"] = spec["namespace"]
    return out


def _patch(resources: list[Resource], path: Path, target: dict[str, Any] | None) -> None:
    doc = yaml.safe_load(path.read_text())
    if isinstance(doc, list):
        if target is None:
            raise ValueError(f"{path}: a JSON6902 patch needs a target")
        hits = [r for r in resources if _selected(r, target)]
        if not hits:
            raise ValueError(f"{path}: the target selects nothing")
        for r in hits:
            for op in doc:
                _json6902(r, op)
        return
    hits = [
        r for r in resources if r["kind"] == doc["kind"] and r["metadata"]["name"] == doc["metadata"]["name"]
    ]
    if len(hits) != 1:
        raise ValueError(f"{path}: patches {len(hits)} resources, expected 1")
    hits[0].update(_merge(hits[0], doc, by_name=hits[0]["apiVersion"] in BUILTIN_GROUPS))


def _selected(r: Resource, target: dict[str, Any]) -> bool:
    labels = r.get("metadata", {}).get("labels", {})
    for term in filter(None, str(target.get("labelSelector", "")).split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return all(r.get(k) == target[k] for k in ("kind",) if k in target) and (
        "name" not in target or r["metadata"]["name"] == target["name"]
    )


def _json6902(r: Resource, op: dict[str, Any]) -> None:
    if op["op"] != "add":
        raise ValueError(f"JSON6902 op {op['op']!r} not supported here")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].strip("/").split("/")]
    node: Any = r
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
    else:
        node[last] = copy.deepcopy(op["value"])


def _merge(base: Any, patch: Any, by_name: bool) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value, by_name) if key in base else copy.deepcopy(value)
        return out
    if by_name and isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        out_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            at = next((i for i, b in enumerate(out_list) if b["name"] == item["name"]), None)
            if at is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[at] = _merge(out_list[at], item, by_name)
        return out_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


def _retag(r: Resource, image: dict[str, Any]) -> None:
    pod = r.get("spec", {}).get("template", {}).get("spec", {})
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        name, _, tag = c["image"].partition(":")
        if name == image["name"]:
            c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
