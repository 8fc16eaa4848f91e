"""Upstream schemas for what deploy/ renders to, with no cluster: Tekton's v1 and v1beta1
OpenAPI (swagger.json) and KServe's InferenceService CRD schema, vendored in tests/data/
(README there names the commits), validated with jsonschema.

Tekton's swagger names Kubernetes types (``v1.EnvVar``, ``v1.Volume``, ``v1.ObjectMeta``)
without defining them: they resolve to kubernetes-validate's own strict definitions for
one Kubernetes version. Three of Tekton's Go types marshal to JSON by their own code, not
as the struct the swagger describes, so they are described by what they accept:
``ParamValue`` (a string, an array of strings or a map of strings) and ``metav1.Duration``
(a string). Every Tekton object with declared properties is made strict (no unknown
field), as ``kubernetes-validate --strict`` does for Kubernetes objects."""

from __future__ import annotations

import copy
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

DATA = Path(__file__).resolve().parent.parent / "data"
K8S_VERSION = "1.37"
_PARAM_VALUE = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}},
        {"type": "object", "additionalProperties": {"type": "string"}},
    ]
}
_DURATION = {"type": "string"}
# Referenced, never defined, and outside what deploy/ writes (status fields, feature flags).
_OPAQUE = {
    "knative.Condition",
    "k8s.io.apimachinery.pkg.runtime.RawExtension",
    "github.com.tektoncd.pipeline.pkg.apis.config.FeatureFlags",
    "github.com.tektoncd.pipeline.pkg.apis.run.v1beta1.CustomRunStatus",
    "github.com.tektoncd.pipeline.pkg.result.RunResult",
    "v1alpha1.PipelineResourceSpec",
}


def _k8s_defs() -> dict[str, Any]:
    import kubernetes_validate

    base = Path(os.path.dirname(kubernetes_validate.__file__)) / "kubernetes-json-schema"
    path = base / f"v{K8S_VERSION}.0-local-strict" / "_definitions.json"
    return json.loads(path.read_text())["$defs"]


@cache
def _tekton_schema() -> dict[str, Any]:
    k8s = _k8s_defs()
    tekton = {
        version: json.loads((DATA / "tekton" / f"{version}-swagger.json").read_text())[
            "definitions"
        ]
        for version in ("v1", "v1beta1")
    }
    defs: dict[str, Any] = {}

    def target(name: str, version: str) -> str | dict[str, Any]:
        """A $ref target in the combined $defs, or an inline schema."""
        if name.endswith("ParamValue"):
            return _PARAM_VALUE
        if name == "v1.Duration":
            return _DURATION
        if name in _OPAQUE:
            return {}
        for v in (version, "v1"):  # v1beta1 names some of v1's types (ParamSpec, RefSource)
            if name in tekton[v]:
                return f"tekton-{v}:{name}"
        short = name.split(".", 1)[1]
        for group in ("io.k8s.api.core.v1.", "io.k8s.apimachinery.pkg.apis.meta.v1."):
            if group + short in k8s:
                return group + short
        raise KeyError(f"Tekton {version} swagger names {name}, defined nowhere")

    def fix(node: Any, version: str) -> Any:
        if isinstance(node, list):
            return [fix(v, version) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: fix(v, version) for k, v in node.items() if k != "$ref"}
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            resolved = target(name, version)
            if isinstance(resolved, dict):
                out.update(resolved)
            else:
                out["$ref"] = f"#/$defs/{resolved}"
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out

    for version, swagger in tekton.items():
        for name, schema in swagger.items():
            defs[f"tekton-{version}:{name}"] = fix(schema, version)
    for name, schema in k8s.items():
        text = json.dumps(schema).replace('"/api/_definitions.json#/$defs/', '"#/$defs/')
        defs[name] = json.loads(text)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs}


def tekton_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema error of one Tekton object (Task, Pipeline, PipelineRun: v1;
    StepAction: v1beta1), each as 'path: message'."""
    version = doc["apiVersion"].split("/", 1)[1]
    schema = dict(_tekton_schema(), **{"$ref": f"#/$defs/tekton-{version}:{version}.{doc['kind']}"})
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


@cache
def _isvc_schema() -> dict[str, Any]:
    return json.loads((DATA / "kserve" / "inferenceservice-v1beta1-schema.json").read_text())


def inferenceservice_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of an InferenceService against KServe's CRD (v1beta1), made strict
    the way the API server prunes: a field the schema does not declare is an error."""
    schema = _strict(copy.deepcopy(_isvc_schema()))
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        for v in node.values():
            _strict(v)
        if (
            node.get("type") == "object"
            and "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node.setdefault("additionalProperties", False)
    elif isinstance(node, list):
        for v in node:
            _strict(v)
    return node
