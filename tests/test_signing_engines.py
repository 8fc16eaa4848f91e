"""`build --sign-key` with every engine that pushes: buildah (our client pushes its gzip
layers), podman (`podman push`, OCI, gzip) and docker against a private dockerd
(`docker push`, Docker schema 2, gzip). Each signed image must pass our `verify --deep
--key` and the OpenSSF library's own `model_signing verify key` on the tree skopeo and
umoci extracted; its model.sig layer has the image's manifest kind and compression."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.clitools import run
from tests.support.features import buildah_builds, need, root
from tests.support.models import engine_build_args, model_files
from tests.support.signing import (
    PASSWORD,
    KeyPair,
    extracted_tree_verifies,
    make_keypair,
    raw_manifest,
    verify_with_key,
)


@pytest.fixture
def keypair(tmp_path: Path, capsys, monkeypatch) -> KeyPair:
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    return make_keypair(capsys, tmp_path / "keys")


def signed_round_trip(engine: str, registry, base: str, keypair: KeyPair, capsys,
                      tmp_path: Path, deep: bool = True) -> dict:  # fmt: skip
    """Build with ``engine`` and --sign-key; both verifiers accept it. Returns its
    manifest as the registry serves it. ``deep`` False: `verify --deep` cannot read an
    image whose layers lack our file-path annotations (podman and docker build from a
    Containerfile and write none: every file would count as missing), so `verify --key`
    checks the signature and the provenance, model_signing every file."""
    image = f"{registry.host}/signed/{engine}:v1"
    res = run(capsys, *engine_build_args(engine, image, tmp_path / "ws", base,
                                         "--sign-key", str(keypair.private)))  # fmt: skip
    assert res.code == 0, res.err
    assert PASSWORD not in res.out + res.err
    digest = res.last_line.split("@")[1]
    manifest = raw_manifest(registry, f"signed/{engine}", digest)
    top = manifest["layers"][-1]
    assert top["annotations"]["org.cncf.model.filepath"] == "/models/model.sig"
    verify_with_key(capsys, image, keypair.public, len(model_files()) if deep else None)
    extracted_tree_verifies(f"docker://{image}", tmp_path / "check", keypair.public)
    return manifest


@pytest.mark.slow
def test_buildah_engine_signs_with_a_gzip_signature_layer(
    hub_repo, registry, base_image, keypair, capsys, tmp_path, monkeypatch
):
    need(root, buildah_builds)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "MODELCAR_BUILDAH_STORAGE_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    manifest = signed_round_trip("buildah", registry, base_image.ref, keypair, capsys, tmp_path)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["layers"][-2]["mediaType"].endswith("+gzip")  # buildah's model layers
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.mark.slow
def test_podman_engine_signs_what_podman_pushed(
    hub_repo, registry, base_image, podman_store, keypair, capsys, tmp_path
):
    manifest = signed_round_trip("podman", registry, base_image.ref, keypair, capsys, tmp_path,
                                 deep=False)  # fmt: skip
    assert manifest["layers"][-1]["mediaType"].endswith("tar+gzip")
    assert manifest["layers"][-2]["mediaType"].endswith("tar+gzip")


@pytest.mark.slow
def test_docker_engine_signs_a_docker_schema2_image(
    hub_repo, registry, base_image, dockerd, keypair, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", dockerd)
    manifest = signed_round_trip("docker", registry, base_image.ref, keypair, capsys, tmp_path,
                                 deep=False)  # fmt: skip
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert manifest["layers"][-1]["mediaType"] == (
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
