"""The cheap checks: what a runtime will trust, read from the manifest and config alone.

A runtime pulls by the manifest, unpacks each layer and compares what it unpacked with the
config's ``rootfs.diff_ids``; for an uncompressed layer the blob *is* the unpacked tar, so
its digest must equal its diff_id. These checks need no layer byte, only the manifest and
the config (a few KiB), and catch a dropped layer, a swapped uncompressed layer and a
manifest pointing to another image's config before any runtime does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from modelcar_builder.errors import VerificationFailed
from modelcar_builder.oci import (
    ANNOTATION_FILEPATH,
    ANNOTATION_REVISION,
    ANNOTATION_SOURCE,
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_FOREIGN_GZIP,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    INDEX_MEDIA_TYPES,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_NONDIST,
    MEDIA_TYPE_LAYER_NONDIST_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    MEDIA_TYPE_MANIFEST,
)
from modelcar_builder.signing.modelsig import SIGNATURE_NAME

UNCOMPRESSED = frozenset({MEDIA_TYPE_LAYER, MEDIA_TYPE_LAYER_NONDIST, DOCKER_LAYER})
GZIP = frozenset(
    {MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_NONDIST_GZIP, DOCKER_LAYER_GZIP,
     DOCKER_LAYER_FOREIGN_GZIP}
)  # fmt: skip
ZSTD = frozenset({MEDIA_TYPE_LAYER_ZSTD})
# Each manifest type names its own config type; a mix is an image no runtime should trust.
CONFIG_TYPE = {MEDIA_TYPE_MANIFEST: MEDIA_TYPE_CONFIG, DOCKER_MANIFEST: DOCKER_CONFIG}
# Provenance the builder writes both as manifest annotations and as config labels: if the
# two disagree, the manifest points to another image's config.
SHARED_KEYS = (ANNOTATION_SOURCE, ANNOTATION_REVISION)
MAX_CONFIG = 16 * 1024 * 1024


@dataclass(frozen=True)
class Layer:
    number: int  # 1-based: the way messages name it ("layer 3 of 4")
    media_type: str
    digest: str
    size: int
    diff_id: str
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def compression(self) -> str:
        if self.media_type in UNCOMPRESSED:
            return "none"
        return "gzip" if self.media_type in GZIP else "zstd"

    @property
    def annotated(self) -> bool:
        """Our tar writer's layers (native, buildah, the signature layer) name the /models
        path they fill; Containerfile builds (podman, docker) and base layers name none.
        An annotated layer must hold /models and nothing else; of the others only --deep,
        reading the tar, can tell which hold /models (verify/layertar.py)."""
        return self.annotations.get(ANNOTATION_FILEPATH, "").startswith("/models")

    @property
    def signature(self) -> bool:
        """build --sign-key's own layer: /models/model.sig alone, not a model file."""
        return self.annotations.get(ANNOTATION_FILEPATH) == f"/models/{SIGNATURE_NAME}"

    def name(self, total: int) -> str:
        return f"layer {self.number} of {total} ({self.digest})"


@dataclass(frozen=True)
class Image:
    media_type: str
    config_digest: str
    config_size: int
    layers: tuple[Layer, ...]
    labels: dict[str, str]
    checks: tuple[str, ...]  # what was proved, one phrase each
    unchecked: tuple[str, ...] = ()  # what only --deep can tell of this image, one phrase each

    @property
    def total_size(self) -> int:
        return self.config_size + sum(layer.size for layer in self.layers)


