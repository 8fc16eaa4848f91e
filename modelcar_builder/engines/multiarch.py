"""``--platform linux/amd64,linux/arm64``: one ModelCar per platform under one tag, as an
OCI image index (native engine, registry target).

The model layers are pushed once (they are the same bytes for every platform: a ModelCar's
model is data, not code); each platform's manifest lists its own base's layers, then those
same model layer descriptors, and has its own config (the base's, with the platform's
os/architecture and the model's diff_ids). The tag points to the index."""

from __future__ import annotations

import dataclasses
import logging
import time
from functools import partial

from modelcar_builder.engines import BuildRequest, BuildResult, layer_results
from modelcar_builder.engines.assemble import assemble_image
from modelcar_builder.engines.base_image import copy_base, load_base
from modelcar_builder.oci import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.index import build_index, platform_text
from modelcar_builder.oci.layer import layer_media_type

log = logging.getLogger("modelcar.engines.multiarch")


def build_multiarch(engine, request: BuildRequest) -> BuildResult:
    """The native engine's build for several platforms (``request.platforms``)."""
    from modelcar_builder.engines.native import open_sink

    timings: dict[str, float] = {}
    started = time.monotonic()
    media_type = layer_media_type(request.compression)
    sink, client = open_sink(request)
    bases = []
    try:
        for platform in request.platforms:  # every base is read before a model byte moves
            bases.append(load_base(request.options.base_image, platform, request.registry))
        for base in bases:
            copy_base(base, sink)
        timings["base"] = time.monotonic() - started
        state = request.build_state()
        pushed = engine.push_layers(request, sink, state)  # once, for every platform
        for layer in request.plan.layers:
            request.wait_for(layer)
        timings["layers"] = time.monotonic() - started - timings["base"]
        entries = []
        config_digest = ""
        for platform, base in zip(request.platforms, bases, strict=True):
            one = dataclasses.replace(request, platform=platform)
            docs = assemble_image(one, base, pushed, media_type)
            if not sink.has_blob(docs.config_digest, len(docs.config)):
                sink.put_blob(docs.config_digest, len(docs.config), partial(list, (docs.config,)))
            digest = sink.put_manifest(docs.manifest, MEDIA_TYPE_MANIFEST, docs.manifest_digest)
            entries.append((platform, digest, len(docs.manifest)))
            config_digest = config_digest or docs.config_digest
            log.info("%s: manifest %s", platform_text(platform), digest)
        index = build_index(entries)
        index_digest = sink.put_manifest(index, MEDIA_TYPE_INDEX, request.target.tag)
        log.info(
            "image index %s: %s",
            index_digest,
            ", ".join(platform_text(p) for p in request.platforms),
        )
    finally:
        for base in bases:
            base.close()
        if client is not None:
            client.close()
    timings["total"] = time.monotonic() - started
    layers = layer_results(request.plan, pushed, media_type)
    return BuildResult(
        engine=engine.name,
        target=str(request.target),
        manifest_digest=index_digest,
        config_digest=config_digest,
        layers=layers,
        base_layers=len(bases[0].image.layers) if bases[0].image else 0,
        bytes_uploaded=sink.bytes_uploaded,
        timings=timings,
    )
