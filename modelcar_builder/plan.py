"""Which file goes into which layer. Pure and deterministic: same snapshot, same plan."""

from __future__ import annotations

from dataclasses import dataclass

from modelcar_builder.snapshot import FileEntry, Snapshot

DEFAULT_LAYER_THRESHOLD = 64 * 1024 * 1024


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

    @property
    def total_bytes(self) -> int:
        return self.snapshot.total_bytes

    def layer_of(self, path: str) -> LayerPlan:
        for layer in self.layers:
            if any(f.path == path for f in layer.files):
                return layer
        raise KeyError(path)


def make_plan(snapshot: Snapshot, threshold: int = DEFAULT_LAYER_THRESHOLD) -> Plan:
    """One layer per large file in path order, then all small files in one last layer.

    Small files (config, tokenizer) change most often: last, an edit to them leaves every
    weight layer below untouched, so layer caches (buildah's chain, a registry's blobs)
    keep the shards. Ordering by path keeps digests stable."""
    files = sorted(snapshot.files, key=lambda f: f.path)
    small = tuple(f for f in files if f.size < threshold)
    large = [f for f in files if f.size >= threshold]
    groups: list[tuple[FileEntry, ...]] = [(f,) for f in large] + ([small] if small else [])
    layers = tuple(
        LayerPlan(index=i, name=f"layer-{i:03d}", files=group) for i, group in enumerate(groups)
    )
    return Plan(snapshot=snapshot, layers=layers, threshold=threshold)
