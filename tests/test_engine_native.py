"""The native engine end to end: Hub imitation -> real registry / OCI layout, checked by
skopeo and umoci. No daemon, no privilege."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from modelcar_builder import errors
from modelcar_builder.engines.native import NativeEngine
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.registry import RegistryClient
from tests.support.build_requests import request_for
from tests.support.clitools import run
from tests.support.features import need, private_read_only_root, run_as_other_uid
from tests.support.imagecheck import assert_modelcar_config, assert_models_match, unpack
from tests.support.models import MIB, REPO, build_args, make_model, model_files
from tests.support.waiting import wait_until

OPENSHIFT_UID = 1000680000


def test_hub_to_registry_round_trip(hub_repo, registry, base_image, capsys, tmp_path):
    image = f"{registry.host}/models/llm:v1"
    report = tmp_path / "report.json"
    results = tmp_path / "results"
    results.mkdir()
    res = run(
        capsys,
        *build_args(image, tmp_path / "ws", base_image.ref),
        "--report", str(report), "--results-dir", str(results),
    )  # fmt: skip
    assert res.code == 0, res.err
    doc = json.loads(report.read_text())
    digest = doc["manifest_digest"]
    assert res.last_line == f"oci://{registry.host}/models/llm@{digest}"
    assert (results / "IMAGE_DIGEST").read_text() == digest
    assert (results / "IMAGE_URL").read_text() == image
    assert (results / "IMAGE_REF").read_text() == res.last_line  # the storageUri
    commit = hub_repo.head(REPO)
    assert doc["commit"] == commit

    img = unpack(f"docker://{image}", tmp_path / "check")
    assert_models_match(img, model_files())
    labels = {
        "org.opencontainers.image.revision": commit,
        "org.opencontainers.image.source": f"https://huggingface.co/{REPO}",
    }
    assert_modelcar_config(img, labels)
    # skopeo copy may recompress on the way to a layout: read the pushed manifest raw.
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image}"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert hashlib.sha256(raw.encode()).hexdigest() == digest.split(":")[1]
    layers = json.loads(raw)["layers"]
    assert len(layers) == 1 + 3  # busybox base + small files + two shards
    assert layers[0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert {ly["mediaType"] for ly in layers[1:]} == {"application/vnd.oci.image.layer.v1.tar"}
    shard_layer = layers[1]["annotations"]
    assert shard_layer["org.cncf.model.filepath"] == "/models/model-00000-of-00002.safetensors"
    assert (
        shard_layer["io.modelcar.file.sha256"]
        == hub_repo.file(REPO, "model-00000-of-00002.safetensors").sha256
    )
    assert json.loads(raw)["annotations"]["org.opencontainers.image.revision"] == commit
    assert (img.rootfs / "bin" / "sh").exists()  # the base is really there


@pytest.mark.slow
@pytest.mark.parametrize("source", ["hub", "hub-stream", "local"])
def test_the_report_gives_every_files_sha256(source, hub_repo, capsys, tmp_path):
    """files[].sha256 was null for local files and git-stored Hub files: now every one is
    the sha256 of the file's bytes. A Hub file is hashed in the pass that checks its git
    blob id (download or stream), recorded in the workspace state for reruns."""
    files = model_files()
    ws, report = tmp_path / "ws", tmp_path / "report.json"
    args = build_args(f"oci:{tmp_path / 'out'}:v1", ws, "scratch", "--report", str(report))
    if source == "hub-stream":
        args.append("--stream")
    if source == "local":
        model = tmp_path / "model"
        for path, data in files.items():
            (model / path).parent.mkdir(parents=True, exist_ok=True)
            (model / path).write_bytes(data)
        args[1] = str(model)
    res = run(capsys, *args)
    assert res.code == 0, res.err
    listed = json.loads(report.read_text())["files"]
    assert {f["path"] for f in listed} == set(files)
    for f in listed:
        assert re.fullmatch(r"[0-9a-f]{64}", f["sha256"] or ""), f
        assert f["sha256"] == hashlib.sha256(files[f["path"]]).hexdigest(), f["path"]
    if source != "local":
        (state_file,) = (ws / "state").glob("*.json")
        recorded = json.loads(state_file.read_text())["sha256"]
        git_stored = [f for f in listed if f["blob_id"]]
        assert git_stored  # config.json and friends are not in LFS
        for f in git_stored:
            assert recorded[f["blob_id"]] == f["sha256"], f["path"]


def test_rebuild_same_digest_uploads_nothing(hub_repo, registry, base_image, capsys, tmp_path):
    image = f"{registry.host}/models/llm:v1"
    first = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref))
    assert first.code == 0, first.err
    mark = registry.mark()
    hub_repo.reset_counters()
    report = tmp_path / "r.json"
    again = run(
        capsys, *build_args(image, tmp_path / "ws", base_image.ref), "--report", str(report)
    )
    assert again.code == 0, again.err
    assert again.last_line == first.last_line
    assert registry.bytes_uploaded(since=mark) == 0
    assert registry.upload_requests(since=mark) == []
    doc = json.loads(report.read_text())
    assert doc["bytes_uploaded"] == 0 and doc["bytes_downloaded"] == 0
    assert not any(layer["uploaded"] for layer in doc["layers"])
    # A fresh workspace on another machine gives the same digest too, and counts no
    # layer as uploaded: the registry had every blob.
    mark = registry.mark()
    other = run(capsys, *build_args(image, tmp_path / "ws2", base_image.ref),
                "--report", str(report))  # fmt: skip
    assert other.last_line == first.last_line
    assert registry.upload_requests(since=mark) == []
    assert not any(layer["uploaded"] for layer in json.loads(report.read_text())["layers"])
    assert "(0 uploaded" in other.err


def test_to_oci_layout_with_layout_base(hub_repo, base_image, capsys, tmp_path):
    out = tmp_path / "out"
    res = run(capsys, *build_args(f"oci:{out}:tiny", tmp_path / "ws", base_image.oci_ref))
    assert res.code == 0, res.err
    assert res.last_line.startswith(f"oci:{out}@sha256:")
    img = unpack(f"oci:{out}:tiny", tmp_path / "check")
    assert_models_match(img, model_files())
    verify = run(capsys, "verify", f"oci:{out}:tiny")
    assert verify.code == 0 and verify.last_line == res.last_line


def test_gzip_layers(hub_repo, registry, base_image, capsys, tmp_path):
    image = f"{registry.host}/models/llm:gz"
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref), "--compression", "gzip")
    assert res.code == 0, res.err
    img = unpack(f"docker://{image}", tmp_path / "check")
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image}"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert {ly["mediaType"] for ly in json.loads(raw)["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    assert_models_match(img, model_files())


def test_zstd_refused_by_native(hub_repo, registry, capsys, tmp_path):
    res = run(capsys, *build_args(f"{registry.host}/m/x:1", tmp_path / "ws", "scratch"),
              "--compression", "zstd")  # fmt: skip
    assert res.code == errors.UsageError.exit_code and "zstd" in res.err


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def test_stream_needs_no_disk_for_the_model(hub, registry, base_image, capsys, tmp_path):
    files = model_files(n_shards=3, shard_size=40 * MIB)
    hub.add_repo(REPO, files)
    ws = tmp_path / "ws"
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], dir_size(ws) if ws.exists() else 0)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        image = f"{registry.host}/models/streamed:v1"
        res = run(capsys, *build_args(image, ws, base_image.ref), "--stream")
    finally:
        stop.set()
        sampler.join()
    assert res.code == 0, res.err
    assert peak[0] < 1 * MIB, f"workspace peaked at {peak[0]} bytes"
    assert not (ws / "files").exists() or not any((ws / "files").iterdir())
    img = unpack(f"docker://{image}", tmp_path / "check")
    assert_models_match(img, files)


def test_stream_never_pushes_a_corrupted_file(hub_repo, registry, base_image, capsys, tmp_path):
    hub_repo.corrupt(REPO, "model-00001-of-00002.safetensors")
    image = f"{registry.host}/models/llm:bad"
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref), "--stream")
    assert res.code == errors.IntegrityError.exit_code, res.err
    assert "sha256 mismatch" in res.err and "Traceback" not in res.err
    with RegistryClient(registry.host, tls_verify=False) as client:
        assert client.head_manifest("models/llm", "bad") is None
        bad = hashlib.sha256(model_files()["model-00001-of-00002.safetensors"]).hexdigest()
        assert bad  # the layer holding it was never committed: no manifest refers to it
    hub_repo.clear_faults()
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref), "--stream")
    assert res.code == 0, res.err


def test_unreachable_and_refused_registries(hub_repo, registry_htpasswd, capsys, tmp_path):
    res = run(capsys, *build_args("127.0.0.1:9/m/x:1", tmp_path / "ws", "scratch"))
    assert res.code == errors.RegistryUnreachable.exit_code, res.err
    token = tmp_path / "token"
    token.write_text("not-the-password")
    res = run(capsys, *build_args(f"{registry_htpasswd.host}/m/x:1", tmp_path / "ws", "scratch"),
              "--registry-token-file", str(token))  # fmt: skip
    assert res.code == errors.RegistryAuthError.exit_code, res.err
    assert str(token) in res.err and "not-the-password" not in res.err


def test_service_account_token_file_pushes(hub_repo, registry_htpasswd, capsys, tmp_path):
    token = tmp_path / "token"
    token.write_text(registry_htpasswd.password + "\n")
    image = f"{registry_htpasswd.host}/models/llm:sa"
    report = tmp_path / "report.json"
    res = run(capsys, *build_args(image, tmp_path / "ws", "scratch"),
              "--registry-token-file", str(token), "--report", str(report))  # fmt: skip
    assert res.code == 0, res.err
    assert registry_htpasswd.password not in res.out + res.err + report.read_text()


def test_bearer_token_registry(hub_repo, registry_token, capsys, tmp_path, monkeypatch):
    auth = tmp_path / "auth.json"
    registry_token.write_authfile(auth)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    res = run(
        capsys, *build_args(f"{registry_token.host}/models/llm:tok", tmp_path / "ws", "scratch")
    )
    assert res.code == 0, res.err


def test_registry_and_auth_lines_carry_the_modelcar_prefix(
    hub_repo, registry, capsys, tmp_path, monkeypatch
):
    """The registry client and the credential lookup log under the CLI's "modelcar"
    logger: their debug lines show with --debug, their warnings with the prefix."""
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"credHelpers": {registry.host: "modelcar-test-absent"}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    image = f"{registry.host}/models/llm:logged"
    res = run(capsys, "--debug", *build_args(image, tmp_path / "ws", "scratch"))
    assert res.code == 0, res.err
    assert "modelcar: GET /v2/ -> 200" in res.err  # a registry debug line
    assert "modelcar: credential helper docker-credential-modelcar-test-absent is not " in res.err


def test_tls_registry_with_ca_file(hub_repo, registry_tls, capsys, tmp_path):
    image = f"{registry_tls.host}/models/llm:tls"
    args = build_args(image, tmp_path / "ws", "scratch")
    args.remove("--no-tls-verify")
    res = run(capsys, *args)
    assert res.code == errors.RegistryUnreachable.exit_code, res.err
    res = run(capsys, *args, "--ca-file", str(registry_tls.ca_file))
    assert res.code == 0, res.err


def test_unprivileged_on_read_only_root(hub_repo, registry, tmp_path):
    """Arbitrary UID, GID 0, no capabilities, root fs read-only, only the workspace
    writable: the restricted-SCC pod the native engine exists for."""
    need(private_read_only_root, run_as_other_uid)
    top = Path(tempfile.mkdtemp(prefix="modelcar-unpriv-"))  # pytest's tmp is 0700 root
    os.chmod(top, 0o755)
    ws = top / "ws"
    ws.mkdir()
    os.chown(ws, 0, 0)
    os.chmod(ws, 0o775)
    image = f"{registry.host}/models/llm:unpriv"
    inner = " ".join([
        "mount --make-rprivate / &&",
        f"mount --bind {ws} {ws} &&",
        "mount -o remount,bind,ro / &&",
        f"exec setpriv --reuid={OPENSHIFT_UID} --regid=0 --clear-groups --inh-caps=-all",
        "--bounding-set=-all --",
        sys.executable, "-m", "modelcar_builder", *build_args(image, ws, "scratch"),
    ])  # fmt: skip
    env = {
        **os.environ,
        "HOME": str(ws),
        "PYTHONPATH": str(Path(__file__).parent.parent),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HF_ENDPOINT": hub_repo.endpoint,
    }
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", inner], capture_output=True,
                          text=True, env=env)  # fmt: skip
    shutil.rmtree(top, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(f"oci://{image.rsplit(':', 1)[0]}@")


def test_interrupted_push_resends_only_unfinished_layers(
    hub, registry, cutting_proxy, capsys, tmp_path
):
    files = model_files(n_shards=3, shard_size=4 * MIB)
    hub.add_repo(REPO, files)
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    image = f"{proxy.host}/models/llm:cut"
    args = [*build_args(image, tmp_path / "ws", "scratch"), "--jobs", "1"]
    proxy.cut_after(9 * MIB)  # mid-way through the third shard
    mark = registry.mark()
    res = run(capsys, *args)
    assert res.code == errors.RegistryUnreachable.exit_code, res.err
    first = {b.digest for b in registry.committed_blobs(since=mark)}
    assert len(first) >= 2  # the first two shards made it

    proxy.restore()
    mark = registry.mark()
    res = run(capsys, *args)
    assert res.code == 0, res.err
    second = {b.digest for b in registry.committed_blobs(since=mark)}
    assert second and not (first & second)  # nothing finished was sent again
    img = unpack(f"docker://{registry.host}/models/llm:cut", tmp_path / "check")
    assert_models_match(img, files)


CHUNKED = ("--upload", "chunked", "--chunk-size", "1")
UPLOADS = b"/v2/models/llm/blobs/uploads/"
# Where a push can be when the registry dies: (extra args, the request the kill lands in,
# how many such requests go by first, bytes of it the registry sees before the kill). The
# first upload POST is build's own push-permission check; the shard layer (2 MiB) goes first.
RESTART_PHASES = {
    "push-check-POST": ((), b"POST " + UPLOADS, 0, 0),
    "blob-HEAD": ((), b"HEAD /v2/models/llm/blobs/sha256:", 0, 0),
    "upload-POST": ((), b"POST " + UPLOADS, 1, 0),
    "mid-PUT-body": ((), b"PUT " + UPLOADS, 0, 512 * 1024),
    "mid-PATCH-body": (CHUNKED, b"PATCH " + UPLOADS, 0, 512 * 1024),
    "final-PUT": (CHUNKED, b"PUT " + UPLOADS, 0, 0),
    "manifest-PUT": ((), b"PUT /v2/models/llm/manifests/", 0, 0),
    "mid-stream-PATCH": (("--stream",), b"PATCH " + UPLOADS, 0, 512 * 1024),
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(RESTART_PHASES))
def test_a_registry_killed_and_restarted_at_any_phase_is_ridden_out(
    phase, hub, registry, cutting_proxy, capsys, tmp_path, monkeypatch
):
    """kill -9 of the registry as the push reaches each phase, restarted once the client
    has come back twice (events, not sleeps): the build succeeds on a fresh workspace
    inside the retry window (5 s in the tests), and the push progress never passes 100 %
    (a retried upload once counted its bytes again: 161 %)."""
    extra, prefix, skip, after = RESTART_PHASES[phase]
    files = model_files(n_shards=1, shard_size=2 * MIB)
    hub.add_repo(REPO, files)
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    proxy.on_request(prefix, registry.kill, after_bytes=after, skip=skip)
    proxy.on_refused(2, registry.restart)
    monkeypatch.setenv("MODELCAR_PROGRESS_INTERVAL", "0")  # a progress line per chunk
    image = f"{proxy.host}/models/llm:{phase.lower()}"
    args = [*build_args(image, tmp_path / "ws", "scratch"), "--jobs", "1", *extra]
    res = run(capsys, *args)
    assert res.code == 0, res.err
    assert proxy.fired is not None and proxy.fired.startswith(prefix), proxy.fired
    assert proxy.refused >= 2  # the client met the dead registry and came back
    assert "retrying for up to 5 s (it answered before)" in res.err
    shown = [int(p) for p in re.findall(r"^push: .*\((\d+)%\)", res.err, re.MULTILINE)]
    assert shown and max(shown) <= 100 and shown[-1] == 100, shown
    img = unpack(f"docker://{registry.host}/models/llm:{phase.lower()}", tmp_path / "check")
    assert_models_match(img, files)


@pytest.mark.slow
def test_upload_chunked_sends_the_base_layer_and_config_in_chunks_too(
    registry, base_image, cutting_proxy, tmp_path
):
    """`--upload chunked` is the 413 hint's own way past a proxy's body-size limit: it
    must hold for every blob we upload. The busybox base comes from another registry (so
    it is uploaded, not mounted) and its layer is over the proxy's limit: it used to go
    up in one PUT and get the 413 again. (Engine level: the CLI's --chunk-size is whole
    MiB, and busybox's layer is under 1 MiB.)"""
    chunk, limit = 256 * 1024, 512 * 1024
    _, base_manifest = OciLayout(base_image.oci_dir).read_manifest(base_image.tag)
    base_layer = base_manifest["layers"][0]
    assert base_layer["size"] > limit  # else this test proves nothing
    model = make_model(tmp_path / "model")
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    proxy.limit_body(limit)
    request = request_for(
        model, tmp_path / "ws", f"{proxy.host}/models/llm:chunked-base", base_image.ref,
        compression="none",
    )  # fmt: skip
    options = dataclasses.replace(request.options, upload="chunked")
    request = dataclasses.replace(request, options=options, chunk_bytes=chunk)
    mark = registry.mark()
    result = NativeEngine().build(request)
    assert proxy.too_large == []
    assert result.base_layers == 1
    committed = {b.digest for b in registry.committed_blobs(since=mark)}
    assert base_layer["digest"] in committed and result.config_digest in committed
    patches = registry.requests(since=mark, method="PATCH")
    assert len(patches) >= -(-base_layer["size"] // chunk)  # the base alone needs this many
    img = unpack(f"docker://{registry.host}/models/llm:chunked-base", tmp_path / "check")
    files = {p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*")
             if p.is_file()}  # fmt: skip
    assert_models_match(img, files)
    assert (img.rootfs / "bin" / "busybox").is_file()


def test_the_413_hints_own_command_passes_a_1_mib_proxy_limit(
    registry, base_image, cutting_proxy, capsys, tmp_path
):
    """The 413 hint's words, typed as a user would: `--upload chunked --chunk-size 1`
    behind a proxy that refuses bodies over 1 MiB (+ 4 KiB: a 1 MiB PATCH passes), with
    a busybox base whose one layer is over that limit. It used to go up in one PUT and
    get the 413 again."""
    limit = MIB + 4096
    _, base_manifest = OciLayout(base_image.oci_dir).read_manifest(base_image.tag)
    assert base_manifest["layers"][0]["size"] > limit  # else this test proves nothing
    model = make_model(tmp_path / "model")
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    proxy.limit_body(limit)
    res = run(capsys, "build", str(model), "--engine", "native", "--base-image",
              base_image.ref, "--image", f"{proxy.host}/models/llm:hint", "--workspace",
              str(tmp_path / "ws"), "--no-tls-verify", "--upload", "chunked",
              "--chunk-size", "1")  # fmt: skip
    assert res.code == 0, res.err
    assert proxy.too_large == []
    img = unpack(f"docker://{registry.host}/models/llm:hint", tmp_path / "check")
    assert (img.rootfs / "bin" / "busybox").is_file()


def test_chunked_upload_resumes_between_chunks(hub, registry, cutting_proxy, capsys, tmp_path):
    files = model_files(n_shards=1, shard_size=8 * MIB)
    hub.add_repo(REPO, files)
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    image = f"{proxy.host}/models/llm:chunked"
    report = tmp_path / "report.json"
    # The shard's first three 1 MiB chunks go through; drop as its fourth one starts.
    proxy.cut_before_request(b"PATCH ", skip=3, down_for=0.5)
    mark = registry.mark()
    args = [*build_args(image, tmp_path / "ws", "scratch"), "--jobs", "1"]
    res = run(capsys, *args, "--upload", "chunked", "--chunk-size", "1", "--report", str(report))
    assert res.code == 0, res.err
    doc = json.loads(report.read_text())
    layer_bytes = sum(layer["size"] for layer in doc["layers"])
    # Resumed at the registry's Range: only the chunk that was in flight (already handed to
    # the socket when the connection dropped) went twice; a restart would resend 3 MiB.
    assert layer_bytes < doc["bytes_uploaded"] <= layer_bytes + MIB + 4096  # + config blob
    resumes = registry.requests(since=mark, method="GET", path_contains="/blobs/uploads/")
    assert resumes, "the client asked the registry where the upload stood"
    img = unpack(f"docker://{registry.host}/models/llm:chunked", tmp_path / "check")
    assert_models_match(img, files)


def test_chunked_upload_cut_mid_chunk_starts_the_layer_over(
    hub, registry, cutting_proxy, capsys, tmp_path
):
    """distribution drops an upload whose last PATCH broke off mid-body (its state no
    longer matches the bytes it holds): the client must notice and start that layer over."""
    files = model_files(n_shards=1, shard_size=4 * MIB)
    hub.add_repo(REPO, files)
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    image = f"{proxy.host}/models/llm:restart"
    proxy.cut_after(2 * MIB + 1000, down_for=0.5)
    args = [*build_args(image, tmp_path / "ws", "scratch"), "--jobs", "1"]
    res = run(capsys, *args, "--upload", "chunked", "--chunk-size", "1")
    assert res.code == 0, res.err
    img = unpack(f"docker://{registry.host}/models/llm:restart", tmp_path / "check")
    assert_models_match(img, files)


def test_base_in_the_same_registry_is_mounted_not_copied(
    hub_repo, registry, base_image, capsys, tmp_path
):
    base_ref = base_image.copy_to(registry, "base/busybox", "latest")
    mark = registry.mark()
    image = f"{registry.host}/models/llm:mounted"
    res = run(capsys, *build_args(image, tmp_path / "ws", base_ref))
    assert res.code == 0, res.err
    assert len(registry.mounts(since=mark)) == 1  # the busybox layer (its config is not needed)
    with RegistryClient(registry.host, tls_verify=False) as client:
        base = json.loads(client.get_manifest("base/busybox", "latest").body)
    base_blobs = {ly["digest"] for ly in base["layers"]}
    uploaded = {b.digest for b in registry.committed_blobs(since=mark)}
    assert uploaded and not (base_blobs & uploaded)  # mounted, never uploaded again


def test_multi_arch_base_index_picks_the_platform(hub_repo, registry, base_image, capsys, tmp_path):
    base_ref = base_image.copy_to(registry, "base/multi", "single")
    with RegistryClient(registry.host, tls_verify=False) as client:
        manifest = client.get_manifest("base/multi", "single")
        entry = {"mediaType": manifest.media_type, "digest": manifest.digest,
                 "size": len(manifest.body)}  # fmt: skip
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {**entry, "platform": {"os": "linux", "architecture": "arm64"}},
                {**entry, "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }
        body = json.dumps(index).encode()
        client.put_manifest("base/multi", "index", body, index["mediaType"])
    index_ref = base_ref.replace(":single", ":index")
    res = run(capsys, *build_args(f"{registry.host}/models/llm:multi", tmp_path / "ws", index_ref))
    assert res.code == 0, res.err
    res = run(capsys, *build_args(f"{registry.host}/models/llm:s390x", tmp_path / "ws", index_ref),
              "--platform", "linux/s390x")  # fmt: skip
    assert res.code == errors.UsageError.exit_code
    assert "no linux/s390x variant" in res.err and "linux/amd64" in res.err


def test_verify_command_against_the_registry(hub_repo, registry, capsys, tmp_path):
    image = f"{registry.host}/models/llm:verify"
    built = run(capsys, *build_args(image, tmp_path / "ws", "scratch"))
    assert built.code == 0, built.err
    commit = hub_repo.head(REPO)
    label = f"org.opencontainers.image.revision={commit}"
    res = run(capsys, "verify", image, "--no-tls-verify", "--label", label)
    assert res.code == 0, res.err
    assert res.last_line == built.last_line
    res = run(
        capsys, "verify", image, "--no-tls-verify", "--label", "org.opencontainers.image.revision=0"
    )
    assert res.code == errors.VerificationFailed.exit_code
    assert "label org.opencontainers.image.revision" in res.err
    # A tag moved to an image that breaks the contract (an Entrypoint) is caught.
    with RegistryClient(registry.host, tls_verify=False) as client:
        manifest = json.loads(client.get_manifest("models/llm", "verify").body)
        config = json.loads(client.read_blob("models/llm", manifest["config"]["digest"]))
        config["config"]["Entrypoint"] = ["/bin/sh"]
        body = json.dumps(config).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        client.upload_blob("models/llm", digest, len(body), lambda: [body])
        manifest["config"] = {**manifest["config"], "digest": digest, "size": len(body)}
        client.put_manifest("models/llm", "verify", json.dumps(manifest).encode(),
                            manifest["mediaType"])  # fmt: skip
    res = run(capsys, "verify", image, "--no-tls-verify")
    assert res.code == errors.VerificationFailed.exit_code
    assert "Entrypoint" in res.err
    res = run(capsys, "verify", f"{registry.host}/models/none:x", "--no-tls-verify")
    assert res.code == errors.ImageNotFound.exit_code == 61 and "does not exist" in res.err


def test_tokens_that_expire_mid_push_are_renewed(
    hub, registry_token, capsys, tmp_path, monkeypatch
):
    """Tokens may live a minute; a model takes longer. Here they live 2 s (and the client
    believes they last 300 s) while the Hub stalls mid-shard until the registry refuses
    them: the requests after the stall must get a fresh token, not fail. The tokens
    fetched after that live a minute, so a loaded machine cannot expire one before its
    own request (which no client can help)."""
    files = model_files(n_shards=2, shard_size=2 * MIB)
    hub.add_repo(REPO, files)
    shard0 = "model-00000-of-00002.safetensors"
    hub.stall(REPO, shard0, seconds=120, after_bytes=MIB)  # released once the token is dead
    ts = registry_token.token_server
    ts.set_lifetime(2, expires_in=300)
    auth = tmp_path / "auth.json"
    registry_token.write_authfile(auth)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    issued_before = len(ts.issued)

    def expire_then_release() -> None:
        wait_until(lambda: hub.bytes_served.get((REPO, shard0), 0) >= MIB, "the stall", 120)
        short = ts.issued[-1]
        ts.set_lifetime(60, expires_in=300)
        registry_token.wait_expired(short, client_too=False)
        hub.release_stalls()

    releaser = threading.Thread(target=expire_then_release, daemon=True)
    releaser.start()
    image = f"{registry_token.host}/models/llm:renewed"
    args = [*build_args(image, tmp_path / "ws", "scratch"), "--stream", "--jobs", "1"]
    res = run(capsys, *args)
    releaser.join()
    assert res.code == 0, res.err
    assert len(registry_token.token_server.issued) - issued_before >= 2  # renewed at least once
    auth_env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth)}
    inspect = ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image}"]
    raw = subprocess.run(inspect, check=True, capture_output=True, text=True, env=auth_env).stdout
    assert len(json.loads(raw)["layers"]) == 3


