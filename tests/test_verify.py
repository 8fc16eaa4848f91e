"""`modelcar verify` against real tampering: images built by the native engine into a real
docker-registry (or an OCI layout), then changed the way a broken registry, a wrong
`skopeo copy` or a bad disk would change them: manifests edited and PUT over HTTP, bytes
flipped in the registry's own storage directory."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest
import requests

from modelcar_builder import errors
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST
from modelcar_builder.registry import RegistryClient
from modelcar_builder.verify import DeepOptions, verify_push
from tests.support.clitools import Result, run
from tests.support.registry import RegistryInstance

pytestmark = pytest.mark.slow

KIB = 1024
MIB = 1024 * KIB
REPO = "acme/tiny"
IMAGE_REPO = "models/tiny"
FAILED = errors.VerificationFailed.exit_code


def tiny_files(seed: str = "a") -> dict[str, bytes]:
    def shard(n: int) -> bytes:
        return hashlib.sha256(f"{seed}-{n}".encode()).digest() * (3 * KIB + n)  # ~96 KiB

    return {
        "config.json": f'{{"model_type": "{seed}"}}'.encode(),
        "tokenizer.json": b'{"vocab": {}}',
        "model-00001-of-00002.safetensors": shard(1),
        "model-00002-of-00002.safetensors": shard(2),
    }


@pytest.fixture
def tiny_repo(hub):
    hub.add_repo(REPO, tiny_files())
    return hub


def build(capsys, image: str, ws: Path, base: str, *extra: str, repo: str = REPO) -> str:
    """Build with the native engine; returns the pushed manifest digest."""
    res = run(
        capsys,
        "build", f"hf://{repo}@main", "--engine", "native", "--image", image,
        "--workspace", str(ws), "--base-image", base, "--layer-threshold", str(64 * KIB),
        "--no-tls-verify", *extra,
    )  # fmt: skip
    assert res.code == 0, res.err
    return res.last_line.rsplit("@", 1)[1]


def verify(capsys, image: str, *extra: str) -> Result:
    return run(capsys, "verify", image, *extra)


def reg_verify(capsys, image: str, *extra: str) -> Result:
    return verify(capsys, image, "--no-tls-verify", *extra)


def get_manifest(reg: RegistryInstance, ref: str) -> dict:
    resp = requests.get(
        f"{reg.url}/v2/{IMAGE_REPO}/manifests/{ref}",
        headers={"Accept": MEDIA_TYPE_MANIFEST},
        timeout=10,
    )
    resp.raise_for_status()
    return resp.json()


def put_manifest(reg: RegistryInstance, tag: str, manifest: dict) -> str:
    """PUT an edited manifest under ``tag``, the way any client with push rights can."""
    resp = requests.put(
        f"{reg.url}/v2/{IMAGE_REPO}/manifests/{tag}",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": manifest["mediaType"]},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    return f"{reg.host}/{IMAGE_REPO}:{tag}"


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def model_layer(manifest: dict, n: int = 0) -> dict:
    """The n-th layer the builder made (annotated with its /models path)."""
    ours = [d for d in manifest["layers"] if "org.cncf.model.filepath" in d.get("annotations", {})]
    return ours[n]


def test_an_untampered_image_passes_and_says_what_was_checked(
    tiny_repo, registry, base_image, capsys, tmp_path
):
    image = f"{registry.host}/{IMAGE_REPO}:v1"
    digest = build(capsys, image, tmp_path / "ws", base_image.ref)
    commit = tiny_repo.head(REPO)

    res = reg_verify(capsys, image, "--label", f"org.opencontainers.image.revision={commit}")
    assert res.code == 0, res.err
    assert res.last_line == f"oci://{registry.host}/{IMAGE_REPO}@{digest}"
    assert "checked 4 layers = 4 rootfs.diff_ids" in res.out
    assert "checked 3 uncompressed layer digest(s) = their diff_id" in res.out
    assert "checked 5 blobs present with their sizes" in res.out
    assert f"revision {commit}" in res.out
    assert "not read: layer contents" in res.out
    cheap = json.loads(reg_verify(capsys, image, "--json").out)
    assert cheap["version"] == 1 and cheap["deep"] is None and cheap["layers"] == 4
    # Default verify reads the manifest and the config only: a few KiB, not the layers.
    assert 0 < cheap["bytes_read"] < 16 * KIB < cheap["total_size"]

    res = reg_verify(capsys, image, "--deep")
    assert res.code == 0, res.err
    assert f"files   4 files in 3 model layer(s) = the Hub's {REPO}@{commit}" in res.out
    assert "read    1.2 MiB (" in res.out  # the busybox base is most of it
    doc = json.loads(reg_verify(capsys, image, "--deep", "--json").out)
    assert doc["version"] == 1 and doc["digest"] == digest and doc["revision"] == commit
    assert doc["deep"]["blobs_hashed"] == 4 and doc["deep"]["files_checked"] == 4
    assert doc["deep"]["model_layers"] == 3 and doc["deep"]["files_compared"] is True
    # --deep reads each layer once on top of the manifest and config.
    layers = sum(d["size"] for d in get_manifest(registry, "v1")["layers"])
    assert doc["bytes_read"] == cheap["bytes_read"] + layers


def test_a_dropped_layer_fails(tiny_repo, registry, capsys, tmp_path):
    build(capsys, f"{registry.host}/{IMAGE_REPO}:v1", tmp_path / "ws", "scratch")
    manifest = get_manifest(registry, "v1")
    manifest["layers"].remove(model_layer(manifest, 1))
    res = reg_verify(capsys, put_manifest(registry, "dropped", manifest))
    assert res.code == FAILED
    assert "the manifest lists 2 layers but the config's rootfs.diff_ids 3" in res.err
    assert "hint: " in res.err and "Traceback" not in res.err


def test_a_swapped_uncompressed_layer_fails_by_default(tiny_repo, registry, capsys, tmp_path):
    build(capsys, f"{registry.host}/{IMAGE_REPO}:v1", tmp_path / "ws", "scratch")
    manifest = get_manifest(registry, "v1")
    manifest["layers"][0] = dict(manifest["layers"][1])  # another blob where layer 1 was
    res = reg_verify(capsys, put_manifest(registry, "swapped", manifest))
    assert res.code == FAILED
    assert f"layer 1 of 3 ({manifest['layers'][0]['digest']}) is uncompressed" in res.err
    assert "its digest must be the config's diff_id" in res.err


def test_another_images_config_fails(hub, registry, capsys, tmp_path):
    hub.add_repo(REPO, tiny_files("a"))
    hub.add_repo("acme/other", tiny_files("b"))
    build(capsys, f"{registry.host}/{IMAGE_REPO}:v1", tmp_path / "ws", "scratch")
    build(capsys, f"{registry.host}/{IMAGE_REPO}:other", tmp_path / "ws2", "scratch",
          repo="acme/other")  # fmt: skip
    manifest = get_manifest(registry, "v1")
    manifest["config"] = get_manifest(registry, "other")["config"]
    res = reg_verify(capsys, put_manifest(registry, "mixed", manifest))
    assert res.code == FAILED
    assert "the manifest points to another image's config" in res.err
    assert "org.opencontainers.image.source" in res.err


def test_a_flipped_byte_in_storage_is_caught_by_deep(tiny_repo, registry, capsys, tmp_path):
    image = f"{registry.host}/{IMAGE_REPO}:v1"
    build(capsys, image, tmp_path / "ws", "scratch")
    layer = model_layer(get_manifest(registry, "v1"), 1)
    flip_byte(registry.blob_file(layer["digest"]), 4096)  # inside the shard's content
    # Default verify reads no layer byte: the registry serves the damaged blob as is.
    assert reg_verify(capsys, image).code == 0
    res = reg_verify(capsys, image, "--deep")
    assert res.code == FAILED
    assert f"layer 2 of 3 ({layer['digest']}): the blob's bytes hash to sha256:" in res.err


def test_a_missing_tag_is_its_own_error(registry, capsys, tmp_path):
    for extra in ((), ("--deep",)):
        res = reg_verify(capsys, f"{registry.host}/models/none:x", *extra)
        assert res.code == errors.ImageNotFound.exit_code == 61
        assert "does not exist" in res.err and "push first" in res.err
    res = verify(capsys, f"oci:{tmp_path / 'nothing'}:v1")
    assert res.code == 61 and "does not exist" in res.err


def test_gzip_layers_pass_deep_and_a_swap_or_flip_fails_it(
    tiny_repo, registry, base_image, capsys, tmp_path
):
    image = f"{registry.host}/{IMAGE_REPO}:gz"
    build(capsys, image, tmp_path / "ws", base_image.ref, "--compression", "gzip")
    doc = json.loads(reg_verify(capsys, image, "--deep", "--json").out)
    assert doc["deep"]["diff_ids_checked"] == 4 and doc["deep"]["files_checked"] == 4
    assert "0 uncompressed layer digest(s)" in " ".join(doc["checks"])

    # Two gzip layers trade places, config unchanged: only unpacking them can tell.
    manifest = get_manifest(registry, "gz")
    first, second = model_layer(manifest, 0), model_layer(manifest, 1)
    i, j = manifest["layers"].index(first), manifest["layers"].index(second)
    manifest["layers"][i], manifest["layers"][j] = second, first
    swapped = put_manifest(registry, "gz-swapped", manifest)
    assert reg_verify(capsys, swapped).code == 0
    res = reg_verify(capsys, swapped, "--deep")
    assert res.code == FAILED and "its unpacked content hashes to" in res.err
    assert "the config's diff_id is" in res.err and "layer " in res.err

    flip_byte(registry.blob_file(first["digest"]), first["size"] // 2)
    res = reg_verify(capsys, image, "--deep")
    assert res.code == FAILED
    assert f"layer {i + 1} of 4 ({first['digest']}): the blob's bytes hash to" in res.err


def test_deep_against_a_report_and_the_hub_selection(tiny_repo, registry, capsys, tmp_path):
    image = f"{registry.host}/{IMAGE_REPO}:v1"
    report = tmp_path / "report.json"
    build(capsys, image, tmp_path / "ws", "scratch", "--exclude", "tokenizer.json",
          "--report", str(report))  # fmt: skip
    res = reg_verify(capsys, image, "--deep", "--report", str(report))
    assert res.code == 0, res.err
    assert f"3 files in 3 model layer(s) = report {report}" in res.out

    # The Hub lists tokenizer.json: without the build's --exclude it is missing.
    res = reg_verify(capsys, image, "--deep")
    assert res.code == FAILED and "models/tokenizer.json is missing from the image" in res.err
    assert reg_verify(capsys, image, "--deep", "--exclude", "tokenizer.json").code == 0

    doc = json.loads(report.read_text())
    cases = {
        "has other content": lambda files: files[0].update(sha256="0" * 64, blob_id=None),
        # A git blob id (what the Hub gives non-LFS files) is checked where no sha256 is.
        "config.json in layer 3 has other content": lambda files: next(
            f for f in files if f["path"] == "config.json"
        ).update(sha256=None, blob_id="0" * 40),
        "is not expected": lambda files: files.pop(),
        "is missing from the image": lambda files: files.append(
            {"path": "extra.bin", "size": 1, "sha256": "0" * 64}
        ),
    }
    for message, edit in cases.items():
        edited = json.loads(json.dumps(doc))
        edit(edited["files"])
        bad = tmp_path / "edited.json"
        bad.write_text(json.dumps(edited))
        res = reg_verify(capsys, image, "--deep", "--report", str(bad))
        assert res.code == FAILED and message in res.err, (message, res.err)

    # A report without hashes: files are checked by presence and size, and counted.
    for entry in doc["files"]:
        entry.update(sha256=None, blob_id=None)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(doc))
    out = json.loads(reg_verify(capsys, image, "--deep", "--report", str(bare), "--json").out)
    assert out["deep"]["files_checked"] == 0 and out["deep"]["files_unhashed"] == 3


def test_an_oci_layout_gets_the_same_checks(tiny_repo, capsys, tmp_path):
    out = tmp_path / "layout"
    build(capsys, f"oci:{out}:v1", tmp_path / "ws", "scratch")
    res = verify(capsys, f"oci:{out}:v1", "--deep")
    assert res.code == 0, res.err
    assert "checked 3 layers = 3 rootfs.diff_ids" in res.out and "files   4 files" in res.out

    index = json.loads((out / "index.json").read_text())
    blobs = out / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    layer = model_layer(manifest, 0)
    flip_byte(blobs / layer["digest"][7:], 2048)
    assert verify(capsys, f"oci:{out}:v1").code == 0
    res = verify(capsys, f"oci:{out}:v1", "--deep")
    assert res.code == FAILED
    assert f"layer 1 of 3 ({layer['digest']}): the blob's bytes hash to" in res.err


def test_deep_holds_no_blob_in_memory(registry, capsys, tmp_path):
    """A 48 MiB gzip layer is read, unpacked and its file hashed in pieces: the peak of
    Python allocations stays far under the layer's size."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(os.urandom(48 * MIB))
    report = tmp_path / "report.json"
    image = f"{registry.host}/{IMAGE_REPO}:big"
    res = run(
        capsys,
        "build", str(model), "--engine", "native", "--image", image, "--workspace",
        str(tmp_path / "ws"), "--base-image", "scratch", "--compression", "gzip",
        "--no-tls-verify", "--report", str(report),
    )  # fmt: skip
    assert res.code == 0, res.err
    digest = res.last_line.rsplit("@", 1)[1]
    with RegistryClient(registry.host, tls_verify=False) as client:
        tracemalloc.start()
        try:
            result = verify_push(client, IMAGE_REPO, "big", digest, {}, DeepOptions(report))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    deep = result.deep
    assert deep is not None and deep.bytes_read > 48 * MIB  # one layer holds both files
    assert (deep.diff_ids_checked, deep.files_checked + deep.files_unhashed) == (1, 2)
    assert peak < 16 * MIB, f"peak {peak / MIB:.1f} MiB"


def test_layers_without_their_annotation_are_read_by_deep(tiny_repo, registry, capsys, tmp_path):
    """The same uncompressed OCI layers with no /models annotation (what a Containerfile
    build pushes): the cheap verify says what it cannot tell, --deep finds every file by
    reading the tars."""
    build(capsys, f"{registry.host}/{IMAGE_REPO}:v1", tmp_path / "ws", "scratch")
    manifest = get_manifest(registry, "v1")
    for layer in manifest["layers"]:
        layer.pop("annotations", None)
    bare = put_manifest(registry, "bare", manifest)
    res = reg_verify(capsys, bare)
    assert res.code == 0, res.err
    assert "not told: which of the 3 layers hold /models: none is annotated" in res.out
    res = reg_verify(capsys, bare, "--deep")
    assert res.code == 0, res.err
    assert f"files   4 files in 3 model layer(s) = the Hub's {REPO}@" in res.out
    assert "not told" not in res.out
