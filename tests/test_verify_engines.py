"""`verify --deep` of images the Containerfile engines built: real podman (OCI manifest,
gzip layers) and a real dockerd (Docker schema 2, gzip), both from the Hub imitation into
a loopback registry; podman's image rewritten as Docker schema 2 with its layers
unpacked (uncompressed); and
podman's image signed by `build --sign-key` (model.sig in an annotated layer on top).
None of their model layers carries our /models annotation: /models is found by reading
each layer's tar. Each must pass against the Hub and against `build --report`, and be
refused, naming the file, once one model file differs from what was expected."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from modelcar_builder import errors
from modelcar_builder.oci import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST, MEDIA_TYPE_MANIFEST
from modelcar_builder.registry import RegistryClient
from tests.support.clitools import Result, run
from tests.support.models import REPO, model_files
from tests.support.models import engine_build_args as build_args

FAILED = errors.VerificationFailed.exit_code
N_FILES = len(model_files())
# Same size as model_files()'s config.json: only its hash can tell the two apart.
CHANGED = {"config.json": b'{"model_type": "LLM"}'}


def verify(capsys, image: str, *extra: str) -> Result:
    return run(capsys, "verify", image, "--no-tls-verify", *extra)


def build(capsys, engine: str, image: str, ws: Path, base: str, *extra: str) -> str:
    res = run(capsys, *build_args(engine, image, ws, base, *extra))
    assert res.code == 0, res.err
    return res.last_line.rsplit("@", 1)[1]


def layers_of(image: str) -> list[dict]:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image}"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(raw)["layers"]


def uncompressed_v2s2(registry, repo: str, tag: str, to_repo: str) -> str:
    """Copy an OCI image with gzip layers to ``to_repo`` as Docker schema 2 with the same
    config and each layer gunzipped (digest = diff_id); no annotation is carried over."""
    with RegistryClient(registry.host, tls_verify=False) as client:
        doc = json.loads(client.get_manifest(repo, tag, (MEDIA_TYPE_MANIFEST,)).body)
        config = doc["config"]
        if not client.mount_blob(to_repo, config["digest"], repo):
            raw = client.read_blob(repo, config["digest"])
            client.upload_blob(to_repo, config["digest"], len(raw), lambda: [raw])
        layers = []
        for layer in doc["layers"]:
            data = gzip.decompress(client.read_blob(repo, layer["digest"], max_size=1 << 30))
            digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
            client.upload_blob(to_repo, digest, len(data), lambda data=data: [data])
            layers.append({"mediaType": DOCKER_LAYER, "digest": digest, "size": len(data)})
        manifest = {
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": layers,
            "config": {**config, "mediaType": DOCKER_CONFIG},
        }  # fmt: skip
        body = json.dumps(manifest).encode()
        client.put_manifest(to_repo, "v1", body, DOCKER_MANIFEST)
    return f"{registry.host}/{to_repo}:v1"


def assert_deep_passes(capsys, image: str, report: Path, commit: str, compressed: int) -> None:
    """Cheap verify passes and says what it cannot tell; --deep finds the 3 model layers
    (two shards, the small files) on top of the busybox base and every file, against the
    Hub at the image's revision and against the build report."""
    for layer in layers_of(image):
        assert "org.cncf.model.filepath" not in (layer.get("annotations") or {})
    cheap = verify(capsys, image)
    assert cheap.code == 0, cheap.err
    assert "not told: which of the 4 layers hold /models: none is annotated" in cheap.out
    doc = json.loads(verify(capsys, image, "--json").out)
    assert doc["deep"] is None and len(doc["unchecked"]) == 1

    res = verify(capsys, image, "--deep")
    assert res.code == 0, res.err
    assert f"files   {N_FILES} files in 3 model layer(s) = the Hub's {REPO}@{commit}" in res.out
    assert "not told" not in res.out
    deep = json.loads(verify(capsys, image, "--deep", "--json").out)
    assert deep["unchecked"] == [] and deep["revision"] == commit
    assert deep["deep"]["model_layers"] == 3 and deep["deep"]["blobs_hashed"] == 4
    assert deep["deep"]["files_checked"] == N_FILES and deep["deep"]["files_compared"] is True
    assert deep["deep"]["diff_ids_checked"] == compressed

    res = verify(capsys, image, "--deep", "--report", str(report))
    assert res.code == 0, res.err
    assert f"files   {N_FILES} files in 3 model layer(s) = report {report}" in res.out


def assert_changed_file_refused(capsys, hub, engine, image: str, report: Path, ws, base) -> None:
    """A second image of the repo after one commit changed config.json: sound against its
    own revision, refused (exit 60, naming the file) against the first build's report."""
    commit = hub.commit(REPO, CHANGED)
    other = image.rsplit(":", 1)[0] + ":changed"
    build(capsys, engine, other, ws, base)
    assert verify(capsys, other, "--deep").code == 0
    res = verify(capsys, other, "--deep", "--report", str(report))
    assert res.code == FAILED, res.out + res.err
    assert f"/models differs from report {report}: models/config.json in layer 4 " in res.err
    assert "has other content" in res.err and "Traceback" not in res.err
    assert hub.head(REPO) == commit


