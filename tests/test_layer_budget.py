"""Pure logic: the layer budget (--max-layers) and the shard-index completeness check."""

import itertools
import json
import random

import pytest

from modelcar_builder.errors import IncompleteModel, TooManyLayers
from modelcar_builder.plan import balanced_groups, make_plan
from modelcar_builder.selection import Selection, select_files
from modelcar_builder.shards import check_complete, named_files
from modelcar_builder.snapshot import FileEntry, Skipped, Snapshot

MIB = 1 << 20


def snap(files, skipped=()) -> Snapshot:
    return Snapshot("local", "/m", None, None, tuple(files), tuple(skipped))


def shards(n: int, size=lambda i: 2 * MIB) -> list[FileEntry]:
    return [FileEntry(f"model-{i:05d}-of-{n:05d}.safetensors", size(i)) for i in range(n)]


def brute_force_best(sizes: list[int], k: int) -> int:
    """The smallest possible largest run, trying every way to cut ``sizes``."""
    best = sum(sizes)
    n = len(sizes)
    for cuts in range(min(k, n)):
        for points in itertools.combinations(range(1, n), cuts):
            bounds = [0, *points, n]
            best = min(best, max(sum(sizes[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


@pytest.mark.parametrize("seed", range(30))
def test_balanced_groups_are_optimal_contiguous_and_within_budget(seed):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 100) for _ in range(rng.randint(1, 9))]
    k = rng.randint(1, len(sizes))
    runs = balanced_groups(sizes, k)
    assert len(runs) <= k
    assert runs[0][0] == 0 and runs[-1][1] == len(sizes)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))  # contiguous, in order
    assert max(sum(sizes[i:j]) for i, j in runs) == brute_force_best(sizes, k)


def test_under_the_budget_every_large_file_keeps_its_own_layer():
    plan = make_plan(snap([*shards(98), FileEntry("config.json", 10)]), MIB, 100, 1)
    assert len(plan.layers) == 99 and plan.total_layers == 100
    assert all(len(layer.files) == 1 for layer in plan.layers)
    assert plan.grouping is None


def test_300_shards_fit_in_100_layers_with_the_base_and_small_files_last():
    files = [*shards(300, lambda i: MIB + i), FileEntry("config.json", 10)]
    plan = make_plan(snap(files), MIB, 100, 1)
    assert plan.total_layers <= 100
    assert plan.layers[-1].files == (FileEntry("config.json", 10),)
    weights = [f.path for layer in plan.layers[:-1] for f in layer.files]
    assert weights == sorted(f.path for f in files[:300])  # path order, every shard once
    sizes = [layer.size for layer in plan.layers[:-1]]
    # Optimal: no split of the shards into 98 runs keeps every run one byte smaller.
    assert runs_needed(files[:300], max(sizes) - 1) > 98
    assert "300 large files" in plan.grouping and "--max-layers 100" in plan.grouping
    again = make_plan(snap(list(reversed(files))), MIB, 100, 1)
    assert again.layers == plan.layers  # deterministic whatever order the source listed


def runs_needed(files: list[FileEntry], bound: int) -> int:
    """Fewest runs of consecutive files with no run over ``bound`` (greedy is exact)."""
    runs, total = 1, 0
    for s in [f.size for f in sorted(files, key=lambda f: f.path)]:
        if total + s > bound:
            runs, total = runs + 1, 0
        total += s
    return runs


def test_a_base_that_fills_the_budget_is_refused():
    with pytest.raises(TooManyLayers) as err:
        make_plan(snap([*shards(3), FileEntry("config.json", 1)]), MIB, 10, 9)
    assert "base image has 9 layers" in err.value.message and err.value.exit_code == 16
    assert err.value.hint


def test_index_names_files_relative_to_its_folder():
    index = FileEntry("sub/model.safetensors.index.json", 10)
    doc = {"metadata": {}, "weight_map": {"a": "m-1.safetensors", "b": "m-1.safetensors"}}
    assert named_files(index, json.dumps(doc).encode()) == ["sub/m-1.safetensors"]
    assert named_files(index, b"not json") == []
    assert named_files(index, b'{"no": "map"}') == []


def test_missing_shard_is_named_with_the_reason_it_was_dropped():
    index = FileEntry("model.safetensors.index.json", 50)
    doc = {"weight_map": {"x": "model-1.safetensors", "y": "model-2.safetensors", "z": "gone"}}
    s = snap(
        [index, FileEntry("model-1.safetensors", 5)],
        [Skipped("model-2.safetensors", "matched by --exclude")],
    )
    with pytest.raises(IncompleteModel) as err:
        check_complete(s, lambda e: json.dumps(doc).encode())
    msg = err.value.message
    assert "model-2.safetensors (matched by --exclude)" in msg
    assert "gone (not in the repo)" in msg and err.value.exit_code == 15
    assert "--allow-incomplete" in err.value.hint


def test_duplicate_formats_take_their_index_with_them():
    files = [
        FileEntry("model.safetensors", 5),
        FileEntry("pytorch_model.bin", 5),
        FileEntry("pytorch_model.bin.index.json", 5),
        FileEntry("model.safetensors.index.json", 5),
    ]
    kept, skipped = select_files(files, Selection())
    assert [f.path for f in kept] == ["model.safetensors", "model.safetensors.index.json"]
    assert {s.path for s in skipped} == {"pytorch_model.bin", "pytorch_model.bin.index.json"}
