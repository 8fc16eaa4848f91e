"""Everything a ModelCar's config and manifest hold except its model layers' digests.

A one-pod build fills it with the layers it just pushed; `modelcar assemble` reads it
from the part records (``oci/partrecord.py``) and fills it with every part's layers. One
function writes both, so an assembled image has the very bytes, and digest, of a one-pod
build of the same model."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from modelcar_builder.oci import MEDIA_TYPE_CONFIG
from modelcar_builder.oci.image import Descriptor, build_config, build_manifest, canonical_json


class LayerBlob(Protocol):
    """A model layer as it sits in the target (engines.BuiltLayer, a part record's entry)."""

    @property
    def digest(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def diff_id(self) -> str: ...


@dataclass(frozen=True)
class ImageDocuments:
    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str


@dataclass(frozen=True)
class ImageTemplate:
    base_config: Mapping[str, Any] | None  # the base image's config, as it reads; None: scratch
    base_layers: tuple[Descriptor, ...]
    labels: Mapping[str, str]
    created: str
    history: tuple[str, ...]  # one comment per model layer
    platform: tuple[str, ...]
    layer_media_type: str
    layer_annotations: tuple[Mapping[str, str], ...]  # one per model layer
    annotations: Mapping[str, str]  # the manifest's

    def to_json(self) -> dict[str, Any]:
        return {
            "base_config": self.base_config,
            "base_layers": [d.to_dict() for d in self.base_layers],
            "labels": dict(self.labels),
            "created": self.created,
            "history": list(self.history),
            "platform": list(self.platform),
            "layer_media_type": self.layer_media_type,
            "layer_annotations": [dict(a) for a in self.layer_annotations],
            "annotations": dict(self.annotations),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageTemplate:
        """Raises KeyError, TypeError or ValueError on a malformed document."""
        return cls(
            base_config=doc["base_config"],
            base_layers=tuple(Descriptor.from_dict(d) for d in doc["base_layers"]),
            labels={str(k): str(v) for k, v in doc["labels"].items()},
            created=str(doc["created"]),
            history=tuple(str(h) for h in doc["history"]),
            platform=tuple(str(p) for p in doc["platform"]),
            layer_media_type=str(doc["layer_media_type"]),
            layer_annotations=tuple(
                {str(k): str(v) for k, v in a.items()} for a in doc["layer_annotations"]
            ),
            annotations={str(k): str(v) for k, v in doc["annotations"].items()},
        )

    @property
    def digest(self) -> str:
        """sha256 of the template's canonical JSON: parts that agree have the same one."""
        return sha256_of(canonical_json(_sorted(self.to_json())))


def _sorted(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_documents(template: ImageTemplate, layers: Sequence[LayerBlob]) -> ImageDocuments:
    """``layers``: the model layers in plan order; base layers go first, exactly as the
    base lists them."""
    if len(layers) != len(template.history):
        raise ValueError(f"{len(layers)} model layers for a template of {len(template.history)}")
    config = build_config(
        template.base_config,
        [layer.diff_id for layer in layers],
        template.labels,
        template.created,
        list(template.history),
        platform=template.platform,
    )
    descriptors = [*template.base_layers]
    descriptors += [
        Descriptor(template.layer_media_type, layer.digest, layer.size, annotations)
        for layer, annotations in zip(layers, template.layer_annotations, strict=True)
    ]
    config_digest = sha256_of(config)
    manifest = build_manifest(
        Descriptor(MEDIA_TYPE_CONFIG, config_digest, len(config)),
        descriptors,
        template.annotations,
    )
    return ImageDocuments(config, config_digest, manifest, sha256_of(manifest))
