"""Pure logic: --max-layer-size (no layer larger, bar a lone file with
--allow-large-layer) and its meeting with --max-layers."""

import random

import pytest

from modelcar_builder import errors
from modelcar_builder.errors import LayerLimitsConflict, LayerTooLarge, TooManyLayers
from modelcar_builder.plan import _fill, make_plan
from modelcar_builder.snapshot import FileEntry, Snapshot

MIB = 1 << 20


def snap(files) -> Snapshot:
    return Snapshot("local", "/m", None, None, tuple(files), ())


def shards(n: int, size=lambda i: 2 * MIB) -> list[FileEntry]:
    return [FileEntry(f"model-{i:05d}-of-{n:05d}.safetensors", size(i)) for i in range(n)]


def paths(plan) -> list[str]:
    return [f.path for layer in plan.layers for f in layer.files]


def test_without_the_limit_the_plan_is_unchanged():
    files = [*shards(300, lambda i: MIB + i), FileEntry("config.json", 10)]
    before = make_plan(snap(files), MIB, 100, 1)
    after = make_plan(snap(files), MIB, 100, 1, max_layer_size=None)
    assert before.layers == after.layers and after.max_layer_size is None


@pytest.mark.parametrize("seed", range(20))
def test_no_layer_is_larger_than_the_limit_and_every_file_is_kept_in_order(seed):
    rng = random.Random(seed)
    large = shards(rng.randint(1, 40), lambda i: rng.randint(MIB, 8 * MIB))
    small = [FileEntry(f"tok-{i}.json", rng.randint(1, MIB - 1)) for i in range(rng.randint(0, 30))]
    limit = rng.randint(8 * MIB, 40 * MIB)
    try:
        plan = make_plan(snap(large + small), MIB, 20, 1, max_layer_size=limit)
    except LayerLimitsConflict as exc:  # the two limits cannot hold: both are named
        assert "--max-layers 20" in exc.message and f"--max-layer-size {limit}" in exc.message
        # genuine: filling each layer up to the limit (the fewest layers in path order)
        # still takes more than the 19 left after the base
        needed = len(_fill([f.size for f in large], limit))
        needed += len(_fill([f.size for f in sorted(small, key=lambda f: f.path)], limit))
        assert needed > 19
        return
    assert all(layer.size <= limit for layer in plan.layers)
    assert plan.total_layers <= 20
    assert paths(plan) == sorted(f.path for f in large) + sorted(f.path for f in small)


def test_small_files_over_the_limit_take_several_last_layers():
    small = [FileEntry(f"tok-{i}.json", 300) for i in range(10)]
    plan = make_plan(snap([*shards(2, lambda i: 1000), *small]), 1000, 100, 1, max_layer_size=1000)
    assert [len(layer.files) for layer in plan.layers] == [1, 1, 3, 3, 3, 1]
    assert all(layer.size <= 1000 for layer in plan.layers)


def test_grouping_keeps_within_the_limit():
    """10 shards of 10 in 5 layers: balanced, 2 per layer; a limit of 25 allows it."""
    plan = make_plan(snap(shards(10, lambda i: 10)), 5, 6, 1, max_layer_size=25)
    assert [layer.size for layer in plan.layers] == [20] * 5
    assert plan.grouping is not None


def test_a_file_over_the_limit_is_named_with_its_size_and_the_limit():
    files = [*shards(3, lambda i: 5000 if i == 1 else 100), FileEntry("config.json", 10)]
    with pytest.raises(LayerTooLarge) as caught:
        make_plan(snap(files), 50, 100, 1, max_layer_size=1000)
    message = caught.value.message
    assert files[1].path in message and "5000 bytes" in message and "1000" in message
    assert caught.value.exit_code == TooManyLayers.exit_code == 16
    assert "--allow-large-layer" in caught.value.hint


def test_allow_large_layer_gives_the_file_a_layer_of_its_own():
    files = [*shards(4, lambda i: 5000 if i == 1 else 300), FileEntry("config.json", 10)]
    plan = make_plan(snap(files), 50, 4, 0, max_layer_size=1000, allow_large_layer=True)
    assert [layer.size for layer in plan.layers] == [300, 5000, 600, 10]


def test_limits_that_cannot_both_hold_name_both():
    with pytest.raises(LayerLimitsConflict) as caught:
        make_plan(snap(shards(10, lambda i: 10)), 5, 6, 1, max_layer_size=15)
    assert "--max-layers 6" in caught.value.message
    assert "--max-layer-size 15" in caught.value.message
    assert isinstance(caught.value, errors.TooManyLayers)
