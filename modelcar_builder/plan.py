"""Which file goes into which layer. Pure and deterministic: same snapshot, same plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelcar_builder.errors import LayerLimitsConflict, LayerTooLarge, TooManyLayers
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
    max_layer_size: int | None = None  # --max-layer-size: no layer larger, bar one lone file

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
    max_layer_size: int | None = None,
    allow_large_layer: bool = False,
) -> Plan:
    """One layer per large file in path order, then all small files in one last layer;
    when that would pass ``max_layers`` (base layers included), consecutive large files
    share layers, balanced so the largest layer is as small as it can be.

    With ``max_layer_size`` no layer is larger than it: the small files take as many
    last layers as that needs (filled in path order), and large files share a layer only
    within it. A single file larger than it is an error (LayerTooLarge) unless
    ``allow_large_layer``: then it has a layer of its own. When both limits cannot hold,
    LayerLimitsConflict names both. Without it, plans are what they always were.

    Small files (config, tokenizer) change most often: last, an edit to them leaves every
    weight layer below untouched, so layer caches (a registry's blobs, the engines'
    layer records) keep the shards. Ordering by path keeps digests stable."""
    files = sorted(snapshot.files, key=lambda f: f.path)
    if max_layer_size is not None and not allow_large_layer:
        over = [f for f in files if f.size > max_layer_size]
        if over:
            first = over[0]
            more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
            raise LayerTooLarge(
                f"{first.path} is {first.size} bytes, larger than --max-layer-size "
                f"{max_layer_size}{more}: a layer holds whole files"
            )
    small = [f for f in files if f.size < threshold]
    large = [f for f in files if f.size >= threshold]
    if max_layer_size is None:
        small_groups = [tuple(small)] if small else []
    else:
        small_groups = [
            tuple(small[i:j]) for i, j in _fill([f.size for f in small], max_layer_size)
        ]
    room = max_layers - base_layers - len(small_groups)
    if room < (1 if large else 0):
        if max_layer_size is not None and len(small_groups) > 1:
            raise _conflict(max_layers, max_layer_size, base_layers, len(small_groups), large)
        raise TooManyLayers(
            f"the base image has {base_layers} layers: with the model's "
            f"{len(small_groups)} small-files layer and at least one weight layer that "
            f"passes --max-layers {max_layers}"
        )
    grouping = None
    if len(large) > room:
        sizes = [f.size for f in large]
        if max_layer_size is not None and len(_fill(sizes, max_layer_size)) > room:
            raise _conflict(max_layers, max_layer_size, base_layers, len(small_groups), large)
        groups = balanced_groups(sizes, room, max_layer_size)
        grouped = [tuple(large[i:j]) for i, j in groups]
        grouping = (
            f"{len(large)} large files + {len(small_groups)} small-files layer + "
            f"{base_layers} base layer(s) would be {len(large) + max_layers - room} layers, "
            f"over --max-layers {max_layers}: consecutive large files share "
            f"{len(grouped)} layers, balanced by size"
        )
    else:
        grouped = [(f,) for f in large]
    all_groups = grouped + small_groups
    layers = tuple(
        LayerPlan(index=i, name=f"layer-{i:03d}", files=group) for i, group in enumerate(all_groups)
    )
    return Plan(snapshot, layers, threshold, max_layers, base_layers, grouping, max_layer_size)


def _conflict(
    max_layers: int,
    max_layer_size: int,
    base_layers: int,
    small_layers: int,
    large: list[FileEntry],
) -> LayerLimitsConflict:
    return LayerLimitsConflict(
        f"--max-layers {max_layers} and --max-layer-size {max_layer_size} cannot both hold: "
        f"{base_layers} base layer(s), {small_layers} small-files layer(s) and "
        f"{len(large)} large file(s) ({sum(f.size for f in large)} bytes) need more layers "
        f"or larger ones"
    )


def balanced_groups(
    sizes: Sequence[int], max_groups: int, cap: int | None = None
) -> list[tuple[int, int]]:
    """Split ``sizes`` into at most ``max_groups`` runs of consecutive items (as [i, j)
    index pairs) so the largest run's sum is the smallest possible; with ``cap`` no run
    of two or more items sums past it (the caller checks ``_fill(sizes, cap)`` fits).

    The smallest feasible bound is found by binary search: for a bound B, filling each
    run greedily up to B gives the fewest runs, so B is feasible exactly when that count
    is within ``max_groups``. An item larger than B is a run of its own."""
    if max_groups < 1:
        raise ValueError("max_groups must be at least 1")
    low, high = max(sizes, default=0), sum(sizes)
    if cap is not None:
        low, high = min(low, cap), min(high, cap)
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
