"""The workspace record: typed, versioned, one reader/writer; older records migrate,
unknown ones are set aside so a run never trusts what it cannot read."""

import json

from modelcar_builder.plan import LayerPlan
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.state import STATE_VERSION, BuildState, LayerRecord, layer_key

SHARD = FileEntry("model.safetensors", 10, sha256="ab" * 32)
LAYER = LayerPlan(0, "layer-000", (SHARD,))


def test_round_trip(tmp_path):
    path = tmp_path / "s.json"
    state = BuildState(path)
    state.mark_verified("model.safetensors", "ab" * 32)
    state.remember_layer("k", LayerRecord("sha256:1", 20, "sha256:2"))
    state.engine_cache("buildah")["images"] = {"x": "y"}
    state.save()
    again = BuildState(path)
    assert again.is_verified("model.safetensors", "ab" * 32)
    assert not again.is_verified("model.safetensors", "cd" * 32)
    assert again.layer("k") == LayerRecord("sha256:1", 20, "sha256:2")
    assert again.engine_cache("buildah") == {"images": {"x": "y"}}
    assert json.loads(path.read_text())["version"] == STATE_VERSION


def test_version_1_records_migrate_and_keep_their_layers(tmp_path):
    path = tmp_path / "s.json"
    key = layer_key(LAYER, "none")
    old = {
        "verified": {"model.safetensors": "ab" * 32},
        "layers": {key: {"digest": "sha256:1", "size": 20, "diff_id": "sha256:1"}},
        "buildah": {"per_layer": {"a": 1}},
    }
    path.write_text(json.dumps(old))
    state = BuildState(path)
    assert state.is_verified("model.safetensors", "ab" * 32)
    assert state.layer(layer_key(LAYER, "none")) == LayerRecord("sha256:1", 20, "sha256:1")
    assert state.engine_cache("buildah") == {"per_layer": {"a": 1}}


def test_newer_or_damaged_records_are_set_aside(tmp_path):
    for content in (json.dumps({"version": 99, "verified": {"a": "b"}}), "{not json", "[1]"):
        path = tmp_path / "s.json"
        path.write_text(content)
        state = BuildState(path)
        assert state.verified == {} and state.layers == {}
        assert (tmp_path / "s.json.old").read_text() == content
        assert not path.exists()


def test_layer_key_depends_on_content_and_compression(tmp_path):
    other = LayerPlan(0, "layer-000", (FileEntry("model.safetensors", 10, sha256="cd" * 32),))
    assert layer_key(LAYER, "none") != layer_key(other, "none")
    assert layer_key(LAYER, "none") != layer_key(LAYER, "gzip")
    local = LayerPlan(0, "layer-000", (FileEntry("w.bin", 3),))
    (tmp_path / "w.bin").write_bytes(b"abc")
    before = layer_key(local, "none", tmp_path)
    (tmp_path / "w.bin").write_bytes(b"xyz")
    import os

    os.utime(tmp_path / "w.bin", ns=(1, 1))
    assert layer_key(local, "none", tmp_path) != before


def test_pushes_are_recorded_per_host_and_survive_a_save(tmp_path):
    path = tmp_path / "s.json"
    state = BuildState(path)
    state.remember_push("sha256:1", "reg.example:5000", "models/a")
    state.remember_push("sha256:1", "reg.example:5000", "models/a")  # once
    state.remember_push("sha256:1", "reg.example:5000", "team/models/b")
    state.remember_push("sha256:1", "quay.io", "org/c")
    state.save()
    again = BuildState(path)
    assert again.pushed_to("sha256:1", "reg.example:5000") == ["models/a", "team/models/b"]
    assert again.pushed_to("sha256:1", "quay.io") == ["org/c"]
    assert again.pushed_to("sha256:2", "quay.io") == []


def test_version_2_records_migrate_with_no_pushes_known(tmp_path):
    path = tmp_path / "s.json"
    key = layer_key(LAYER, "none")
    v2 = {
        "version": 2,
        "verified": {"model.safetensors": "ab" * 32},
        "sha256": {},
        "layers": {key: {"digest": "sha256:1", "size": 20, "diff_id": "sha256:1"}},
        "engines": {"buildah": {"per_layer": {"a": 1}}},
    }
    path.write_text(json.dumps(v2))
    state = BuildState(path)
    assert state.layer(key) == LayerRecord("sha256:1", 20, "sha256:1")
    assert state.engine_cache("buildah") == {"per_layer": {"a": 1}}
    assert state.pushed_to("sha256:1", "reg.example") == []
    assert not (tmp_path / "s.json.old").exists()  # migrated, not set aside
    state.remember_push("sha256:1", "reg.example", "models/a")
    state.save()
    doc = json.loads(path.read_text())
    assert doc["version"] == STATE_VERSION == 3
    assert doc["pushes"] == {"sha256:1": ["reg.example/models/a"]}
