"""Which file goes into which layer. Pure and deterministic: same snapshot, same plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelcar_builder.errors import TooManyLayers
from modelcar_builder.snapshot import FileEntry, Snapshot

DEFAULT_LAYER_THRESHOLD = 64 * 1024 * 1024
# containers/storage (CRI-O, podman, buildah) refuses to mount more than 127 layers and
# Docker's overlay2 stops near 125: 100 leaves room for a deeper base image and for tools
# that stack a layer or two on top (a scanner, a signature), and still gives one layer per
# shard to every model up to 99 shards.
DEFAULT_MAX_LAYERS = 100


@dataclass(frozen=True)
class LayerPlan:
    index: int
    name: str  # directory name in the build context, e.g. "layer-00"
    files: tuple[FileEntry, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Plan:
    snapshot: Snapshot
    layers: tuple[LayerPlan, ...]
    threshold: int
    max_layers: int = DEFAULT_MAX_LAYERS
    base_layers: int = 0
    grouping: str | None = None  # why large files share layers; None when each has its own

    @property
    def total_bytes(self) -> int:
        return self.snapshot.total_bytes

    @property
    def total_layers(self) -> int:
        return self.base_layers + len(self.layers)

    def layer_of(self, path: str) -> LayerPlan:
        for layer in self.layers:
            if any(f.path == path for f in layer.files):
                return layer
        raise KeyError(path)


def make_plan(
    snapshot: Snapshot,
    threshold: int = DEFAULT_LAYER_THRESHOLD,
    max_layers: int = DEFAULT_MAX_LAYERS,
    base_layers: int = 0,
) -> Plan:
    """One layer per large file in path order, then all small files in one last layer;
    when that would pass ``max_layers`` (base layers included), consecutive large files
    share layers, balanced so the largest layer is as small as it can be.

    Small files (config, tokenizer) change most often: last, an edit to them leaves every
    weight layer below untouched, so layer caches (a registry's blobs, the engines'
    layer records) keep the shards. Ordering by path keeps digests stable."""
    files = sorted(snapshot.files, key=lambda f: f.path)
    small = tuple(f for f in files if f.size < threshold)
    large = [f for f in files if f.size >= threshold]
    room = max_layers - base_layers - (1 if small else 0)
    if room < (1 if large else 0):
        raise TooManyLayers(
            f"the base image has {base_layers} layers: with the model's "
            f"{1 if small else 0} small-files layer and at least one weight layer that "
            f"passes --max-layers {max_layers}"
        )
    grouping = None
    if len(large) > room:
        groups = balanced_groups([f.size for f in large], room)
        grouped = [tuple(large[i:j]) for i, j in groups]
        grouping = (
            f"{len(large)} large files + {1 if small else 0} small-files layer + "
            f"{base_layers} base layer(s) would be {len(large) + max_layers - room} layers, "
            f"over --max-layers {max_layers}: consecutive large files share "
            f"{len(grouped)} layers, balanced by size"
        )
    else:
        grouped = [(f,) for f in large]
    all_groups = grouped + ([small] if small else [])
    layers = tuple(
        LayerPlan(index=i, name=f"layer-{i:03d}", files=group) for i, group in enumerate(all_groups)
    )
    return Plan(snapshot, layers, threshold, max_layers, base_layers, grouping)


def balanced_groups(sizes: Sequence[int], max_groups: int) -> list[tuple[int, int]]:
    """Split ``sizes`` into at most ``max_groups`` runs of consecutive items (as [i, j)
    index pairs) so the largest run's sum is the smallest possible.

    The smallest feasible bound is found by binary search: for a bound B, filling each
    run greedily up to B gives the fewest runs, so B is feasible exactly when that count
    is within ``max_groups``."""
    if max_groups < 1:
        raise ValueError("max_groups must be at least 1")
    low, high = max(sizes, default=0), sum(sizes)
    while low < high:
        mid = (low + high) // 2
        if len(_fill(sizes, mid)) <= max_groups:
            high = mid
        else:
            low = mid + 1
    return _fill(sizes, low)


def _fill(sizes: Sequence[int], bound: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > bound:
            runs.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs
