"""Engine selection: native is the default everywhere (build, doctor, the preflight),
announced in one line with its compression and what that means for the digest; buildah
runs only when asked (``--engine buildah``, ``MODELCAR_ENGINE=buildah``). An explicit
buildah that cannot run fails before any download, with exit 41 and a hint naming the
securityContext and the SCC; buildah with zstd layers is a usage error up front."""

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
from tests.support.features import need, root, run_as_other_uid

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


def _cli(args, as_uid=None, drop_caps=None, **extra_env):
    cmd = [sys.executable, "-m", "modelcar_builder", *args]
    if as_uid is not None:
        cmd = ["setpriv", f"--reuid={as_uid}", "--regid=0", "--clear-groups", "--", *cmd]
    if drop_caps:
        cmd = ["setpriv", f"--inh-caps={drop_caps}", f"--bounding-set={drop_caps}", "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MODELCAR_ENGINE", None)
    env.update(extra_env)
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


def engine_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "engine: " in line]


def buildah_ran(shared: Path) -> bool:
    """Buildah's storage on the workspace exists once buildah ran (or was probed)."""
    return any((shared / "ws" / "storage" / d).exists() for d in ("vfs", "overlay"))


def test_default_engine_is_native_said_in_one_line(shared_tmp):
    """As root, with buildah installed and able to run (where it used to be picked)."""
    need(root)
    res = _cli(_build_args(shared_tmp))
    assert res.returncode == 0, res.stderr
    (line,) = engine_lines(res.stderr)
    assert "engine: native (the default), uncompressed tar layers" in line, line
    assert "gzip" in line and "buildah" in line and "another digest" in line, line
    assert "with native" in res.stderr  # the pushed-with line names the engine used
    assert not buildah_ran(shared_tmp)


def test_default_engine_as_an_openshift_uid_is_native_without_a_buildah_probe(shared_tmp):
    """Where buildah cannot run (the restricted SCC's arbitrary UID): the same default,
    the same one line, and no word about buildah's probe."""
    need(root, run_as_other_uid)
    res = _cli(_build_args(shared_tmp), as_uid=OPENSHIFT_UID)
    assert res.returncode == 0, res.stderr
    (line,) = engine_lines(res.stderr)
    assert "engine: native (the default)" in line and "cannot run here" not in res.stderr
    assert "with native" in res.stderr and not buildah_ran(shared_tmp)


def test_buildah_when_asked_gives_the_same_model_another_digest(shared_tmp):
    """What the line says: the same model, default (native) and MODELCAR_ENGINE=buildah."""
    need(root)
    default, asked = shared_tmp / "default", shared_tmp / "asked"
    default.mkdir()
    asked.mkdir()
    first = _cli(_build_args(default))
    res = _cli(_build_args(asked), MODELCAR_ENGINE="buildah")
    assert first.returncode == 0 and res.returncode == 0, first.stderr + res.stderr
    (line,) = engine_lines(res.stderr)
    assert "engine: buildah, gzip layers" in line and "another digest" in line, line
    assert "with buildah" in res.stderr and buildah_ran(asked) and not buildah_ran(default)
    digests = [r.stdout.strip().rsplit("@", 1)[-1] for r in (first, res)]
    assert all(d.startswith("sha256:") for d in digests) and digests[0] != digests[1], digests


@pytest.mark.parametrize("preflight", ["", "--no-preflight"])
def test_buildah_with_zstd_is_a_usage_error_before_anything_runs(shared_tmp, preflight):
    """Only the removed chain mode could write zstd; KServe's fetch refuses it anyway."""
    extra = ["--engine", "buildah", "--compression", "zstd", *([preflight] if preflight else [])]
    res = _cli(_build_args(shared_tmp, *extra))
    assert res.returncode == 2, res.stderr
    error, hint = res.stderr.strip().splitlines()[-2:]
    assert error.startswith("error: ") and "zstd" in error, res.stderr
    assert hint.startswith("hint: ") and "KServe" in hint and "--compression gzip" in hint
    assert "Traceback" not in res.stderr
    assert not (shared_tmp / "out").exists()
    assert not any((shared_tmp / "ws" / "context").iterdir()), "nothing was prepared"
    assert not buildah_ran(shared_tmp)


def test_doctor_checks_the_default_engine(shared_tmp):
    """`doctor` without --engine checks what `build` without it would use: native."""
    args = _build_args(shared_tmp)
    args[0] = "doctor"
    res = _cli(args)
    assert res.returncode == 0, res.stdout + res.stderr
    engine = [line.split(None, 2) for line in res.stdout.splitlines() if " engine " in line]
    assert [(status, text.split(":")[0]) for status, _, text in engine] == [("PASS", "native")]
    disk = [line for line in res.stdout.splitlines() if line.split()[1:2] == ["disk"]]
    assert disk and all(" native needs " in line for line in disk if "TMPDIR" not in line)


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


def test_buildah_needs_is_one_story():
    """--help, README.md and the buildah Task say the same sentence."""
    flat = " ".join(BUILDAH_NEEDS.split())
    engine = next(p for p in cli.commands["build"].params if p.name == "engine")
    assert flat in " ".join(engine.help.split())
    for doc in ("README.md", "deploy/components/tekton/task-modelcar-build-buildah.yaml",
                "deploy/overlays/openshift/scc-modelcar-buildah.yaml"):  # fmt: skip
        text = " ".join((ROOT / doc).read_text().replace("#", " ").split())
        assert flat in text, f"{doc} does not say: {BUILDAH_NEEDS}"
