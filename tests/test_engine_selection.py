"""Engine auto-selection never picks an engine that cannot run: buildah's probe (a tiny
``from scratch`` + ``copy`` + ``rm``) decides. Left to its default, a UID buildah cannot
run as gets native and one line saying so; an explicit ``--engine buildah`` there fails
before any download, with exit 41 and a hint naming the securityContext and the SCC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from modelcar_builder.cli import cli
from modelcar_builder.engines.buildah.probe import BUILDAH_NEEDS
from tests.features import need, root, run_as_other_uid

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "modelcar_builder" / "examples" / "tiny-model"
OPENSHIFT_UID = 1000680000
pytestmark = pytest.mark.skipif(not shutil.which("buildah"), reason="buildah not installed")


@pytest.fixture
def shared_tmp():
    path = Path(tempfile.mkdtemp(prefix="modelcar-engine-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli(args, as_uid=None, drop_caps=None):
    cmd = [sys.executable, "-m", "modelcar_builder", *args]
    if as_uid is not None:
        cmd = ["setpriv", f"--reuid={as_uid}", "--regid=0", "--clear-groups", "--", *cmd]
    if drop_caps:
        cmd = ["setpriv", f"--inh-caps={drop_caps}", f"--bounding-set={drop_caps}", "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MODELCAR_ENGINE", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _model(shared: Path) -> Path:
    model = shared / "model"
    shutil.copytree(TINY, model)
    for p in [model, *model.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return model


def _build_args(shared: Path, *extra: str) -> list[str]:
    out, ws = f"oci:{shared / 'out'}:t", str(shared / "ws")
    model = str(_model(shared))
    return ["build", model, "--base-image", "scratch", "--image", out, "--workspace", ws, *extra]


def test_default_engine_falls_back_to_native_when_buildah_cannot_run(shared_tmp):
    need(root, run_as_other_uid)
    res = _cli(_build_args(shared_tmp), as_uid=OPENSHIFT_UID)
    assert res.returncode == 0, res.stderr
    fallback = [line for line in res.stderr.splitlines() if "engine: native" in line]
    assert len(fallback) == 1, res.stderr
    assert "buildah" in fallback[0] and "cannot run here" in fallback[0]
    assert "with native" in res.stderr  # the pushed-with line names the engine used


def test_explicit_buildah_that_cannot_run_fails_before_download(shared_tmp):
    need(root, run_as_other_uid)
    res = _cli(_build_args(shared_tmp, "--engine", "buildah"), as_uid=OPENSHIFT_UID)
    assert res.returncode == 41, res.stderr
    error, hint = res.stderr.strip().splitlines()[-2:]
    assert error.startswith("error: buildah cannot build here")
    assert hint.startswith("hint: ") and "securityContext" in hint and "SCC" in hint
    assert "--engine native" in hint
    assert not (shared_tmp / "out").exists()
    assert not any((shared_tmp / "ws" / "context").iterdir()), "nothing was prepared"


def test_buildah_without_sys_chroot_is_refused_by_the_probe(shared_tmp):
    """Root is not enough: the probe runs buildah's copier, which chroots."""
    need(root)
    res = _cli(_build_args(shared_tmp, "--engine", "buildah"), drop_caps="-sys_chroot")
    if res.returncode == 0:
        pytest.skip("setpriv could not take SYS_CHROOT away here")
    assert res.returncode == 41, res.stderr
    assert "SYS_CHROOT" in res.stderr


def test_default_engine_is_buildah_where_it_can_run(shared_tmp):
    need(root)
    res = _cli(_build_args(shared_tmp))
    assert res.returncode == 0, res.stderr
    assert "with buildah" in res.stderr
    assert "engine: native" not in res.stderr


def test_buildah_needs_is_one_story():
    """--help, README.md and the buildah Task say the same sentence."""
    flat = " ".join(BUILDAH_NEEDS.split())
    engine = next(p for p in cli.commands["build"].params if p.name == "engine")
    assert flat in " ".join(engine.help.split())
    for doc in ("README.md", "deploy/components/tekton/task-modelcar-build-buildah.yaml",
                "deploy/overlays/openshift/scc-modelcar-buildah.yaml"):  # fmt: skip
        text = " ".join((ROOT / doc).read_text().replace("#", " ").split())
        assert flat in text, f"{doc} does not say: {BUILDAH_NEEDS}"
