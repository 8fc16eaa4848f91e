"""One source, both engines: the two images must hold the same /models tree, file for
file, with the same bytes, modes and owners (they differ only in compression)."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from tests.support.clitools import run
from tests.support.hubsim import EDGE_FILES
from tests.support.imagecheck import assert_models_match, unpack

MIB = 1 << 20
REPO = "acme/parity"


def files() -> dict[str, bytes]:
    block = hashlib.sha256(b"parity").digest() * (MIB // 32)
    return {
        "config.json": b'{"a": 1}',
        "a/config.json": b'{"b": 2}',
        "tokenizer/tokenizer.json": b"{}",
        "model-00001-of-00002.safetensors": block * 2 + b"1",
        "model-00002-of-00002.safetensors": block * 3 + b"2",
        **EDGE_FILES,
    }


def tree(rootfs: Path) -> dict[str, tuple[int, str]]:
    models = rootfs / "models"
    out = {}
    for p in sorted([models, *models.rglob("*")]):
        mode = stat.S_IMODE(p.lstat().st_mode)
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[p.relative_to(rootfs).as_posix()] = (mode, digest)
    return out


@pytest.mark.slow
def test_native_and_buildah_images_hold_the_same_tree(hub, registry, base_image, capsys, tmp_path):
    hub.add_repo(REPO, files())
    images = {}
    for engine in ("native", "buildah"):
        image = f"{registry.host}/parity/{engine}:v1"
        res = run(
            capsys, "build", REPO, "--engine", engine, "--image", image,
            "--workspace", str(tmp_path / f"ws-{engine}"), "--base-image", base_image.ref,
            "--layer-threshold", str(MIB), "--no-tls-verify",
        )  # fmt: skip
        assert res.code == 0, res.err
        images[engine] = unpack(f"docker://{image}", tmp_path / f"check-{engine}")
    for img in images.values():
        assert_models_match(img, files())
    assert tree(images["native"].rootfs) == tree(images["buildah"].rootfs)
    native_members = {
        n: (stat.S_IMODE(m.mode), m.uid, m.gid, m.type)
        for n, m in images["native"].model_members().items()
    }
    buildah_members = {
        n: (stat.S_IMODE(m.mode), m.uid, m.gid, m.type)
        for n, m in images["buildah"].model_members().items()
    }
    assert native_members == buildah_members
    assert len(images["native"].manifest["layers"]) == len(images["buildah"].manifest["layers"])
