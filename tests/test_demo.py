"""The README's first command: scripts/demo.sh builds the bundled model offline, checks
it with code that is not the build's, and prints the same digest from any checkout path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _checkout_copy(dest: Path) -> Path:
    for part in ("modelcar_builder", "scripts"):
        shutil.copytree(REPO / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _demo(checkout: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELCAR_DEMO_NO_INSTALL": "1", "PYTHONPATH": str(checkout)}
    return subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=checkout, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip


def test_demo_checks_every_file_and_its_digest_does_not_depend_on_the_path(tmp_path):
    runs = [_demo(_checkout_copy(tmp_path / name)) for name in ("a", "elsewhere/b")]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "check: ok: 1 layer(s), 6 files under /models" in run.stdout
    last = [run.stdout.strip().splitlines()[-1] for run in runs]
    assert last[0].startswith(f"oci:{tmp_path / 'a'}/demo/modelcar@sha256:")
    assert last[0].split("@")[1] == last[1].split("@")[1]


def test_the_demo_check_refuses_a_file_that_differs_from_the_source(tmp_path):
    checkout = _checkout_copy(tmp_path / "c")
    assert _demo(checkout).returncode == 0
    changed = checkout / "modelcar_builder/examples/tiny-model/config.json"
    changed.write_text(changed.read_text() + " ")
    check = subprocess.run(
        [sys.executable, "scripts/demo_check.py", "demo/modelcar", "tiny",
         "modelcar_builder/examples/tiny-model"],
        cwd=checkout, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode != 0
    assert "different ['config.json']" in check.stderr
