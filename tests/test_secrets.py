"""No secret outlives the run on the volume, and none reaches a child that does not need
it: authfiles (podman's) sit in memory-backed storage, buildah gets none at all (it never
talks to a registry), a killed run's leftovers are swept by the next run, buildah
children get an allowlisted environment. The kill test SIGKILLs a real CLI build mid-push
(an OOMKill, a node drain) and then searches the workspace, /tmp and /dev/shm for the
registry password, its ``serviceaccount:<password>`` base64 form and the Hub token."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelcar_builder.engines import RegistryOptions
from modelcar_builder.engines.buildah import BuildahEngine, BuildahSettings
from modelcar_builder.engines.buildah.runner import buildah_env
from modelcar_builder.engines.secretdir import (
    PREFIX,
    choose_parent,
    memory_backed,
    mount_fstype,
    secret_dir,
    sweep_stale,
)
from modelcar_builder.workspace import Workspace
from tests.support.build_requests import request_for, token_file
from tests.support.models import make_model
from tests.support.procwatch import ProcPoller
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).parent.parent
HUB_REPO = "acme/secret-model"
MIB = 1 << 20


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "MODELCAR_BUILDAH_STORAGE_DRIVER"):
        monkeypatch.delenv(name, raising=False)


# -- where authfiles go ----------------------------------------------------------------------

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
tmpfs /run/user/1000 tmpfs rw 0 0
/dev/vdb /work/my\\040volume ext4 rw 0 0
"""


def test_mount_fstype_takes_the_longest_mount_point():
    assert mount_fstype(Path("/dev/shm/x"), MOUNTS) == "tmpfs"
    assert mount_fstype(Path("/dev/shmx"), MOUNTS) == "ext4"  # a prefix is not a parent
    assert mount_fstype(Path("/work/my volume/ws"), MOUNTS) == "ext4"
    assert memory_backed(Path("/run/user/1000"), MOUNTS)
    assert not memory_backed(Path("/tmp"), MOUNTS)


def test_authfiles_go_to_memory_never_the_workspace(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    (ws / "tmp").mkdir(parents=True)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(ws / "tmp"))  # TMPDIR on the workspace
    mounts = f"/dev/vda / ext4 rw 0 0\ntmpfs {runtime} tmpfs rw 0 0\n"
    assert choose_parent(ws, {"XDG_RUNTIME_DIR": str(runtime)}, mounts) == runtime
    # XDG_RUNTIME_DIR on a tmpfs inside the workspace: never there.
    inside = ws / "run"
    inside.mkdir()
    mounts_inside = f"/dev/vda / ext4 rw 0 0\ntmpfs {inside} tmpfs rw 0 0\n"
    chosen = choose_parent(ws, {"XDG_RUNTIME_DIR": str(inside)}, mounts_inside)
    assert ws not in chosen.parents and chosen != ws


def test_without_tmpfs_a_private_dir_outside_the_workspace(tmp_path, monkeypatch, caplog):
    ws = tmp_path / "ws"
    (ws / "tmp").mkdir(parents=True)
    monkeypatch.setattr("tempfile.tempdir", str(ws / "tmp"))
    caplog.set_level(logging.DEBUG, logger="modelcar")
    chosen = choose_parent(ws, {}, "/dev/vda / ext4 rw 0 0\n")  # nothing memory-backed
    assert chosen.is_dir() and ws not in chosen.parents  # not $TMPDIR: it is the workspace
    assert "no memory-backed filesystem" in caplog.text


HOLDER = """
import sys, time
from pathlib import Path
from modelcar_builder.engines.secretdir import secret_dir
with secret_dir(Path(sys.argv[1])) as d:
    (d / "auth.json").write_text("secret")
    print(d, flush=True)
    time.sleep(120)
"""


