"""What every command asks before anything is downloaded: ``resolve`` pins the source and
plans its layers, ``count_base_layers`` and ``pinned_base`` read the base image's
manifest. The disk each engine needs is the engine registry's (``engines.catalog``);
the fetch, the engine and the verification are the run's (``run.py``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from modelcar_builder.auth import check_token
from modelcar_builder.buildopts import SourceOptions
from modelcar_builder.errors import EmptySelection, ModelcarError
from modelcar_builder.plan import DEFAULT_LAYER_THRESHOLD, DEFAULT_MAX_LAYERS, Plan, make_plan
from modelcar_builder.selection import Selection
from modelcar_builder.settings import RegistryOptions
from modelcar_builder.shards import check_complete
from modelcar_builder.snapshot import FileEntry, Snapshot
from modelcar_builder.source import parse_source
from modelcar_builder.source.local import local_snapshot

log = logging.getLogger("modelcar.pipeline")

if TYPE_CHECKING:
    from modelcar_builder.source.hub import HubAccess


@dataclass(frozen=True)
class Resolved:
    plan: Plan
    access: HubAccess | None  # None for local sources


def resolve(
    source: str,
    selection: Selection,
    hf_token_file: str | None = None,
    threshold: int = DEFAULT_LAYER_THRESHOLD,
    source_url: str | None = None,
    max_layers: int = DEFAULT_MAX_LAYERS,
    base_layers: int = 0,
    allow_incomplete: bool = False,
    hub_timeout: float | None = None,
    max_layer_size: int | None = None,
    allow_large_layer: bool = False,
) -> Resolved:
    """Pin the source (a Hub revision becomes its commit), check that every shard its
    indexes name is selected, and plan the layers within the layer budget."""
    spec = parse_source(source)
    access = None
    if spec.kind == "hub":
        # Imported here: huggingface_hub costs ~0.2 s at start-up that local builds skip.
        from modelcar_builder.source.hub import hub_access, hub_snapshot

        access = hub_access(hf_token_file)
        if access.token:  # before any request: a bad one would fail as "cannot reach"
            check_token(access.token, access.token_source)
        if hub_timeout is not None:
            access = replace(access, timeout=hub_timeout)
        snapshot = hub_snapshot(spec.location, spec.revision, selection, access)
    else:
        snapshot = local_snapshot(spec.location, selection)
    if not snapshot.files:
        skipped = len(snapshot.skipped)
        raise EmptySelection(f"no files selected from {source} ({skipped} skipped)")
    if source_url:
        snapshot = replace(snapshot, url=source_url)
    if not allow_incomplete:
        check_complete(snapshot, lambda entry: _read(snapshot, access, entry))
    plan = make_plan(
        snapshot, threshold, max_layers, base_layers, max_layer_size, allow_large_layer
    )
    return Resolved(plan, access)


def resolve_source(
    options: SourceOptions, base_layers: int = 1, hub_timeout: float | None = None
) -> Resolved:
    """``resolve`` as the options ask (numbers checked first); ``base_layers`` is what
    the base image adds to the layer count, ``hub_timeout`` bounds the Hub's metadata
    calls."""
    options.check()
    return resolve(
        options.source,
        Selection(tuple(options.include), tuple(options.exclude), options.all_files),
        options.hf_token_file,
        options.layer_threshold,
        options.source_url,
        max_layers=options.max_layers,
        base_layers=base_layers,
        allow_incomplete=options.allow_incomplete,
        hub_timeout=hub_timeout,
        max_layer_size=options.max_layer_size,
        allow_large_layer=options.allow_large_layer,
    )


def _read(snapshot: Snapshot, access: HubAccess | None, entry: FileEntry) -> bytes:
    if snapshot.kind == "hub" and access is not None and snapshot.commit:
        from modelcar_builder.source.hub import read_small_file

        return read_small_file(access, snapshot.location, snapshot.commit, entry)
    return (Path(snapshot.location) / entry.path).read_bytes()


def count_base_layers(
    name: str, platform: tuple[str, ...], registry: RegistryOptions, strict: bool = True
) -> int:
    """How many layers the base image brings, read from its manifest (no blob moves).

    ``strict`` (build): a base that cannot be read fails now, before the download.
    Otherwise (plan, prepare: the image is built elsewhere, maybe with other
    credentials) assume one layer, as ubi-micro and busybox have, and say so."""
    if name == "scratch":
        return 0
    from modelcar_builder.engines.base_image import load_base

    try:
        # plan and prepare (not strict) have no --platform: they only count its layers
        base = load_base(name, platform, registry, check_platform=strict)
    except ModelcarError as exc:
        if strict:
            raise
        log.warning("cannot read base image %s (%s); assuming it has 1 layer", name, exc)
        return 1
    try:
        return len(base.image.layers) if base.image else 0
    finally:
        base.close()


def pinned_base(name: str, registry: RegistryOptions) -> str | None:
    """The base as a Containerfile's FROM should name it: by digest when its registry
    answers (a tag moves, and the build that runs elsewhere must start from the base that
    was planned). None when it cannot be read, said in one warning line: the caller keeps
    the name as given. A digest already given, an ``oci:`` layout (its transport takes a
    tag only) and scratch are returned as they are."""
    from modelcar_builder.target import RegistryTarget, parse_target

    target = parse_target(name) if name != "scratch" else None
    if not isinstance(target, RegistryTarget) or target.ref.digest:
        return name
    ref = target.ref
    try:
        with registry.client_for(ref) as client:
            digest = client.get_manifest(ref.repository, ref.reference).digest
    except ModelcarError as exc:
        log.warning(
            "cannot read base image %s (%s); FROM keeps the tag, and the plan assumes 1 base layer",
            name,
            exc,
        )
        return None
    return f"{name}@{digest}"
