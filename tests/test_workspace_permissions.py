"""The seed's blocker: `Permission denied` on a PVC workspace. The tool must work as root,
as an arbitrary UID with GID 0 on a volume owned by someone else (fsGroup style), and on
a noexec mount. These run the real CLI in a child process with the real identity."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from modelcar_builder.errors import WorkspaceError
from tests.support.features import need, noexec_tmpfs_mount, run_as_other_uid

TINY = Path(__file__).parent.parent / "modelcar_builder" / "examples" / "tiny-model"
OPENSHIFT_UID = 1000680000


@pytest.fixture
def shared_tmp():
    """A temp dir other UIDs can traverse (pytest's own tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="modelcar-perm-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_cli(args, *, as_uid=None, cwd=None, env=None):
    cmd = [sys.executable, "-m", "modelcar_builder", *args]
    if as_uid is not None:
        cmd = ["setpriv", f"--reuid={as_uid}", "--regid=0", "--clear-groups", "--", *cmd]
    full_env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=full_env)


def copy_world_readable(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dst


def assert_context_modes(ctx: Path) -> None:
    for p in ctx.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), f"{p} has mode {mode:o}"


def test_prepare_as_root_sets_modes_despite_umask(tmp_path):
    model = copy_world_readable(TINY, tmp_path / "model")
    old = os.umask(0o077)
    try:
        res = run_cli(["prepare", str(model), "--workspace", str(tmp_path / "ws")])
    finally:
        os.umask(old)
    assert res.returncode == 0, res.stderr
    ctx = Path(res.stdout.strip().splitlines()[-1])
    assert_context_modes(ctx)
    assert (ctx / "layer-000" / "tokenizer" / "tokenizer.json").read_bytes() == (
        TINY / "tokenizer" / "tokenizer.json"
    ).read_bytes()


def test_prepare_as_arbitrary_uid_gid0_on_foreign_group_writable_volume(shared_tmp):
    need(run_as_other_uid)
    model = copy_world_readable(TINY, shared_tmp / "model")
    volume = shared_tmp / "pvc"
    volume.mkdir()
    os.chown(volume, 4242, 0)  # owned by another UID, group 0, like an fsGroup'd PVC
    os.chmod(volume, 0o2775)
    res = run_cli(
        ["prepare", str(model), "--workspace", str(volume / "ws")],
        as_uid=OPENSHIFT_UID,
        env={"HOME": str(volume)},
    )
    assert res.returncode == 0, res.stderr
    ctx = Path(res.stdout.strip().splitlines()[-1])
    assert ctx.stat().st_uid == OPENSHIFT_UID
    assert_context_modes(ctx)


def test_unwritable_workspace_is_one_clear_line(shared_tmp):
    need(run_as_other_uid)
    model = copy_world_readable(TINY, shared_tmp / "model")
    volume = shared_tmp / "pvc"
    volume.mkdir()
    os.chown(volume, 4242, 4242)
    os.chmod(volume, 0o755)
    res = run_cli(["prepare", str(model), "--workspace", str(volume / "ws")], as_uid=OPENSHIFT_UID)
    assert res.returncode == WorkspaceError.exit_code
    assert "Traceback" not in res.stderr
    assert f"not writable by uid {OPENSHIFT_UID}" in res.stderr
    assert "is owned by 4242:4242" in res.stderr
    assert "hint:" in res.stderr


def test_prepare_on_noexec_mount(tmp_path):
    need(noexec_tmpfs_mount)
    mnt = tmp_path / "noexec"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=64m", "tmpfs", str(mnt)], check=True)
    try:
        model = copy_world_readable(TINY, tmp_path / "model")
        res = run_cli(["prepare", str(model), "--workspace", str(mnt / "ws")])
        assert res.returncode == 0, res.stderr
        ctx = Path(res.stdout.strip().splitlines()[-1])
        assert (ctx / "Containerfile").is_file()
        # Everything the tool wrote is data; nothing in the workspace is executable.
        for p in (mnt / "ws").rglob("*"):
            if p.is_file():
                assert not p.stat().st_mode & 0o111, p
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_unreadable_source_is_one_clear_line(shared_tmp):
    need(run_as_other_uid)
    model = copy_world_readable(TINY, shared_tmp / "model")
    os.chmod(model, 0o700)
    res = run_cli(["plan", str(model)], as_uid=OPENSHIFT_UID)
    assert res.returncode == 10
    assert "Traceback" not in res.stderr
    assert "permission denied" in res.stderr


def test_two_runs_cannot_share_a_workspace(tmp_path):
    from modelcar_builder.workspace import Workspace

    ws = tmp_path / "ws"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; "
         "from modelcar_builder.workspace import Workspace; "
         f"w = Workspace(Path({str(ws)!r})).ensure(); w.lock(); print('locked', flush=True); "
         "time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            WorkspaceError, match=f"in use by another modelcar run \\(pid {holder.pid}\\)"
        ):
            Workspace(ws).ensure().lock()
    finally:
        holder.kill()
        holder.wait()
    release = Workspace(ws).ensure().lock()  # a killed holder leaves no stale lock behind
    release()
    Workspace(ws).ensure().lock()()  # and a released lock can be taken again


def _shard_repo(hub, name: str) -> dict[str, bytes]:
    files = {
        "config.json": b"{}",
        "model.safetensors": os.urandom(3 << 20),
        "pkg/__init__.py": b"",
    }
    hub.add_repo(name, files)
    return files


@pytest.mark.parametrize("first,second", [("root", "other"), ("other", "root")])
def test_any_uid_of_group_0_resumes_anothers_half_download(hub, shared_tmp, first, second):
    """OpenShift runs each step as an arbitrary UID in GID 0: a run cut halfway by one
    identity is resumed (Range, not from byte 0) and finished by another, on a setgid
    volume whose bit the tool keeps, under umask 022."""
    need(run_as_other_uid)
    uid = {"root": None, "other": OPENSHIFT_UID}
    files = _shard_repo(hub, "acme/shared")
    ws = shared_tmp / "ws"
    ws.mkdir()
    os.chmod(ws, 0o2775)  # group 0, setgid: what fsGroup volumes look like
    env = {"HF_ENDPOINT": hub.endpoint, "MODELCAR_ATTEMPTS": "1"}
    hub.cut("acme/shared", "model.safetensors", after_bytes=(3 << 20) // 2)
    old = os.umask(0o022)
    try:
        cut = run_cli(["fetch", "acme/shared", "--workspace", str(ws)], as_uid=uid[first], env=env)
        assert cut.returncode == 20, cut.stderr
        parts = list((ws / "partial").rglob("*.part"))
        assert parts and parts[0].stat().st_size > 0
        hub.reset_counters()
        done = run_cli(["fetch", "acme/shared", "--workspace", str(ws)], as_uid=uid[second],
                       env=env)  # fmt: skip
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    served = hub.bytes_served[("acme/shared", "model.safetensors")]
    assert served < len(files["model.safetensors"])  # resumed, not started over
    got = Path(done.stdout.strip().splitlines()[-1])
    assert (got / "model.safetensors").read_bytes() == files["model.safetensors"]
    for d in [ws / "state", ws / "partial", ws / "files", *(ws / "files").iterdir()]:
        assert d.stat().st_mode & stat.S_ISGID, f"{d} lost the volume's setgid bit"
    assert stat.S_IMODE((ws / "state" / ".lock").stat().st_mode) & 0o020