def test_stream_rides_out_hub_faults_by_resuming_at_the_byte_reached(
    hub_repo, registry, base_image, capsys, tmp_path
):
    """A 500, a cut and a stall mid-file: --stream resumes each read with Range at the
    byte it reached, feeding the same upload and hash; the image is byte-exact."""
    first, second = "model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors"
    size = len(model_files()[second])
    hub_repo.fail(REPO, first, status=500, times=1)
    hub_repo.cut(REPO, second, after_bytes=size // 3, times=1)
    hub_repo.stall(REPO, second, seconds=3, times=1, after_bytes=size // 2)
    image = f"{registry.host}/models/llm:stream-faults"
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref), "--stream",
              "--read-timeout", "1")  # fmt: skip
    assert res.code == 0, res.err
    assert "resuming at byte" in res.err and "Traceback" not in res.err
    # Resumed, not restarted: the cut file was served well under twice.
    assert hub_repo.bytes_served[(REPO, second)] < 2 * size
    assert_models_match(unpack(f"docker://{image}", tmp_path / "check"), model_files())


def test_stream_gives_up_with_a_true_hint(hub_repo, registry, base_image, capsys, tmp_path):
    hub_repo.fail(REPO, "model-00000-of-00002.safetensors", status=503, times=None)
    image = f"{registry.host}/models/llm:stream-down"
    res = run(capsys, *build_args(image, tmp_path / "ws", base_image.ref), "--stream",
              "--attempts", "2")  # fmt: skip
    assert res.code == errors.DownloadFailed.exit_code, res.err
    assert "failed after 2 attempts" in res.err and "Traceback" not in res.err
    assert "partial ones resume" not in res.err and "--stream keeps nothing" in res.err