def test_a_killed_runs_secret_dir_is_swept_a_live_one_kept(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="modelcar")
    ws = tmp_path / "ws"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ws)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    try:
        killed = Path(holder.stdout.readline().strip())  # type: ignore[union-attr]
        assert killed.name.startswith(PREFIX) and ws not in killed.parents
        with secret_dir(ws) as live:
            sweep_stale()
            assert killed.exists() and live.exists()  # both runs alive: both kept
            holder.kill()  # SIGKILL: its finally never runs
            holder.wait()
            assert (killed / "auth.json").exists()
            assert killed in sweep_stale()
            assert not killed.exists() and live.exists()
        assert not live.exists()  # a run that ends removes its own
    finally:
        holder.kill()
        holder.wait()
    assert f"removed {killed}: registry credentials of a killed run" in caplog.text


def test_lock_sweeps_what_a_killed_run_left_in_tmp(tmp_path, caplog):
    ws = Workspace(tmp_path / "ws").ensure()
    auth = ws.tmp_dir / "modelcar-auth-abc"
    auth.mkdir(mode=0o700)
    (auth / "auth.json").write_text('{"auths": {}}')
    layout = ws.tmp_dir / "modelcar-layout-def"
    (layout / "blobs").mkdir(parents=True)
    (layout / "blobs" / "big").write_bytes(b"\0" * MIB)
    (ws.tmp_dir / "buildah123").write_text("x")
    kept = ws.root / "files" / "keep"
    kept.write_text("model")
    caplog.set_level(logging.INFO, logger="modelcar")
    release = ws.lock()
    try:
        assert list(ws.tmp_dir.iterdir()) == []
        assert kept.exists()
    finally:
        release()
    for name in ("modelcar-auth-abc", "modelcar-layout-def (1.0 MiB)", "buildah123"):
        assert f"removed {name}" in caplog.text


# -- buildah's environment -------------------------------------------------------------------


def test_buildah_env_is_an_allowlist(tmp_path):
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "https_proxy": "http://proxy:3128",
        "NO_PROXY": "localhost",
        "HF_TOKEN": "hf_secret",
        "MODELCAR_REGISTRY_TOKEN_FILE": "/var/run/token",
        "REGISTRY_AUTH_FILE": "/home/u/auth.json",
        "BUILDAH_ISOLATION": "oci",
        "STORAGE_OPTS": "overlay.mount_program=/x",
        "XDG_RUNTIME_DIR": "/run/user/1000",
        "AWS_SECRET_ACCESS_KEY": "nope",
    }
    state = tmp_path / "state"
    env = buildah_env(tmp_path / "tmp", state, BuildahSettings(), environ)
    assert {k: env[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "https_proxy", "NO_PROXY")} == {
        k: environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "https_proxy", "NO_PROXY")
    }
    assert env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["XDG_RUNTIME_DIR"] == str(state / "run")  # ours, not the caller's
    for name in ("HF_TOKEN", "MODELCAR_REGISTRY_TOKEN_FILE", "REGISTRY_AUTH_FILE",
                 "BUILDAH_ISOLATION", "STORAGE_OPTS", "AWS_SECRET_ACCESS_KEY"):  # fmt: skip
        assert name not in env
    shared = buildah_env(tmp_path / "tmp", state, BuildahSettings(private_state=False), environ)
    assert shared["XDG_RUNTIME_DIR"] == "/run/user/1000"
    assert "HF_TOKEN" not in shared and "REGISTRY_AUTH_FILE" not in shared


def descends_from(pid: int, ancestor: int) -> bool:
    """``ancestor`` is a parent, grandparent... of ``pid`` (other agents run buildah too)."""
    for _ in range(8):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "pid (comm) state"
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


class ChildWatcher(ProcPoller):
    """Polls /proc while a build runs: the environment and argv of every buildah process
    this test's build started."""

    interval = 0.002

    def __init__(self) -> None:
        super().__init__()
        self.environs: list[dict[str, str]] = []
        self.argvs: list[list[str]] = []
        self._seen: set[int] = set()

    def visit(self, proc: Path) -> None:
        pid = int(proc.name)
        if pid in self._seen:
            return
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not argv[0].endswith("buildah") or not descends_from(pid, os.getpid()):
                return
            raw = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            return
        if not raw:
            return  # caught between fork and exec, or already a zombie
        self._seen.add(pid)
        self.argvs.append(argv)
        self.environs.append(dict(v.split("=", 1) for v in raw.split("\0") if "=" in v))


