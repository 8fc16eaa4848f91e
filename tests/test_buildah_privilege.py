"""The seed's blocker: buildah in a pod without SETFCAP failed with `uid_map ... operation
not permitted`. The buildah engine (`--engine buildah`) must not need SETFCAP or
SYS_ADMIN: it never runs a container and never enters a user namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.features import need, root, setpriv_drops_caps
from tests.support.imagecheck import assert_models_match, unpack

TINY = Path(__file__).parent.parent / "modelcar_builder" / "examples" / "tiny-model"


@pytest.mark.skipif(not shutil.which("buildah"), reason="buildah not installed")
def test_default_buildah_engine_needs_neither_setfcap_nor_sys_admin(tmp_path):
    need(root, setpriv_drops_caps)
    out = tmp_path / "out"
    drop = "-setfcap,-sys_admin"
    proc = subprocess.run(
        ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--",
         sys.executable, "-m", "modelcar_builder", "build", str(TINY), "--engine", "buildah",
         "--base-image", "scratch", "--image", f"oci:{out}:t",
         "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "uid_map" not in proc.stderr
    files = {p.relative_to(TINY).as_posix(): p.read_bytes() for p in TINY.rglob("*") if p.is_file()}
    assert_models_match(unpack(f"oci:{out}:t", tmp_path / "check"), files)
