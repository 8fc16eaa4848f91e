"""A base image that is there but broken (its manifest's layers and its config's diff_ids
disagree) is a base-image error with its own exit code and hint, one line, no traceback:
the oci/ readers raise typed errors, not ValueError. The manifest is pushed with requests
to a real registry, as a broken tool upstream would have pushed it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import requests

from modelcar_builder.errors import BaseImageNotFound, MalformedBaseImage
from tests.support.clitools import assert_refused, run

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def _put_blob(registry, repo: str, data: bytes) -> str:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    start = requests.post(f"{registry.url}/v2/{repo}/blobs/uploads/", timeout=30)
    location = start.headers["Location"]
    url = location if location.startswith("http") else f"{registry.url}{location}"
    sep = "&" if "?" in url else "?"
    done = requests.put(f"{url}{sep}digest={digest}", data=data, timeout=30)
    assert done.status_code == 201, done.text
    return digest


def _push_disagreeing_base(registry, repo: str, tag: str) -> None:
    """One layer in the manifest, two diff_ids in the config."""
    layer = b"\0" * 1024  # two empty tar blocks: a valid, empty layer
    layer_digest = _put_blob(registry, repo, layer)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest, "sha256:" + "1" * 64]},
    }).encode()  # fmt: skip
    config_digest = _put_blob(registry, repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": len(layer)}],
    }).encode()  # fmt: skip
    resp = requests.put(f"{registry.url}/v2/{repo}/manifests/{tag}", data=manifest,
                        headers={"Content-Type": MANIFEST}, timeout=30)  # fmt: skip
    assert resp.status_code == 201, resp.text


def _model(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "tiny"}')
    (model / "weights.bin").write_bytes(b"w" * 4096)
    return model


def test_build_on_a_malformed_base_is_one_line_and_its_exit_code(
    capsys, tmp_path, session_registry
):
    _push_disagreeing_base(session_registry, "broken/base", "v1")
    base = f"{session_registry.host}/broken/base:v1"
    image = f"{session_registry.host}/models/tiny:v1"
    model, ws = str(_model(tmp_path)), str(tmp_path / "ws")
    for preflight in ((), ("--no-preflight",)):  # the check before the download; the run's
        res = run(capsys, "build", model, "--image", image, "--base-image", base,
                  "--workspace", ws, "--tls-verify=false", *preflight)  # fmt: skip
        assert_refused(res, MalformedBaseImage.exit_code)
        assert "1 layers but its config 2 diff_ids" in res.err, res.err
        assert "another --base-image" in res.err, res.err


def test_doctor_names_the_malformed_base(capsys, tmp_path, session_registry):
    _push_disagreeing_base(session_registry, "broken/doctor", "v1")
    host = session_registry.host
    res = run(capsys, "doctor", str(_model(tmp_path)), "--image", f"{host}/models/tiny:v1",
              "--base-image", f"{host}/broken/doctor:v1", "--workspace", str(tmp_path / "ws"),
              "--tls-verify=false")  # fmt: skip
    assert res.code == MalformedBaseImage.exit_code, res.out + res.err
    assert "Traceback" not in res.err
    assert "diff_ids" in res.out + res.err


def test_native_refuses_zstd_as_a_usage_error_without_the_preflight(capsys, tmp_path):
    """The compression rule is oci.layer's, raised as a UsageError by the run too."""
    res = run(capsys, "build", str(_model(tmp_path)), "--image", f"oci:{tmp_path / 'out'}:v1",
              "--base-image", "scratch", "--compression", "zstd", "--no-preflight",
              "--workspace", str(tmp_path / "ws"))  # fmt: skip
    assert_refused(res, 2)
    assert "--compression zstd" in res.err and "KServe cannot read zstd" in res.err


def _layout_with_disagreeing_base(path: Path) -> None:
    """An oci: layout, written by hand, whose v1 manifest has 1 layer and config 2 diff_ids."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        hexdigest = hashlib.sha256(data).hexdigest()
        (blobs / hexdigest).write_bytes(data)
        return f"sha256:{hexdigest}"

    layer = b"\0" * 1024
    layer_digest = blob(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [layer_digest, "sha256:" + "1" * 64]}}).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": blob(config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": len(layer)}],
    }).encode()  # fmt: skip
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MANIFEST, "digest": blob(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))  # fmt: skip


def test_an_oci_layout_base_that_is_malformed_or_lacks_the_tag(capsys, tmp_path):
    """The layout reader's KeyError and the image's disagreement are base-image errors."""
    base = tmp_path / "base"
    _layout_with_disagreeing_base(base)
    model, ws = str(_model(tmp_path)), str(tmp_path / "ws")
    common = ("--image", f"oci:{tmp_path / 'out'}:v1", "--workspace", ws)
    res = run(capsys, "build", model, *common, "--base-image", f"oci:{base}:v1")
    assert_refused(res, MalformedBaseImage.exit_code)
    assert "1 layers but its config 2 diff_ids" in res.err
    res = run(capsys, "build", model, *common, "--base-image", f"oci:{base}:v2")
    assert_refused(res, BaseImageNotFound.exit_code)
    assert "no image tagged 'v2'" in res.err
