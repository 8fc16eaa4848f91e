"""--max-layer-size on the command line: the two exit-16 errors of `plan` and `build`
(before any download), and doctor's warning for a registry whose blob limit is known,
told by its host name. A local model directory and the in-process CLI; no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelcar_builder import errors
from tests.support.clitools import run


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    root.mkdir()
    for i, size in enumerate((3000, 9000, 3000)):
        (root / f"model-{i:05d}-of-00003.safetensors").write_bytes(b"w" * size)
    (root / "config.json").write_text('{"model_type": "llama"}')
    return root


def test_a_file_over_the_limit_exits_16_naming_it_unless_allowed(model, capsys, tmp_path):
    res = run(capsys, "plan", str(model), "--layer-threshold", "1000", "--max-layer-size", "5000")
    assert res.code == errors.TooManyLayers.exit_code == 16, res.err
    assert "model-00001-of-00003.safetensors is 9000 bytes" in res.err
    assert "--max-layer-size 5000" in res.err and "--allow-large-layer" in res.err
    res = run(capsys, "build", str(model), "--image", f"oci:{tmp_path / 'out'}:v1",
              "--base-image", "scratch", "--workspace", str(tmp_path / "ws"),
              "--layer-threshold", "1000", "--max-layer-size", "5000")  # fmt: skip
    assert res.code == 16 and "9000 bytes" in res.err
    assert not (tmp_path / "out").exists()  # refused up front: nothing written

    res = run(capsys, "plan", str(model), "--layer-threshold", "1000", "--max-layer-size", "5000",
              "--allow-large-layer", "--json")  # fmt: skip
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert doc["max_layer_size"] == 5000
    sizes = {layer["name"]: layer["size"] for layer in doc["layers"]}
    assert sizes["layer-001"] == 9000  # the lone large file, in a layer of its own
    assert all(size <= 5000 for name, size in sizes.items() if name != "layer-001")


def test_limits_that_cannot_both_hold_exit_16_naming_both(model, capsys):
    res = run(capsys, "plan", str(model), "--layer-threshold", "1000", "--max-layers", "3",
              "--max-layer-size", "12000")  # fmt: skip
    assert res.code == 16, res.err
    assert "--max-layers 3" in res.err and "--max-layer-size 12000" in res.err
    res = run(capsys, "plan", str(model), "--layer-threshold", "1000", "--max-layers", "3")
    assert res.code == 0, res.err  # without the size limit the shards share a layer


@pytest.mark.parametrize(
    ("image", "host"), [("quay.io/org/m:v1", "quay.io"), ("docker.io/org/m:v1", "docker.io")]
)
def test_doctor_warns_when_a_layer_passes_the_registrys_blob_limit(
    model, capsys, tmp_path, monkeypatch, image, host
):
    """The limits are 50 GB (Quay) and 10 GB (Docker Hub): a 1 GB layer cannot show it
    cheaply, so a sparse file does (its bytes are never read: doctor reads sizes)."""
    big = model / "model-00001-of-00003.safetensors"
    with big.open("r+b") as f:
        f.truncate(51 * 10**9)
    monkeypatch.setenv("MODELCAR_REGISTRY_RETRY_WINDOW", "0")
    common = ("--image", image, "--base-image", "scratch", "--workspace", str(tmp_path / "ws"),
              "--layer-threshold", "1000")  # fmt: skip
    res = run(capsys, "doctor", str(model), *common)
    warned = [line for line in res.out.splitlines() if "blob-size" in line]
    assert warned and warned[0].startswith("WARN"), res.out
    assert host in warned[0] and "layer-001" in warned[0]
    res = run(capsys, "doctor", str(model), *common, "--max-layer-size", str(10**9),
              "--allow-large-layer")  # fmt: skip
    warned = [line for line in res.out.splitlines() if "blob-size" in line]
    assert warned and warned[0].startswith("WARN"), res.out  # the lone file still is
    big.write_bytes(b"w" * 9000)
    res = run(capsys, "doctor", str(model), *common)
    passed = [line for line in res.out.splitlines() if "blob-size" in line]
    assert passed and passed[0].startswith("PASS"), res.out
