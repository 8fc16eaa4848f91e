"""The image config and manifest of a ModelCar, from its base and its model layers.

Both engines end here, so the two write the same labels, annotations, history and
platform — only the layer blobs differ in how they were made."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from modelcar_builder import __version__
from modelcar_builder.engines import BuildRequest, BuiltLayer
from modelcar_builder.engines.base_image import BaseSource
from modelcar_builder.oci import MEDIA_TYPE_CONFIG
from modelcar_builder.oci.image import Descriptor, build_config, build_manifest, image_annotations
from modelcar_builder.oci.layer import layer_annotations


@dataclass(frozen=True)
class ImageDocuments:
    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assemble_image(
    request: BuildRequest,
    base: BaseSource,
    layers: Sequence[BuiltLayer],
    media_type: str,
) -> ImageDocuments:
    """``layers`` in plan order; base layers go first, exactly as the base lists them."""
    plan = request.plan
    config = build_config(
        base.image.config if base.image else None,
        [layer.diff_id for layer in layers],
        plan.snapshot.image_labels,
        request.created,
        [f"modelcar {lp.name}: {len(lp.files)} file(s)" for lp in plan.layers],
        platform=request.platform,
    )
    descriptors = [*base.image.layers] if base.image else []
    descriptors += [
        Descriptor(media_type, layer.digest, layer.size, layer_annotations(lp.files))
        for layer, lp in zip(layers, plan.layers, strict=True)
    ]
    annotations = image_annotations(
        plan.snapshot.source_url,
        plan.snapshot.commit,
        request.created,
        __version__,
        base_name=base.image.name if base.image else None,
        base_digest=base.image.manifest_digest if base.image else None,
    )
    config_digest = _sha256(config)
    manifest = build_manifest(
        Descriptor(MEDIA_TYPE_CONFIG, config_digest, len(config)), descriptors, annotations
    )
    return ImageDocuments(config, config_digest, manifest, _sha256(manifest))
