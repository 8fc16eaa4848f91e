"""The workstation engines end to end with real parts: `--engine podman` (Debian's podman,
rootful; rootless where this machine allows it), `--engine docker` through the Docker
Engine API against a private dockerd AND against podman's Docker-compatible service, and
`--load` followed by `podman run` / `docker run` of the loaded image.

Each build goes Hub imitation -> CLI -> loopback registry (htpasswd, so credentials are
in play) and is checked with skopeo + umoci (tests/imagecheck.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker  # the test extra installs it: the docker engine is tested, never skipped
import pytest

from modelcar_builder import errors
from modelcar_builder.buildopts import is_local_name, local_name
from modelcar_builder.engines.catalog import ENGINES
from modelcar_builder.engines.workstation import context_tar
from modelcar_builder.run import load_store
from tests.support.clitools import run
from tests.support.dockerd import stop_pid, wait_socket
from tests.support.imagecheck import assert_modelcar_config, assert_models_match, unpack
from tests.support.models import REPO, model_files
from tests.support.models import engine_build_args as build_args
from tests.support.podman_store import PodmanStore, podman_env
from tests.support.procwatch import CmdlineWatcher


@pytest.fixture
def podman_service(tmp_path: Path, registry_htpasswd) -> Iterator[tuple[str, PodmanStore]]:
    """`podman system service --time=0 unix://SOCK`: podman's Docker-compatible API, with
    its own store; the test registry is listed as insecure (plain HTTP), as a workstation
    would in registries.conf. Yields DOCKER_HOST and the store."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are needed")
    root = tmp_path / "psvc"
    store = PodmanStore(root, podman_env(root, insecure=(registry_htpasswd.host,)))
    sock = root / "p.sock"
    log = root / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{sock}"],
            env=store.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_socket(sock, proc, log)
        yield f"unix://{sock}", store
    finally:
        stop_pid(proc.pid, proc)
        store("rmi", "-a", "-f", check=False)


def labels_for(hub) -> dict[str, str]:
    return {
        "org.opencontainers.image.revision": hub.head(REPO),
        "org.opencontainers.image.source": f"https://huggingface.co/{REPO}",
    }


def check_pushed(res, image: str, reg, tmp_path: Path, hub, owner_names=None) -> dict:
    """The CLI printed the oci:// URL; the image has base + 3 layers, the model files
    byte for byte with 0644/0755/0:0, the labels, no entrypoint."""
    assert res.code == 0, res.err
    repo = image.split("/", 1)[1].rsplit(":", 1)[0]
    assert res.last_line.startswith(f"oci://{reg.host}/{repo}@sha256:")
    authfile = reg.write_authfile(tmp_path / "check-auth.json")
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", "--authfile", str(authfile),
         f"docker://{image}"], check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert len(json.loads(raw)["layers"]) == 1 + 3  # busybox + two shards + small files
    os.environ["REGISTRY_AUTH_FILE"] = str(authfile)
    try:
        img = unpack(f"docker://{image}", tmp_path / "check")
    finally:
        del os.environ["REGISTRY_AUTH_FILE"]
    assert_models_match(img, model_files(), **({"owner_names": owner_names} if owner_names else {}))
    assert_modelcar_config(img, labels_for(hub))
    return json.loads(raw)


# -- small parts -------------------------------------------------------------------------------


def test_engines_listed():
    assert {"podman", "docker"} <= set(ENGINES)


@pytest.mark.parametrize(
    ("image", "local"),
    [
        ("try:v1", True), ("org/try:v1", True), ("localhost/try", True),
        ("127.0.0.1:5000/m/x:v1", False), ("quay.io/org/x:v1", False),
        ("localhost:5000/x", False), ("oci:./out:v1", False),
    ],
)  # fmt: skip
def test_local_names(image, local):
    assert is_local_name(image) is local
    if local:
        assert local_name(image).startswith("localhost/")
        assert ":" in local_name(image).rsplit("/", 1)[1]


def test_load_store_must_match_the_engine():
    assert load_store("auto", "docker") == "docker"
    assert load_store("auto", "podman") == "podman"
    with pytest.raises(errors.UsageError):
        load_store("docker", "podman")


def test_context_tar_is_a_tar_of_the_context(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "layer-0" / "sub").mkdir(parents=True)
    (ctx / "layer-0" / "sub" / "f").write_bytes(b"x" * 1000)
    (ctx / "Containerfile").write_text("FROM scratch\n")
    data = b"".join(context_tar(ctx))
    out = tmp_path / "c.tar"
    out.write_bytes(data)
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar}
        assert members["./layer-0/sub/f"].size == 1000
        assert tar.extractfile("./layer-0/sub/f").read() == b"x" * 1000
        assert all((m.uid, m.gid) == (0, 0) for m in members.values())


