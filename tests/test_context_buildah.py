"""The build context `modelcar prepare` writes is plain input for plain tools: stock
`buildah bud` builds it (no modelcar code involved) into an image whose /models matches
the Hub repo file by file."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.support.clitools import run
from tests.support.hubsim import EDGE_FILES
from tests.support.imagecheck import assert_modelcar_config, assert_models_match, unpack
from tests.support.registry import private_containers_env

MIB = 1 << 20
REPO = "acme/ctx"


def files() -> dict[str, bytes]:
    big = hashlib.sha256(b"w").digest() * (MIB // 16)
    return {
        "config.json": b'{"top": 1}',
        "a/config.json": b'{"nested": 2}',
        "tokenizer/tokenizer.json": b"{}",
        "model.safetensors": big * 2,
        "sub/dir/more.safetensors": big + b"tail",
        **EDGE_FILES,
    }


@pytest.mark.slow
def test_prepared_context_builds_with_plain_buildah_bud(hub, capsys, tmp_path):
    hub.add_repo(REPO, files())
    ws = tmp_path / "ws"
    res = run(capsys, "prepare", REPO, "--workspace", str(ws), "--base-image", "scratch",
              "--layer-threshold", str(MIB))  # fmt: skip
    assert res.code == 0, res.err
    ctx = Path(res.last_line)
    env = private_containers_env(tmp_path / "containers")
    buildah = ["buildah", "--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "run"),
               "--storage-driver", "vfs"]  # fmt: skip
    subprocess.run(
        [*buildah, "bud", "--isolation", "chroot", "--layers", "--timestamp", "0",
         "-f", str(ctx / "Containerfile"), "-t", "localhost/ctx:test", str(ctx)],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    out = tmp_path / "oci"
    subprocess.run([*buildah, "push", "localhost/ctx:test", f"oci:{out}:t"],
                   check=True, capture_output=True, env=env)  # fmt: skip
    img = unpack(f"oci:{out}:t", tmp_path / "check")
    assert_models_match(img, files())
    assert_modelcar_config(img, {"org.opencontainers.image.revision": hub.head(REPO)})
    assert len(img.manifest["layers"]) == 3  # small files + one per large file