def test_podman_image_passes_deep_and_a_changed_file_is_refused(
    hub_repo, registry, base_image, podman_store, capsys, tmp_path
):
    image = f"{registry.host}/models/podman:v1"
    report = tmp_path / "report.json"
    ws = tmp_path / "ws"
    build(capsys, "podman", image, ws, base_image.ref, "--report", str(report))
    assert_deep_passes(capsys, image, report, hub_repo.head(REPO), compressed=4)

    # The same image as Docker schema 2 with podman's layers unpacked (skopeo 1.9 only
    # compresses when it pushes): the layer digests are then the diff_ids.
    v2s2 = uncompressed_v2s2(registry, "models/podman", "v1", "models/podman-v2s2")
    assert {la["mediaType"] for la in layers_of(v2s2)} == {DOCKER_LAYER}
    assert_deep_passes(capsys, v2s2, report, hub_repo.head(REPO), compressed=0)
    assert "checked 4 uncompressed layer digest(s) = their diff_id" in verify(capsys, v2s2).out

    assert_changed_file_refused(capsys, hub_repo, "podman", image, report, ws, base_image.ref)


def test_docker_image_passes_deep_and_a_changed_file_is_refused(
    hub_repo, registry, base_image, dockerd, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", dockerd)
    image = f"{registry.host}/models/docker:v1"
    report = tmp_path / "report.json"
    ws = tmp_path / "ws"
    build(capsys, "docker", image, ws, base_image.ref, "--report", str(report))
    assert {la["mediaType"] for la in layers_of(image)} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    assert_deep_passes(capsys, image, report, hub_repo.head(REPO), compressed=4)
    assert_changed_file_refused(capsys, hub_repo, "docker", image, report, ws, base_image.ref)


@pytest.fixture
def keypair(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COSIGN_PASSWORD", "engines-signing-password")
    assert run(capsys, "keygen", str(tmp_path / "keys")).code == 0
    return tmp_path / "keys" / "cosign.key", tmp_path / "keys" / "cosign.pub"


def test_a_signed_podman_image_passes_deep_with_its_model_sig(
    hub_repo, registry, base_image, podman_store, keypair, capsys, tmp_path
):
    private, public = keypair
    image = f"{registry.host}/models/podman:signed"
    report = tmp_path / "report.json"
    build(capsys, "podman", image, tmp_path / "ws", base_image.ref, "--report", str(report),
          "--sign-key", str(private))  # fmt: skip
    top = layers_of(image)[-1]
    assert top["annotations"]["org.cncf.model.filepath"] == "/models/model.sig"
    # Only the signature layer is annotated: the cheap verify still cannot tell the rest.
    assert "not told: which of the 5 layers hold /models" in verify(capsys, image).out
    res = verify(capsys, image, "--deep", "--key", str(public))
    assert res.code == 0, res.err
    assert f"files   {N_FILES} files in 4 model layer(s) = the Hub's {REPO}@" in res.out
    assert f"ok: {N_FILES} files = the provenance; {N_FILES} = /models/model.sig" in res.out
    res = verify(capsys, image, "--deep", "--report", str(report))
    assert res.code == 0, res.err


def test_podman_zstd_layers_are_refused_by_deep_saying_why(
    hub_repo, registry, base_image, podman_store, capsys, tmp_path
):
    """Python's tarfile (before 3.14) cannot unpack tar+zstd: the blobs are hashed, the
    files cannot be read, and the refusal names the layers it could not unpack."""
    image = f"{registry.host}/models/podman:zstd"
    build(capsys, "podman", image, tmp_path / "ws", base_image.ref, "--compression", "zstd")
    assert verify(capsys, image).code == 0
    res = verify(capsys, image, "--deep")
    assert res.code == FAILED, res.out
    assert "models/a/config.json is missing from the image" in res.err
    assert "tar+zstd, not unpacked by --deep" in res.err and "layer 2 of 4 (" in res.err


def test_buildah_image_passes_deep_as_before(hub_repo, registry, base_image, capsys, tmp_path):
    """buildah's layers are our own tars, annotated: --deep reads them as it always did
    (and now reads the base's tar too, finding no /models there)."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is needed (scripts/install-deps.sh installs it)")
    image = f"{registry.host}/models/buildah:v1"
    report = tmp_path / "report.json"
    ws = tmp_path / "ws"
    build(capsys, "buildah", image, ws, base_image.ref, "--report", str(report))
    annotated = [la for la in layers_of(image) if "org.cncf.model.filepath" in
                 (la.get("annotations") or {})]  # fmt: skip
    assert len(annotated) == 3
    assert "not told" not in verify(capsys, image).out
    for extra in ((), ("--report", str(report))):
        res = verify(capsys, image, "--deep", "--json", *extra)
        assert res.code == 0, res.err
        deep = json.loads(res.out)["deep"]
        assert (deep["model_layers"], deep["files_checked"]) == (3, N_FILES)
    assert_changed_file_refused(capsys, hub_repo, "buildah", image, report, ws, base_image.ref)
