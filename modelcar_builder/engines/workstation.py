"""What the workstation engines (podman, docker) share: they build in a local image store
from the generated context (:func:`~modelcar_builder.context.prepare_context`, one COPY
per planned layer), push with their own client, and then the pushed image is read back
here to fill the BuildResult; ``run_build`` verifies it by digest like any other engine.

The base image is read by :func:`~modelcar_builder.engines.base_image.load_base` (the code every
engine uses: platform choice, credentials, TLS), and the Containerfile names it by the
digest that code chose, so podman/docker build on exactly the base the plan counted."""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelcar_builder.engines import BuildRequest, BuildResult, LayerResult
from modelcar_builder.engines.base_image import BaseSource, load_base
from modelcar_builder.engines.catalog import check_stream
from modelcar_builder.errors import BaseImageNotFound, BuildFailed, ModelcarError, UsageError
from modelcar_builder.oci import DOCKER_MANIFEST, MEDIA_TYPE_MANIFEST
from modelcar_builder.target import LayoutTarget, RegistryTarget, parse_target

log = logging.getLogger("modelcar.engines.workstation")
_ACCEPT = (MEDIA_TYPE_MANIFEST, DOCKER_MANIFEST)
_BLOCK = 8 << 20


@dataclass(frozen=True)
class BaseRef:
    """How the Containerfile names the base: ``FROM {from_ref}``."""

    from_ref: str  # "scratch", "host/repo@sha256:…", or a local name loaded from a layout
    layers: int  # layers the base brings (the model layers follow them)
    registry: RegistryTarget | None  # where podman/docker pull it from (None: no pull)
    layout: LayoutTarget | None  # an oci: layout the engine must load first


def resolve_base(request: BuildRequest) -> BaseRef:
    """Read the base with the shared loader and pin it: registry bases by the manifest
    digest chosen for the platform, layout bases by a local name keyed on that digest."""
    if request.options.base_image == "scratch":
        return BaseRef("scratch", 0, None, None)
    base = load_base(request.options.base_image, request.platform, request.registry)
    try:
        image = base.image
        if image is None:  # only "scratch" has none, answered above
            raise BaseImageNotFound(f"base image {request.options.base_image}: no image was read")
        n = len(image.layers)
        target = parse_target(request.options.base_image)
        if isinstance(target, RegistryTarget):
            pinned = f"{target.ref.name}@{image.manifest_digest}"
            return BaseRef(pinned, n, target, None)
        name = f"localhost/modelcar-base:{image.manifest_digest.split(':')[1][:32]}"
        return BaseRef(name, n, None, target)
    finally:
        base.close()


def open_layout_base(request: BuildRequest) -> BaseSource:
    return load_base(request.options.base_image, request.platform, request.registry)


def require_files(request: BuildRequest, engine: str) -> Path:
    registry_target(request, engine)
    if request.files_dir is None:  # streamed: check_stream's own error for this engine
        check_stream(engine, request.plan.snapshot.kind)
        raise UsageError(f"--engine {engine} was given no model files")
    return request.files_dir


def registry_target(request: BuildRequest, engine: str = "podman/docker") -> RegistryTarget:
    """The target as a registry image: the workstation engines push to registries (or
    name the image in their local store), never to an oci: layout."""
    target = request.target
    if not isinstance(target, RegistryTarget):
        raise UsageError(
            f"--engine {engine} pushes to registries, not to oci: layouts",
            hint="use --engine native for oci:PATH, or a registry image; "
            "`--load --image NAME:TAG` builds into the local store without pushing",
        )
    return target


def local_name(request: BuildRequest) -> str:
    """The name the image gets in the local store: the target reference as written."""
    target = registry_target(request)
    return f"{target.ref.name}:{target.tag}"


