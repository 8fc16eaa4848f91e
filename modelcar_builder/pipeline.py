"""The stages, in the one direction data flows: source -> plan -> fetch -> context.
Each function takes what the previous one returned; the CLI only chains them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from modelcar_builder.errors import EmptySelection
from modelcar_builder.plan import DEFAULT_LAYER_THRESHOLD, Plan, make_plan
from modelcar_builder.selection import Selection
from modelcar_builder.source import parse_source
from modelcar_builder.source.local import local_snapshot

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
) -> Resolved:
    """Pin the source (a Hub revision becomes its commit) and plan the layers."""
    spec = parse_source(source)
    access = None
    if spec.kind == "hub":
        # Imported here: huggingface_hub costs ~0.2 s at start-up that local builds skip.
        from modelcar_builder.source.hub import hub_access, hub_snapshot

        access = hub_access(hf_token_file)
        snapshot = hub_snapshot(spec.location, spec.revision, selection, access)
    else:
        snapshot = local_snapshot(spec.location, selection)
    if not snapshot.files:
        skipped = len(snapshot.skipped)
        raise EmptySelection(f"no files selected from {source} ({skipped} skipped)")
    if source_url:
        snapshot = replace(snapshot, url=source_url)
    return Resolved(make_plan(snapshot, threshold), access)


def disk_needed(plan: Plan, env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Extra workspace bytes each engine needs, for `plan` and the up-front space check.

    native: the fetched files (local sources are read in place).
    native --stream: nothing but small state files.
    buildah: the fetched files plus buildah's own peak, which depends on its mode
    (per-layer: a few copies of the largest layer; chain: grows with the storage driver).
    """
    from modelcar_builder.engines.buildah import (
        BuildahSettings,
        estimate_peak_bytes,
        estimate_per_layer_peak,
    )

    settings = BuildahSettings.from_env(os.environ if env is None else env)
    sizes = [layer.size for layer in plan.layers]
    if settings.mode == "per-layer":
        label, storage = "buildah", estimate_per_layer_peak(sizes)
    else:
        # The chain's cost depends on the driver; without probing, assume the worse (vfs).
        driver = "vfs" if settings.storage_driver == "auto" else settings.storage_driver
        label, storage = f"buildah (chain, {driver})", estimate_peak_bytes(sizes, driver)
    fetched = plan.total_bytes if plan.snapshot.kind == "hub" else 0
    return {"native": fetched, "native --stream": 0, label: fetched + storage}
