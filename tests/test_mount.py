"""Cross-repository mounts of model layers, against a real docker-registry: a model
pushed again to another repository of the same registry sends no model byte. The
sources are the workspace's record of earlier pushes and --mount-from."""

from __future__ import annotations

import json
from pathlib import Path

from modelcar_builder import errors
from tests.support.clitools import run
from tests.support.models import build_args


def pushed(capsys, registry, image: str, ws: Path, report: Path, *extra: str):
    """Build ``image``; the report's model layer digests and what the registry logged."""
    mark = registry.mark()
    res = run(capsys, *build_args(image, ws, "scratch"), "--report", str(report), *extra)
    assert res.code == 0, res.err
    layers = {layer["digest"] for layer in json.loads(report.read_text())["layers"]}
    return res, layers, registry.committed_blobs(since=mark), registry.mounts(since=mark)


def test_the_same_model_to_a_second_repository_is_mounted(hub_repo, registry, capsys, tmp_path):
    ws = tmp_path / "ws"
    res, layers, committed, _ = pushed(capsys, registry, f"{registry.host}/models/a:v1", ws,
                                       tmp_path / "a.json")  # fmt: skip
    assert {b.digest for b in committed} >= layers  # the first push uploads them

    res, again, committed, mounts = pushed(capsys, registry, f"{registry.host}/models/b:v1",
                                           ws, tmp_path / "b.json")  # fmt: skip
    assert again == layers
    model_bytes = sum(b.size for b in committed if b.digest in layers)
    assert model_bytes == 0, committed  # only the config blob may be uploaded
    assert {m.query["mount"] for m in mounts} == layers
    assert all(m.query["from"] == "models/a" for m in mounts)
    assert f"(0 uploaded, {len(layers)} mounted, 0 already there)" in res.err
    report = json.loads((tmp_path / "b.json").read_text())
    assert all(layer["mounted"] and not layer["uploaded"] for layer in report["layers"])

    # --stream knows a layer's digest only from the workspace's record: enough here
    res, again, committed, mounts = pushed(capsys, registry, f"{registry.host}/models/c:v1",
                                           ws, tmp_path / "c.json", "--stream")  # fmt: skip
    assert again == layers and {m.query["mount"] for m in mounts} == layers
    assert sum(b.size for b in committed if b.digest in layers) == 0, committed


def test_mount_from_names_the_source_for_a_fresh_workspace(hub_repo, registry, capsys, tmp_path):
    _, layers, _, _ = pushed(capsys, registry, f"{registry.host}/models/dev:v1",
                             tmp_path / "ws1", tmp_path / "dev.json")  # fmt: skip
    res, again, committed, mounts = pushed(
        capsys, registry, f"{registry.host}/models/prod:v1", tmp_path / "ws2",
        tmp_path / "prod.json", "--mount-from", f"{registry.host}/models/dev",
        "--mount-from", "models/elsewhere",
    )  # fmt: skip
    assert again == layers
    assert sum(b.size for b in committed if b.digest in layers) == 0, committed
    assert {m.query["mount"] for m in mounts} == layers
    assert f"{len(layers)} mounted" in res.err

    res = run(capsys, *build_args(f"{registry.host}/models/x:v1", tmp_path / "ws3", "scratch"),
              "--mount-from", "quay.io/org/dev")  # fmt: skip
    assert res.code == errors.UsageError.exit_code and "another registry" in res.err