def parse_json(body: bytes, what: str) -> dict:
    try:
        doc = json.loads(body)
    except ValueError:
        raise VerificationFailed(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise VerificationFailed(f"{what} is not a JSON object")
    return doc


def descriptors(doc: dict, header_type: str, where: str) -> tuple[str, dict, list[dict]]:
    """The manifest's media type, config descriptor and layer descriptors, shape-checked."""
    media_type = doc.get("mediaType") or header_type
    if media_type in INDEX_MEDIA_TYPES or "manifests" in doc:
        raise VerificationFailed(f"{where}: the manifest is an index ({media_type}), not an image")
    if media_type not in CONFIG_TYPE:
        raise VerificationFailed(f"{where}: the manifest's mediaType {media_type!r} is unknown")
    if doc.get("schemaVersion") != 2:
        raise VerificationFailed(f"{where}: the manifest's schemaVersion is not 2")
    config, layers = doc.get("config"), doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise VerificationFailed(f"{where}: the manifest has no config or layers")
    for desc in (config, *layers):
        if not isinstance(desc, dict) or "digest" not in desc or "size" not in desc:
            raise VerificationFailed(f"{where}: the manifest has a descriptor without digest/size")
    return media_type, config, layers


def coherent_image(
    doc: dict,
    header_type: str,
    config_bytes: bytes,
    expected_labels: Mapping[str, str],
    where: str,
) -> Image:
    """Check manifest and config against each other and the ModelCar contract."""
    media_type, config_desc, layer_descs = descriptors(doc, header_type, where)
    _check_config_blob(config_bytes, config_desc, media_type, where)
    config = parse_json(config_bytes, f"{where}: the config")
    # First: a config from another image also breaks the layer checks below, but this
    # names the cause.
    _check_provenance(doc.get("annotations") or {}, _labels(config), where)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list):
        raise VerificationFailed(f"{where}: the config has no rootfs.diff_ids")
    if len(diff_ids) != len(layer_descs):
        raise VerificationFailed(
            f"{where}: the manifest lists {len(layer_descs)} layers but the config's "
            f"rootfs.diff_ids {len(diff_ids)}: a layer was dropped or added"
        )
    layers = tuple(
        Layer(i + 1, str(d.get("mediaType", "")), d["digest"], int(d["size"]), str(diff_id),
              dict(d.get("annotations") or {}))
        for i, (d, diff_id) in enumerate(zip(layer_descs, diff_ids, strict=True))
    )  # fmt: skip
    same = _check_layers(layers, where)
    labels = check_runtime_config(config, expected_labels, where)
    checks = (
        f"manifest {media_type} and config {config_desc['mediaType']} (sha256 and size)",
        f"{len(layers)} layers = {len(diff_ids)} rootfs.diff_ids, every layer media type known",
        f"{same} uncompressed layer digest(s) = their diff_id",
        "no Entrypoint, no Cmd"
        + (f", {len(expected_labels)} label(s) as asked" if expected_labels else ""),
    )
    return Image(media_type, config_desc["digest"], int(config_desc["size"]), layers, labels,
                 checks, _unannotated(layers))  # fmt: skip


def _unannotated(layers: tuple[Layer, ...]) -> tuple[str, ...]:
    """A Containerfile build (podman, docker) names no layer's /models path: without
    reading the layers nothing says which of them hold the model. Not a fault: said."""
    if not layers or any(layer.annotated and not layer.signature for layer in layers):
        return ()
    return (
        f"which of the {len(layers)} layers hold /models: none is annotated with its "
        "/models path, as in a Containerfile build (podman, docker); --deep reads their tars",
    )


def _check_config_blob(data: bytes, desc: dict, manifest_type: str, where: str) -> None:
    want = CONFIG_TYPE[manifest_type]
    if desc.get("mediaType") != want:
        raise VerificationFailed(
            f"{where}: the config's mediaType is {desc.get('mediaType')!r}, "
            f"a {manifest_type} needs {want}"
        )
    got = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if got != desc["digest"]:
        raise VerificationFailed(f"{where}: the config blob {desc['digest']} hashes to {got}")
    if len(data) != int(desc["size"]):
        raise VerificationFailed(
            f"{where}: the config is {len(data)} bytes, the manifest says {desc['size']}"
        )


def _check_layers(layers: tuple[Layer, ...], where: str) -> int:
    """Media types known; an uncompressed layer's digest is its diff_id. Returns how many
    layers that second check covered (for gzip ones only --deep can tell)."""
    same = 0
    for layer in layers:
        name = layer.name(len(layers))
        if layer.media_type not in UNCOMPRESSED | GZIP | ZSTD:
            raise VerificationFailed(f"{where}: {name} has unknown mediaType {layer.media_type!r}")
        if layer.compression == "none":
            if layer.digest != layer.diff_id:
                raise VerificationFailed(
                    f"{where}: {name} is uncompressed, so its digest must be the config's "
                    f"diff_id {layer.diff_id}; the layer was swapped or the config is another "
                    "image's"
                )
            same += 1
    return same


def check_runtime_config(config: dict, expected: Mapping[str, str], where: str) -> dict[str, str]:
    cfg = config.get("config") or {}
    # KServe starts the modelcar container with args only: an Entrypoint would swallow them.
    if cfg.get("Entrypoint"):
        raise VerificationFailed(f"{where} has an Entrypoint {cfg['Entrypoint']}; must have none")
    if cfg.get("Cmd"):
        raise VerificationFailed(f"{where} has a Cmd {cfg['Cmd']}; must have none")
    labels = cfg.get("Labels") or {}
    for key, value in expected.items():
        if key not in labels:
            raise VerificationFailed(f"{where} lacks label {key}")
        if labels[key] != value:
            raise VerificationFailed(f"{where} has label {key}={labels[key]!r}, expected {value!r}")
    return dict(labels)


def _labels(config: dict) -> dict[str, str]:
    return dict((config.get("config") or {}).get("Labels") or {})


def _check_provenance(
    annotations: Mapping[str, str], labels: Mapping[str, str], where: str
) -> None:
    for key in SHARED_KEYS:
        if key in annotations and key in labels and annotations[key] != labels[key]:
            raise VerificationFailed(
                f"{where}: the manifest says {key}={annotations[key]!r} but the config's label "
                f"is {labels[key]!r}: the manifest points to another image's config"
            )