def test_a_layer_is_pushed_while_later_shards_still_download(hub, registry, capsys, tmp_path):
    """Overlap, proven from the servers' own records: while the Hub is still serving the
    last shard (stalled mid-body), the registry already holds a committed model layer."""
    files = model_files(n_shards=3, shard_size=2 * MIB)
    hub.add_repo(REPO, files)
    last = "model-00002-of-00003.safetensors"
    hub.stall(REPO, last, seconds=6, after_bytes=MIB)
    image = f"{registry.host}/models/llm:overlap"
    seen: list[int] = []
    stop = threading.Event()

    def committed() -> bool:  # the moment the registry commits a blob, how far is the Hub?
        if stop.is_set():
            return True
        if registry.committed_blobs():
            seen.append(hub.bytes_served.get((REPO, last), 0))
            return True
        return False

    def watch() -> None:
        wait_until(committed, "a committed blob or the build's end", timeout=600)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    res = run(capsys, *build_args(image, tmp_path / "ws", "scratch"), "--fetch-jobs", "3")
    stop.set()
    watcher.join()
    assert res.code == 0, res.err
    assert seen and seen[0] < len(files[last]), seen  # pushed before the last byte was served
    assert_models_match(unpack(f"docker://{image}", tmp_path / "check"), files)


def test_a_download_failure_while_pushing_stops_the_build_with_its_own_error(
    hub_repo, registry, capsys, tmp_path
):
    hub_repo.corrupt(REPO, "model-00001-of-00002.safetensors")
    image = f"{registry.host}/models/llm:overlap-bad"
    res = run(capsys, *build_args(image, tmp_path / "ws", "scratch"), "--attempts", "1")
    assert res.code == errors.IntegrityError.exit_code, res.err
    assert "sha256 mismatch" in res.err and "Traceback" not in res.err
    with RegistryClient(registry.host, tls_verify=False) as client:
        assert client.head_manifest("models/llm", "overlap-bad") is None  # no manifest
    hub_repo.clear_faults()
    again = run(capsys, *build_args(image, tmp_path / "ws", "scratch"))
    assert again.code == 0, again.err