# -- podman ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_podman_engine_pushes_a_verified_modelcar(
    hub_repo, registry_htpasswd, base_image, podman_store, capsys, tmp_path
):
    reg = registry_htpasswd
    base = base_image.copy_to(reg)  # the base pull needs the credentials too
    image = f"{reg.host}/models/podman:v1"
    authfile = reg.write_authfile(tmp_path / "auth.json")
    ws = tmp_path / "ws"
    with CmdlineWatcher(reg.password) as watcher:
        res = run(capsys, *build_args("podman", image, ws, base, "--authfile", str(authfile)))
    assert watcher.seen == []  # the password never reached any argv
    raw = check_pushed(res, image, reg, tmp_path, hub_repo)
    assert reg.password not in res.err + res.out
    assert not list((ws / "tmp").glob("modelcar-auth-*"))  # the private authfile is gone
    # The image is in podman's store too, under the name pushed.
    assert podman_store("image", "exists", image, check=False).returncode == 0
    # A second build finds every layer cached and in the registry: same digest.
    mark = reg.mark()
    again = run(capsys, *build_args("podman", image, ws, base, "--authfile", str(authfile)))
    assert again.code == 0, again.err
    assert again.last_line == res.last_line
    assert reg.bytes_uploaded(since=mark) == 0
    assert raw["layers"][0]["digest"]


@pytest.mark.slow
def test_podman_load_only_then_podman_run(hub_repo, base_image, podman_store, capsys, tmp_path):
    res = run(capsys, *build_args("podman", "try-podman:v1", tmp_path / "ws", base_image.oci_ref,
                                  "--load"))  # fmt: skip
    assert res.code == 0, res.err
    assert res.last_line == "localhost/try-podman:v1"
    out = podman_store("run", "--rm", "--network", "none", "localhost/try-podman:v1",
                       "/bin/sh", "-c", "cat /models/config.json; ls -A /models")  # fmt: skip
    assert out.stdout.startswith(model_files()["config.json"].decode())
    assert "model-00000-of-00002.safetensors" in out.stdout


@pytest.mark.slow
def test_native_push_and_load_into_podman(
    hub_repo, registry, base_image, podman_store, capsys, tmp_path
):
    image = f"{registry.host}/models/native-load:v1"
    res = run(capsys, *build_args("native", image, tmp_path / "ws", base_image.ref,
                                  "--load=podman"))  # fmt: skip
    assert res.code == 0, res.err
    assert res.last_line.startswith(f"oci://{registry.host}/models/native-load@sha256:")
    out = podman_store("run", "--rm", "--network", "none", image,
                       "/bin/sh", "-c", "cat '/models/extra files/vocabulário ü.txt'")  # fmt: skip
    assert out.stdout == model_files()["extra files/vocabulário ü.txt"].decode()
    # The loaded image is the pushed one: same config digest.
    inspect = json.loads(podman_store("image", "inspect", image).stdout)[0]
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image}"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert "sha256:" + inspect["Id"] == json.loads(raw)["config"]["digest"]


def _rootless_user() -> tuple[int, int] | str:
    """A non-root account that can run rootless podman here, or why not."""
    if os.geteuid() != 0:
        return (os.geteuid(), os.getegid())
    import pwd

    users = [p for p in pwd.getpwall() if 1000 <= p.pw_uid < 60000]
    if not users:
        return "no unprivileged account on this machine"
    return (users[0].pw_uid, users[0].pw_gid)