def test_buildah_children_get_no_hf_token(tmp_path, registry_htpasswd, base_image, monkeypatch):
    reg = registry_htpasswd
    base = base_image.copy_to(reg)
    hf_token = "hf_" + secrets.token_hex(16)
    monkeypatch.setenv("HF_TOKEN", hf_token)
    monkeypatch.setenv("MODELCAR_HF_TOKEN_FILE", str(tmp_path / "hf-token"))
    auth = reg.write_authfile(tmp_path / "caller-auth.json")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))  # the caller's, never buildah's
    ws = tmp_path / "ws"
    options = RegistryOptions(tls_verify=False, token_file=token_file(tmp_path / "t", reg.password))
    request = request_for(make_model(tmp_path / "model"), ws, f"{reg.host}/m/t:v1", base, options)
    with ChildWatcher() as watcher:
        BuildahEngine().build(request)
    assert len(watcher.environs) >= 3, watcher.argvs  # from, copy, commit at least
    for env in watcher.environs:
        assert "HF_TOKEN" not in env and hf_token not in env.values()
        assert not [k for k in env if k.startswith("MODELCAR_")]
        assert "REGISTRY_AUTH_FILE" not in env
        assert env["TMPDIR"] == str(ws / "tmp")
    authfiles = [a.split("=", 1)[1] for argv in watcher.argvs for a in argv
                 if a.startswith("--authfile=")]  # fmt: skip
    assert authfiles == []  # buildah never talks to a registry: no authfile at all


# -- kill -9 mid-push ------------------------------------------------------------------------