def context_tar(directory: Path) -> Iterator[bytes]:
    """The build context as a tar stream made while it is sent (no temp copy of the
    model): sorted, owner 0:0, modes as prepare_context set them."""
    for path in [directory, *sorted(directory.rglob("*"))]:
        rel = path.relative_to(directory).as_posix()
        st = path.lstat()
        info = tarfile.TarInfo("." if rel == "." else f"./{rel}")
        info.mode = st.st_mode & 0o7777
        info.uid = info.gid = 0
        info.mtime = 0
        if path.is_dir():
            info.type = tarfile.DIRTYPE
            yield info.tobuf(tarfile.PAX_FORMAT)
            continue
        info.size = st.st_size
        yield info.tobuf(tarfile.PAX_FORMAT)
        with path.open("rb") as f:
            while block := f.read(_BLOCK):
                yield block
        if st.st_size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - st.st_size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def previous_blobs(request: BuildRequest) -> set[str]:
    """Blobs of the image the tag points to before the push: a re-push of the same model
    finds them there, so they count as not uploaded."""
    target = registry_target(request)
    try:
        with request.registry.client_for(target.ref) as client:
            if client.head_manifest(target.repository, target.tag, accept=_ACCEPT) is None:
                return set()
            doc = json.loads(client.get_manifest(target.repository, target.tag, _ACCEPT).body)
    except (ModelcarError, ValueError) as exc:
        log.debug("no previous image at %s: %s", target, exc)
        return set()
    return {d["digest"] for d in doc.get("layers", [])}


def pushed_result(
    request: BuildRequest, engine: str, digest: str, base_layers: int, before: set[str]
) -> BuildResult:
    """The BuildResult of an image an engine pushed, read back from the target (the
    verification that follows reads it again, by digest). The engine must have made one
    layer per planned layer on top of the base; anything else fails here."""
    target = registry_target(request)
    with request.registry.client_for(target.ref) as client:
        manifest = client.get_manifest(target.repository, digest, _ACCEPT)
        doc = json.loads(manifest.body)
        config = json.loads(client.read_blob(target.repository, doc["config"]["digest"]))
    layers = doc["layers"]
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    planned = request.plan.layers
    if len(layers) != base_layers + len(planned) or len(diff_ids) != len(layers):
        raise BuildFailed(
            f"{engine} made {len(layers)} layers; the base has {base_layers} and the plan "
            f"{len(planned)}",
            hint="a Containerfile step added or merged layers; report this as a bug",
        )
    results = []
    uploaded_bytes = 0
    for i, desc in enumerate(layers):
        fresh = desc["digest"] not in before
        uploaded_bytes += int(desc["size"]) if fresh else 0
        if i < base_layers:
            continue
        lp = planned[i - base_layers]
        results.append(
            LayerResult(
                desc["digest"],
                int(desc["size"]),
                diff_ids[i],
                desc["mediaType"],
                tuple(f.path for f in lp.files),
                fresh,
            )
        )
    return BuildResult(
        engine=engine,
        target=str(target),
        manifest_digest=digest,
        config_digest=doc["config"]["digest"],
        layers=tuple(results),
        base_layers=base_layers,
        bytes_uploaded=uploaded_bytes,
    )


def local_result(
    request: BuildRequest, engine: str, image_id: str, diff_ids: list[str], base_layers: int
) -> BuildResult:
    """The BuildResult of an image left in the local store only (``--load`` without a
    push): no registry digest exists, so the image id (its config digest) stands in."""
    planned = request.plan.layers
    if len(diff_ids) != base_layers + len(planned):
        raise BuildFailed(
            f"{engine} made {len(diff_ids)} layers; the base has {base_layers} and the plan "
            f"{len(planned)}",
            hint="a Containerfile step added or merged layers; report this as a bug",
        )
    layers = tuple(
        LayerResult(d, 0, d, "local", tuple(f.path for f in lp.files), False)
        for d, lp in zip(diff_ids[base_layers:], planned, strict=True)
    )
    return BuildResult(engine, local_name(request), image_id, image_id, layers, base_layers, 0)