@pytest.mark.slow
def test_podman_engine_rootless_where_allowed(hub_repo, registry, base_image, tmp_path, request):
    """Rootless podman (user namespace; no subuid range needed for a COPY-only build):
    probed first with a tiny build as that user; skipped with the probe's reason."""
    who = _rootless_user()
    if isinstance(who, str):
        pytest.skip(f"rootless podman: {who}")
    uid, gid = who
    top = Path(tempfile.mkdtemp(prefix="modelcar-rootless-"))  # pytest's tmp is 0700 root
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    top.chmod(0o755)
    home = top / "home"
    home.mkdir()
    (home / "ctx").mkdir()
    (home / "ctx" / "Containerfile").write_text("FROM scratch\nCOPY --chown=0:0 f /models/f\n")
    (home / "ctx" / "f").write_text("x")
    subprocess.run(["chown", "-R", f"{uid}:{gid}", str(home)], check=True)
    env = {
        "HOME": str(home),
        "PATH": os.environ["PATH"],
        "XDG_RUNTIME_DIR": str(home / "run"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_ENDPOINT": hub_repo.endpoint,
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }
    (home / "run").mkdir(mode=0o700)
    subprocess.run(["chown", f"{uid}:{gid}", str(home / "run")], check=True)
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    probe_argv = [*as_user, "podman", "build", "-q", "-t", "localhost/probe:1", str(home / "ctx")]
    probe = subprocess.run(probe_argv, env=env, capture_output=True, text=True)
    if probe.returncode == 0:  # the user must also be able to run this very code
        probe_argv = [*as_user, sys.executable, "-c", "import modelcar_builder, docker"]
        probe = subprocess.run(probe_argv, env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["?"])[-1]
        print(f"rootless podman is not possible here: {reason}")
        pytest.skip(f"rootless podman is not possible here: {reason}")
    image = f"{registry.host}/models/rootless:v1"
    proc = subprocess.run(
        [*as_user, sys.executable, "-m", "modelcar_builder",
         *build_args("podman", image, home / "ws", base_image.ref)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    img = unpack(f"docker://{image}", tmp_path / "check")
    assert_models_match(img, model_files())


# -- docker ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_docker_engine_against_dockerd(
    hub_repo, registry_htpasswd, base_image, dockerd, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", dockerd)
    _docker_round_trip(hub_repo, registry_htpasswd, base_image, capsys, tmp_path, "dockerd")


@pytest.mark.slow
def test_docker_engine_against_podman_service(
    hub_repo, registry_htpasswd, base_image, podman_service, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", podman_service[0])
    _docker_round_trip(hub_repo, registry_htpasswd, base_image, capsys, tmp_path, "podman")


def _docker_round_trip(hub, reg, base_image, capsys, tmp_path, daemon):
    base = base_image.copy_to(reg)
    image = f"{reg.host}/models/docker-{daemon}:v1"
    authfile = reg.write_authfile(tmp_path / "auth.json")
    ws = tmp_path / "ws"
    with CmdlineWatcher(reg.password) as watcher:
        res = run(capsys, *build_args("docker", image, ws, base, "--authfile", str(authfile)))
    assert watcher.seen == []
    assert reg.password not in res.err + res.out
    # dockerd's tar writer names uid 0 "root"; the ids are what count (and are 0:0).
    check_pushed(res, image, reg, tmp_path, hub, owner_names={("", ""), ("root", "root")})


@pytest.mark.slow
def test_docker_load_only_then_docker_run(hub_repo, base_image, dockerd, capsys, tmp_path,
                                          monkeypatch):  # fmt: skip
    monkeypatch.setenv("DOCKER_HOST", dockerd)
    res = run(capsys, *build_args("docker", "try-docker:v1", tmp_path / "ws", base_image.oci_ref,
                                  "--load"))  # fmt: skip
    assert res.code == 0, res.err
    assert res.last_line == "localhost/try-docker:v1"
    _docker_run_reads_config(dockerd, "localhost/try-docker:v1")


@pytest.mark.slow
def test_native_load_only_into_docker(hub_repo, base_image, dockerd, capsys, tmp_path,
                                      monkeypatch):  # fmt: skip
    monkeypatch.setenv("DOCKER_HOST", dockerd)
    res = run(capsys, *build_args("native", "try-native:v1", tmp_path / "ws", base_image.oci_ref,
                                  "--load=docker"))  # fmt: skip
    assert res.code == 0, res.err
    assert res.last_line == "localhost/try-native:v1"
    _docker_run_reads_config(dockerd, "localhost/try-native:v1")


def _docker_run_reads_config(host: str, image: str) -> None:
    client = docker.DockerClient(base_url=host)
    try:
        container = client.containers.run(
            image, ["/bin/sh", "-c", "cat /models/config.json"], network_mode="none", detach=True
        )
        try:
            assert container.wait(timeout=60)["StatusCode"] == 0
            out = container.logs(stdout=True, stderr=True)
        finally:
            container.remove(force=True)
    finally:
        client.close()
    assert out == model_files()["config.json"]


def test_docker_engine_without_a_daemon_fails_before_the_download(
    hub_repo, registry, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    image = f"{registry.host}/models/x:v1"
    res = run(capsys, *build_args("docker", image, tmp_path / "ws", "scratch"))
    assert res.code == errors.EngineUnavailable.exit_code, res.err
    assert "DOCKER_HOST" in res.err
    assert sum(hub_repo.bytes_served.values()) == 0  # no model byte was downloaded