class StallingProxy:
    """Loopback TCP proxy to a registry that, while ``stalling``, holds the first
    request carrying blob bytes (PATCH, or PUT on an upload) forever: a push that hangs."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.stalling = True
        self.stalled = threading.Event()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.upstream)
            except OSError:
                return
            self._socks += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                line = data.split(b"\r\n", 1)[0]
                upload = line.startswith(b"PATCH ") or (
                    line.startswith(b"PUT ") and b"/blobs/uploads/" in line
                )
                if requests and upload and self.stalling:
                    self.stalled.set()
                    self._closing.wait()  # never forwarded: the push hangs here
                    return
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def stalling_proxy(registry_htpasswd) -> Iterator[StallingProxy]:
    proxy = StallingProxy(registry_htpasswd.port)
    yield proxy
    proxy.close()


def secret_hits(roots: list[Path], forms: list[str], skip: Path) -> list[tuple[Path, str]]:
    """Every regular file under ``roots`` (one filesystem each, like ``find -xdev``: no
    other mounts, no /proc of another agent's container) holding one of ``forms``."""
    files = subprocess.run(
        ["find", *map(str, roots), "-xdev", "-type", "f", "-print0"],
        capture_output=True, check=False,
    ).stdout  # fmt: skip
    patterns = [x for f in forms for x in ("-e", f)]
    proc = subprocess.run(
        ["xargs", "-0", "-r", "grep", "-lsF", *patterns],
        input=files, capture_output=True, check=False,
    )  # fmt: skip
    hits = []
    for name in proc.stdout.decode(errors="replace").splitlines():
        path = Path(name)
        if skip in path.parents:
            continue
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            hits += [(path, form) for form in forms if form.encode() in data]
    return hits


def read_or_empty(path: Path) -> bytes:
    """A file another process may remove while we look (its authfile, swept)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def search_roots(*extra: Path) -> list[Path]:
    """/tmp, /dev/shm and ``extra`` (the workspace, the test's dir), none twice."""
    roots = [Path("/tmp"), Path("/dev/shm"), *extra]
    return [r for r in roots if not any(o in r.parents for o in roots)]


def wait_gone(pgid: int, timeout: float = 20) -> None:
    def gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, f"process group {pgid} still alive after SIGKILL", timeout)


@pytest.fixture
def unmounts(tmp_path: Path) -> Iterator[None]:
    """A killed buildah leaves containers/storage's overlay home mounted on itself (gone
    with a pod's mount namespace, not with a test's): unmount what is under tmp_path."""
    yield
    prefix = str(tmp_path.resolve()) + "/"
    with contextlib.suppress(OSError):
        points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for point in reversed([p for p in points if p.startswith(prefix)]):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@pytest.mark.usefixtures("unmounts")
def test_kill_9_mid_push_leaves_no_secret_and_the_rerun_sweeps(
    tmp_path, hub, registry_htpasswd, base_image, stalling_proxy
):
    reg, proxy = registry_htpasswd, stalling_proxy
    base_image.copy_to(reg)
    hf_token = "hf_" + secrets.token_hex(16)
    hub.tokens.add(hf_token)
    weights = secrets.token_bytes(3 * MIB)
    hub.add_repo(
        HUB_REPO,
        {"model.safetensors": weights, "config.json": '{"a": 1}', "tokenizer.json": "{}"},
        private=True,
    )
    inputs = tmp_path / "inputs"  # what the test itself hands the tool: not searched
    inputs.mkdir()
    ws = tmp_path / "ws"
    forms = [
        reg.password,
        base64.b64encode(f"serviceaccount:{reg.password}".encode()).decode(),
        hf_token,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELCAR_", "HF_"))}
    env.pop("REGISTRY_AUTH_FILE", None)
    env.pop("XDG_RUNTIME_DIR", None)
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "home" / "hf"),
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN=hf_token,
    )
    cmd = [
        sys.executable, "-m", "modelcar_builder", "build", f"hf://{HUB_REPO}@main",
        "--engine", "buildah", "--workspace", str(ws),
        "--image", f"{proxy.host}/models/tiny:v1",
        "--base-image", f"{proxy.host}/base/busybox:latest",
        "--registry-token-file", token_file(inputs / "token", reg.password),
        "--no-tls-verify", "--layer-threshold", str(MIB),
    ]  # fmt: skip
    log_path = tmp_path / "first.log"  # searched too: the tool's output holds no secret
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:

            def push_stalled() -> bool:
                assert proc.poll() is None, log_path.read_text()
                return proxy.stalled.wait(0.2)

            wait_until(push_stalled, "the push never started", timeout=240, interval=0)
            time.sleep(0.5)  # the push is hanging now, whatever else is in flight
            # only this run's credentials count: another test (or a parallel session)
            # may hold its own authfile in /dev/shm at this moment, by design
            in_memory = [
                p
                for p in sorted(Path("/dev/shm").glob(f"{PREFIX}*/*/auth.json"))
                if any(form.encode() in read_or_empty(p) for form in forms)
            ]
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: buildah children too
            proc.wait()
            wait_gone(proc.pid)

    left_in_ws = sorted(p.name for p in (ws / "tmp").iterdir())
    roots = search_roots(ws, tmp_path)
    hits = secret_hits(roots, forms, skip=inputs)
    assert not [h for h in hits if ws in h[0].parents], hits  # never on the volume
    assert hits == [] and in_memory == []  # no authfile was ever written, not even in memory
    assert any(n.startswith("modelcar-layout-") for n in left_in_ws), left_in_ws

    # The rerun sweeps what the killed run left, then finishes the build.
    proxy.stalling = False
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1].startswith(f"oci://{proxy.host}/models/tiny@")
    for name in left_in_ws:
        assert f"removed {name} " in rerun.stderr
    assert list((ws / "tmp").iterdir()) == []
    for stream in (rerun.stdout, rerun.stderr):
        assert not [f for f in forms if f in stream]
    assert secret_hits(roots, forms, skip=inputs) == []
