"""Finding the base image (the layer that gives KServe its `sh`, `ln`, `sleep`) for the
engines: from a registry, from a local OCI layout, or none at all (`scratch`); and
copying its layers into the target."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from modelcar_builder.engines.sinks import Sink
from modelcar_builder.errors import BaseImageNotFound, MalformedBaseImage, RegistryUnreachable
from modelcar_builder.oci import INDEX_MEDIA_TYPES
from modelcar_builder.oci.image import (
    BaseImage,
    Descriptor,
    base_image,
    require_platform,
    select_platform,
)
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.reference import ImageRef
from modelcar_builder.registry import RegistryClient
from modelcar_builder.settings import RegistryOptions
from modelcar_builder.target import LayoutTarget, parse_target

log = logging.getLogger("modelcar.engines.base_image")


@dataclass
class BaseSource:
    image: BaseImage | None
    open_blob: Callable[[str], Iterator[bytes]]  # digest -> bytes, for copying layers
    host: str | None = None  # registry host and repo, for cross-repo mounts
    repo: str | None = None
    client: RegistryClient | None = None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _no_blobs(digest: str) -> Iterator[bytes]:
    raise AssertionError(f"scratch has no blob {digest}")


def load_base(
    name: str, platform: tuple[str, ...], registry: RegistryOptions, check_platform: bool = True
) -> BaseSource:
    """The base image for ``platform``; with ``check_platform`` its config must say that
    platform too (read already: a mismatch fails before any layer moves)."""
    if name == "scratch":
        log.warning(
            "base image 'scratch': the image has no sh/ln/sleep, so KServe's modelcar "
            "sidecar cannot start it; fine for oci:// fetch mode or inspection only"
        )
        return BaseSource(None, _no_blobs)
    target = parse_target(name)
    if isinstance(target, LayoutTarget):
        layout, image = _read_layout(target, platform, name)
        if check_platform:
            require_platform(image.config, platform, name)
        return BaseSource(image, lambda digest: _read_layout_blob(layout, digest))
    base = _from_registry(target.ref, platform, registry)
    try:
        if check_platform and base.image is not None:
            require_platform(base.image.config, platform, name)
    except BaseException:
        base.close()
        raise
    return base


def _read_layout(
    target: LayoutTarget, platform: tuple[str, ...], name: str
) -> tuple[OciLayout, BaseImage]:
    """The base from an ``oci:`` layout; the layout reader's bare errors (a missing
    layout or tag, a malformed index) become the base-image errors they are."""
    try:
        layout = OciLayout(target.path)
        return layout, layout.read_image(target.tag, platform=platform, name=name)
    except FileNotFoundError as exc:
        raise BaseImageNotFound(
            f"base image {name}: no OCI layout at {target.path} ({exc.filename} is missing)"
        ) from exc
    except KeyError as exc:  # no such tag, or several images and no tag
        raise BaseImageNotFound(f"base image {name}: {exc.args[0]}") from exc
    except (ValueError, TypeError) as exc:  # bad JSON, digest or layout version
        raise MalformedBaseImage(f"base image {name}: {exc}") from exc


def _read_layout_blob(layout: OciLayout, digest: str) -> Iterator[bytes]:
    with layout.open_blob(digest) as f:
        while block := f.read(8 << 20):
            yield block


def _from_registry(ref: ImageRef, platform, registry: RegistryOptions) -> BaseSource:
    try:
        return base_from_registry(ref, platform, registry.client_for(ref), str(ref))
    except RegistryUnreachable as exc:
        # The base is read first, before the target: offline or behind a proxy, the
        # default base is what fails, and the way out is another base, not the target.
        raise RegistryUnreachable(
            f"cannot read the base image {ref}: {exc.message}",
            hint=f"pass --base-image: a registry you can reach, oci:PATH[:TAG] for a local "
            f"layout, or scratch (no sh: KServe's sidecar mode needs one); {exc.hint}",
        ) from exc


def base_from_registry(
    ref: ImageRef, platform: tuple[str, ...], client: RegistryClient, name: str
) -> BaseSource:
    """The base image ``ref`` read with ``client`` (which the BaseSource then owns and
    closes; also on failure here). ``name`` is what the image's annotations call it."""
    try:
        if client.head_manifest(ref.repository, ref.reference) is None:
            raise BaseImageNotFound(
                f"base image {name} not found: the registry {ref.registry} has no "
                f"{ref.repository}:{ref.reference}"
            )
        manifest = client.get_manifest(ref.repository, ref.reference)
        if manifest.media_type in INDEX_MEDIA_TYPES:
            chosen = select_platform(json.loads(manifest.body), platform)
            manifest = client.get_manifest(ref.repository, chosen.digest)
        parsed = json.loads(manifest.body)
        config = client.read_blob(ref.repository, parsed["config"]["digest"])
        image = base_image(name, manifest.digest, parsed, config)
    except BaseException:
        client.close()
        raise
    return BaseSource(
        image,
        lambda d: client.get_blob(ref.repository, d),
        host=ref.api_host,
        repo=ref.repository,
        client=client,
    )


def copy_base(
    base: BaseSource,
    sink: Sink,
    has_blob: Callable[[str, int], bool] | None = None,
    placed: Callable[[Descriptor, bool], None] | None = None,
) -> None:
    """Put the base's layers into ``sink``, each unless it is there (``has_blob``, by
    default the sink's own check), by a cross-repository mount where the registry allows,
    else by upload. ``placed(layer, uploaded)`` hears of each mounted or uploaded layer.
    Only the layers: the image gets a config of its own, the base's is never referenced."""
    if base.image is None:
        return
    for desc in base.image.layers:
        if (has_blob or sink.has_blob)(desc.digest, desc.size):
            continue
        if base.host and sink.mount(desc.digest, base.host, base.repo or ""):
            if placed is not None:
                placed(desc, False)
            continue
        sink.put_blob(desc.digest, desc.size, partial(base.open_blob, desc.digest))
        if placed is not None:
            placed(desc, True)
