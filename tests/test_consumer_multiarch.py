"""`--platform linux/amd64,linux/arm64`: one tag, an OCI image index, one manifest per
platform with that platform's base layers and the *same* model layers, uploaded once.
Each reader is the consumer's own code: skopeo sees both platforms, KServe's
`oci+fetch` (kserve-storage) picks linux/amd64 on this amd64 machine, podman pulls and
runs the amd64 image; `verify` checks each manifest and `doctor` every platform's base."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter

import pytest

from tests.support.clitools import run
from tests.support.kserve_fetch import assert_fetched
from tests.support.models import REPO, build_args, model_files
from tests.support.multiarch import ARM64_MARKER, build_multiarch_base
from tests.support.podman_fixture import podman  # noqa: F401 (fixture, by name)

PLATFORMS = "linux/amd64,linux/arm64"


def _skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout


def _raw(ref: str) -> dict:
    return json.loads(_skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))


@pytest.fixture
def multi_base(base_image, registry, tmp_path) -> str:
    return build_multiarch_base(base_image, registry, tmp_path / "multi-base")


@pytest.mark.slow
def test_index_of_two_platforms_shares_the_model_layers_and_every_consumer_reads_it(
    hub, registry, multi_base, capsys, tmp_path, request
):
    hub.add_repo(REPO, model_files())
    image = f"{registry.host}/models/multi:v1"
    mark = registry.mark()
    res = run(capsys, *build_args(image, tmp_path / "ws", multi_base, "--platform", PLATFORMS))
    assert res.code == 0, res.err
    index_digest = res.last_line.rsplit("@", 1)[1]

    # skopeo sees an index with both platforms, each a manifest of its own base
    raw_index = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{image}")
    assert index_digest == "sha256:" + hashlib.sha256(raw_index.encode()).hexdigest()
    index = json.loads(raw_index)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert set(by_arch) == {"amd64", "arm64"}
    assert {m["platform"]["os"] for m in index["manifests"]} == {"linux"}
    manifests = {arch: _raw(f"{image.rsplit(':', 1)[0]}@{d}") for arch, d in by_arch.items()}
    for arch in ("amd64", "arm64"):  # skopeo's own platform choice
        seen = json.loads(_skopeo("inspect", "--tls-verify=false", "--override-arch", arch,
                                  f"docker://{image}"))  # fmt: skip
        assert seen["Architecture"] == arch and seen["Os"] == "linux"
        assert seen["Layers"] == [x["digest"] for x in manifests[arch]["layers"]]

    # the same model layers (digests, sizes, order) on both; the bases differ
    model = {a: [(x["digest"], x["size"]) for x in m["layers"][1:]] for a, m in manifests.items()}
    assert model["amd64"] == model["arm64"] and len(model["amd64"]) == 3
    assert manifests["amd64"]["layers"][0]["digest"] != manifests["arm64"]["layers"][0]["digest"]

    # the registry log: each model blob was uploaded exactly once
    uploads = Counter(b.digest for b in registry.committed_blobs(since=mark))
    assert {d: uploads[d] for d, _ in model["amd64"]} == {d: 1 for d, _ in model["amd64"]}

    # verify (the CLI) checks each manifest, --deep reads every model byte of each
    out = run(capsys, "verify", image, "--no-tls-verify", "--deep")
    assert out.code == 0, out.err
    assert "image index of 2 platforms (linux/amd64, linux/arm64)" in out.out + out.err
    assert "model layers are the same blobs on every platform" in out.out + out.err
    assert "ModelPack" not in out.out + out.err  # no --modelpack, no referrer to check

    # KServe's fetch (kserve-storage) resolves the index to linux/amd64 on this machine
    fetch_mark = registry.mark()
    assert_fetched(image, model_files(), tmp_path / "fetched")
    got = {e.path.rsplit("/", 1)[1] for e in registry.requests(since=fetch_mark, method="GET")
           if "/manifests/" in e.path}  # fmt: skip
    assert by_arch["amd64"] in got and by_arch["arm64"] not in got

    # podman pulls the amd64 manifest and runs it (the arm64 stand-in is never run)
    pm = request.getfixturevalue("podman")
    pm.pull(image)
    arch = pm.run("image", "inspect", "--format", "{{.Architecture}}", image).stdout.strip()
    assert arch == "amd64"
    out = pm.start(image, f"cat /models/config.json; test ! -e /{ARM64_MARKER} && echo amd64-base")
    assert out.stdout == model_files()["config.json"].decode() + "amd64-base\n"


@pytest.mark.slow
def test_doctor_checks_that_the_base_has_every_platform(
    hub, registry, base_image, multi_base, capsys, tmp_path
):
    hub.add_repo(REPO, model_files())
    image = f"{registry.host}/models/multi-doctor:v1"
    args = build_args(image, tmp_path / "ws", base_image.ref, "--platform", PLATFORMS)
    res = run(capsys, "doctor", *args[1:])
    assert res.code == 2, res.out + res.err  # the amd64-only busybox has no arm64
    assert "FAIL  base" in res.out and "arm64" in res.out
    args = build_args(image, tmp_path / "ws", multi_base, "--platform", PLATFORMS)
    res = run(capsys, "doctor", *args[1:])
    assert res.code == 0, res.out + res.err
    assert "PASS  base" in res.out


@pytest.mark.parametrize(
    ("extra", "words"),
    [(("--engine", "buildah"), "native engine only"),
     (("--load",), "pushed to a registry"),
     (("--image", "oci:/nonexistent/layout:v1"), "pushed to a registry"),
     (("--platform", "linux/amd64,linux/amd64"), "twice")],
)  # fmt: skip
def test_an_index_needs_the_native_engine_and_a_registry(hub, capsys, tmp_path, extra, words):
    hub.add_repo(REPO, model_files())
    args = build_args("127.0.0.1:9/models/x:v1", tmp_path / "ws", "scratch",
                      "--platform", PLATFORMS, *extra)  # fmt: skip
    res = run(capsys, *args)
    assert res.code == 2, res.err
    assert words in res.err
    assert hub.requests == []  # refused before the Hub is asked anything


@pytest.mark.slow
def test_index_with_stream_uploads_each_model_layer_once(
    hub, registry, multi_base, capsys, tmp_path
):
    hub.add_repo(REPO, model_files())
    image = f"{registry.host}/models/multi-stream:v1"
    mark = registry.mark()
    res = run(capsys, *build_args(image, tmp_path / "ws", multi_base, "--platform", PLATFORMS,
                                  "--stream"))  # fmt: skip
    assert res.code == 0, res.err
    index = _raw(image)
    layers = [
        _raw(f"{image.rsplit(':', 1)[0]}@{m['digest']}")["layers"][1:] for m in index["manifests"]
    ]
    assert layers[0] == layers[1] and len(layers[0]) == 3
    uploads = Counter(b.digest for b in registry.committed_blobs(since=mark))
    assert [uploads[x["digest"]] for x in layers[0]] == [1, 1, 1]
    out = run(capsys, "verify", image, "--no-tls-verify", "--deep")
    assert out.code == 0, out.err
