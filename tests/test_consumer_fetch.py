"""`oci+fetch://`, proven with KServe's own code: the storage initializer's
``Storage._download_oci`` (PyPI kserve-storage, pinned) pulls an image of every engine and
mode from the loopback registry and extracts ``models/``; every file must match the Hub
repo byte for byte (nested same-name files, a unicode name, empty files included).

KServe's fetch reads tar and tar+gzip layers and refuses tar+zstd: `build` and `doctor`
warn about `--compression zstd` (only `--engine podman` can write it)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.clitools import run
from tests.support.kserve_fetch import assert_fetched, download_oci
from tests.support.models import engine_build_args as build_args
from tests.support.models import model_files

# The workstation tests' fixtures, taken by name (a private dockerd, a private podman store)

# engine, extra build arguments, fixtures the engine needs, layer media type expected
CASES = {
    "native": ("native", (), (), "application/vnd.oci.image.layer.v1.tar"),
    "native-stream": ("native", ("--stream",), (), "application/vnd.oci.image.layer.v1.tar"),
    "native-gzip": ("native", ("--compression", "gzip"), (),
                    "application/vnd.oci.image.layer.v1.tar+gzip"),
    "buildah": ("buildah", (), (), "application/vnd.oci.image.layer.v1.tar+gzip"),
    "podman": ("podman", (), ("podman_store",), "application/vnd.oci.image.layer.v1.tar+gzip"),
    "docker": ("docker", (), ("dockerd",), None),  # dockerd pushes Docker v2 gzip layers
}  # fmt: skip


def _raw_manifest(image: str, authfile) -> dict:
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", "--authfile", str(authfile),
         f"docker://{image}"], check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_kserve_fetch_extracts_every_engines_image_byte_for_byte(
    case, hub_repo, registry_token, base_image, capsys, tmp_path, request, monkeypatch
):
    engine, extra, needs, media_type = CASES[case]
    for name in needs:
        value = request.getfixturevalue(name)
        if name == "dockerd":
            monkeypatch.setenv("DOCKER_HOST", value)
    reg = registry_token  # Bearer tokens: oras-py (KServe's fetch) reads no Basic-only challenge
    base = base_image.copy_to(reg)
    image = f"{reg.host}/models/fetch-{case}:v1"
    authfile = reg.write_authfile(tmp_path / "auth.json")
    res = run(capsys, *build_args(engine, image, tmp_path / "ws", base,
                                  "--authfile", str(authfile), *extra))  # fmt: skip
    assert res.code == 0, res.err
    layers = _raw_manifest(image, authfile)["layers"]
    if media_type is not None:  # the model layers (the busybox base has one gzip layer)
        assert {layer["mediaType"] for layer in layers[1:]} == {media_type}
    # KServe's code, with the docker config.json the webhook would mount for a pull secret
    assert_fetched(image, model_files(), tmp_path / "fetched", docker_config=authfile)


@pytest.mark.slow
def test_kserve_fetch_refuses_a_zstd_image_which_build_and_doctor_warn_about(
    hub_repo, registry_token, base_image, podman_store, capsys, caplog, tmp_path
):
    reg = registry_token  # Bearer tokens: oras-py (KServe's fetch) reads no Basic-only challenge
    base = base_image.copy_to(reg)
    image = f"{reg.host}/models/fetch-zstd:v1"
    authfile = reg.write_authfile(tmp_path / "auth.json")
    args = build_args("podman", image, tmp_path / "ws", base, "--authfile", str(authfile),
                      "--compression", "zstd")  # fmt: skip
    doctor = run(capsys, "doctor", *args[1:], "--json")
    checks = {c["check"]: c for c in json.loads(doctor.out)["checks"]}
    assert checks["consumers"]["status"] == "WARN"
    assert "oci+fetch" in checks["consumers"]["message"]
    assert "--compression gzip" in checks["consumers"]["fix"]
    res = run(capsys, *args)
    assert res.code == 0, res.err
    assert "tar+zstd" in res.err and "oci+fetch" in res.err  # the build's warning
    layers = _raw_manifest(image, authfile)["layers"]
    assert {layer["mediaType"] for layer in layers[1:]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    again = run(capsys, *args, "--no-preflight")  # the warning without the preflight too
    assert again.code == 0 and again.last_line == res.last_line, again.err
    assert "tar+zstd" in again.err and "oci+fetch" in again.err
    # ... and the warning is true: KServe's own fetch refuses the image.
    with pytest.raises(RuntimeError, match="zstd-compressed"):
        download_oci(image, tmp_path / "fetched", docker_config=authfile)


def test_doctor_has_no_consumer_warning_for_gzip_or_none(hub_repo, capsys, tmp_path):
    for compression in ("gzip", "none"):
        res = run(capsys, "doctor", "hf://acme/llm@main", "--image", "oci:" + str(tmp_path / "o"),
                  "--workspace", str(tmp_path / "ws"), "--base-image", "scratch",
                  "--compression", compression, "--json")  # fmt: skip
        checks = {c["check"]: c for c in json.loads(res.out)["checks"]}
        assert checks["consumers"]["status"] == "PASS", checks["consumers"]