def test_stream_sends_a_layer_again_when_the_registry_drops_it(
    hub, registry, cutting_proxy, capsys, tmp_path
):
    """--stream keeps nothing on disk, so a layer the registry dropped mid-upload is read
    from the Hub again and sent again, within the same run."""
    files = model_files(n_shards=2, shard_size=4 * MIB)
    hub.add_repo(REPO, files)
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    image = f"{proxy.host}/models/llm:stream-cut"
    proxy.cut_after(3 * MIB, down_for=1.0)  # mid-way through the first shard's layer
    res = run(capsys, *build_args(image, tmp_path / "ws", "scratch"), "--stream",
              "--jobs", "1")  # fmt: skip
    assert res.code == 0, res.err
    assert "the registry dropped the upload" in res.err and "sending the layer again" in res.err
    img = unpack(f"docker://{registry.host}/models/llm:stream-cut", tmp_path / "check")
    assert_models_match(img, files)


def test_a_registry_that_refuses_a_layer_fails_the_build_before_the_download_ends(
    hub, registry, cutting_proxy, capsys, tmp_path
):
    """Fail in seconds: a proxy in front of the registry refuses the first layer (413,
    nginx's body-size limit) while the last shard stalls. The build ends with the 413 and
    its hint; the Hub's own count shows the last shard was never fully served."""
    files = model_files(n_shards=2, shard_size=2 * MIB)
    hub.add_repo(REPO, files)
    last = "model-00001-of-00002.safetensors"  # layer 1: its pusher waits while layer 0 fails
    hub.stall(REPO, last, seconds=60, after_bytes=MIB)
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    proxy.refuse(b"PUT /v2/models/llm/blobs/uploads/", b"413 Request Entity Too Large")
    res = run(capsys, *build_args(f"{proxy.host}/models/llm:413", tmp_path / "ws", "scratch"),
              "--fetch-jobs", "3")  # fmt: skip
    assert res.code == errors.RegistryError.exit_code, res.err
    assert "too large (HTTP 413)" in res.err and "proxy-body-size" in res.err, res.err
    assert "Traceback" not in res.err and "stopped waiting" not in res.err
    assert hub.bytes_served[(REPO, last)] < len(files[last])  # the build did not wait for it
