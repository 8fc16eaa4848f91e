"""A CNCF ModelPack manifest (github.com/modelpack/model-spec) on a ModelCar's own blobs.

The ModelPack layers *are* the ModelCar's model layers: same digest, same size, same
annotations (``org.cncf.model.filepath`` names each file's path; the tar members sit
under ``models/``, as olot writes them). Only the media type says what kind of file a
layer holds, so no weight byte is uploaded twice. The config names the model (name,
Hub revision, source URL) and lists the layers' diff_ids (``modelfs``).

Kinds, by file name: weights (.safetensors, .bin, .gguf, …), code (.py, …), docs (README,
LICENSE, .md, …), and weight configs (everything else: config.json, tokenizer files).
ModelCar's small-files layer holds several files; ModelPack types a layer by one kind, so
it is typed by its files' kind when they agree, and as a weight config when they do not
(its ``io.modelcar.files`` annotation lists every file). Splitting it would upload those
small files again; DECISIONS: docs/decisions.md "ModelPack on the same blobs"."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from modelcar_builder.oci import ANNOTATION_FILEPATH, ANNOTATION_FILES, MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.image import canonical_json

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.config.v1+json"
_WEIGHTS = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".onnx", ".h5", ".msgpack",
            ".ckpt", ".tflite", ".pb", ".npz", ".nemo", ".mlmodel", ".ot")  # fmt: skip
_CODE = (".py", ".sh", ".ipynb", ".js", ".cpp", ".c", ".cu", ".go", ".rs")
_DOC_NAMES = ("readme", "license", "licence", "notice", "model_card", "modelcard", "usage")
_DOC_EXT = (".md", ".rst", ".pdf", ".txt", ".html")
_SUFFIX = {"none": "tar", "gzip": "tar+gzip", "zstd": "tar+zstd"}


def file_kind(path: str) -> str:
    """``weight``, ``code``, ``doc`` or ``weight.config`` (model-spec's layer kinds)."""
    name = posixpath.basename(path).lower()
    if name.endswith(_WEIGHTS):
        return "weight"
    if name.endswith(_CODE):
        return "code"
    if name.endswith(_DOC_EXT) or name.split(".", 1)[0] in _DOC_NAMES:
        return "doc"
    return "weight.config"


def layer_paths(annotations: Mapping[str, str]) -> list[str]:
    """The model paths a ModelCar layer holds, from its descriptor's annotations."""
    if ANNOTATION_FILES in annotations:
        return list(json.loads(annotations[ANNOTATION_FILES]))
    return [annotations[ANNOTATION_FILEPATH].removeprefix("/models/")]


def layer_kind(annotations: Mapping[str, str]) -> str:
    kinds = {file_kind(p) for p in layer_paths(annotations)}
    return kinds.pop() if len(kinds) == 1 else "weight.config"


def media_type(kind: str, layer_media_type: str) -> str:
    compression = "gzip" if layer_media_type.endswith("+gzip") else (
        "zstd" if layer_media_type.endswith("+zstd") else "none"
    )  # fmt: skip
    return f"application/vnd.cncf.model.{kind}.v1.{_SUFFIX[compression]}"


def model_layers(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ModelCar manifest's model layer descriptors (those with a model file path)."""
    return [
        dict(layer)
        for layer in manifest.get("layers", [])
        if ANNOTATION_FILEPATH in (layer.get("annotations") or {})
    ]


def build_config(
    name: str, revision: str | None, source_url: str | None, created: str,
    diff_ids: Sequence[str],
) -> bytes:  # fmt: skip
    descriptor: dict[str, Any] = {"name": name, "createdAt": created}
    if revision:
        descriptor["revision"] = revision
    if source_url:
        descriptor["sourceURL"] = source_url
    doc = {
        "descriptor": descriptor,
        "config": {},
        "modelfs": {"type": "layers", "diffIds": list(diff_ids)},
    }
    return canonical_json(doc)


def build_manifest(
    modelcar_manifest: Mapping[str, Any],
    config: bytes,
    config_digest: str,
    subject: Mapping[str, Any] | None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ModelPack manifest: the ModelCar's model layer descriptors, retyped by kind."""
    layers = []
    for layer in model_layers(modelcar_manifest):
        kind = layer_kind(layer["annotations"])
        layers.append({**layer, "mediaType": media_type(kind, layer["mediaType"])})
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config)},
        "layers": layers,
    }
    if subject is not None:
        doc["subject"] = dict(subject)
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return doc
