"""The image config and manifest of a ModelCar, from its base and its model layers.

Every engine ends here, and so does `modelcar assemble` (through the same
``oci.template.image_documents``), so all write the same labels, annotations, history and
platform — only the layer blobs differ in how they were made."""

from __future__ import annotations

from collections.abc import Sequence

from modelcar_builder import __version__
from modelcar_builder.engines import BuildRequest, BuiltLayer
from modelcar_builder.engines.base_image import BaseSource
from modelcar_builder.oci.image import image_annotations
from modelcar_builder.oci.layer import layer_annotations
from modelcar_builder.oci.template import ImageDocuments, ImageTemplate, image_documents
from modelcar_builder.plan import Plan

__all__ = ["BuiltLayer", "ImageDocuments", "assemble_image", "image_template"]


def image_template(
    request: BuildRequest, base: BaseSource, media_type: str, plan: Plan | None = None
) -> ImageTemplate:
    """What the image holds besides its model layers' digests; ``plan`` (default: the
    request's) is the whole model's, whose layers the image lists."""
    plan = plan or request.plan
    image = base.image
    return ImageTemplate(
        base_config=image.config if image else None,
        base_layers=tuple(image.layers) if image else (),
        labels=plan.snapshot.image_labels,
        created=request.created,
        history=tuple(f"modelcar {lp.name}: {len(lp.files)} file(s)" for lp in plan.layers),
        platform=request.platform,
        layer_media_type=media_type,
        layer_annotations=tuple(layer_annotations(lp.files) for lp in plan.layers),
        annotations=image_annotations(
            plan.snapshot.source_url,
            plan.snapshot.commit,
            request.created,
            __version__,
            base_name=image.name if image else None,
            base_digest=image.manifest_digest if image else None,
        ),
    )


def assemble_image(
    request: BuildRequest,
    base: BaseSource,
    layers: Sequence[BuiltLayer],
    media_type: str,
) -> ImageDocuments:
    """``layers`` in plan order; base layers go first, exactly as the base lists them."""
    return image_documents(image_template(request, base, media_type), layers)
