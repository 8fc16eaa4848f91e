"""The buildah engine builds and pushes a layer while later shards still download, proven
from the servers' own records (the Hub imitation's byte counts, the registry's access
log), with real buildah; and a download that fails mid-build stops buildah with the
download's own error and exit code."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from modelcar_builder import errors
from modelcar_builder.registry import RegistryClient
from tests.support.clitools import Result, run
from tests.support.features import buildah_builds, need, root
from tests.support.imagecheck import assert_models_match, unpack
from tests.support.models import MIB, REPO, model_files
from tests.support.waiting import wait_until

SHARDS = 3
LAST = f"model-{SHARDS - 1:05d}-of-{SHARDS:05d}.safetensors"
STALL = 20.0  # seconds: the watcher ends it as soon as the registry commits a blob


@pytest.fixture(autouse=True)
def _buildah_can_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    need(root, buildah_builds)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no credentials of the machine's user
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "MODELCAR_BUILDAH_STORAGE_DRIVER",
                 "MODELCAR_BUILDAH_OVERLAP"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def build(capsys: pytest.CaptureFixture[str], image: str, ws: Path, *extra: str) -> Result:
    return run(capsys, "build", f"hf://{REPO}@main", "--engine", "buildah", "--image", image,
               "--workspace", str(ws), "--base-image", "scratch", "--layer-threshold",
               str(MIB), "--no-tls-verify", "--fetch-jobs", str(SHARDS), *extra)  # fmt: skip


def hub_bytes_at_first_commit(hub, registry):  # type: ignore[no-untyped-def]
    """Start a watcher: the moment the registry commits its first blob, how many bytes
    of the last shard had the Hub served? Then it ends the Hub's stall, so the test waits
    for that event, not for a clock. Returns the function that stops it and gives the
    number (an empty list when no blob was committed)."""
    seen: list[int] = []
    stop = threading.Event()

    def committed() -> bool:
        if stop.is_set():
            return True
        if registry.committed_blobs():
            seen.append(hub.bytes_served.get((REPO, LAST), 0))
            hub.release_stalls()
            return True
        return False

    def watch() -> None:
        wait_until(committed, "a committed blob or the build's end", timeout=600)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def done() -> list[int]:
        stop.set()
        watcher.join()
        return seen

    return done


def test_a_layer_is_committed_while_the_last_shard_still_downloads(hub, registry, capsys, tmp_path):
    """While the Hub still serves the last shard (stalled mid-body), the registry already
    holds a committed layer that buildah built."""
    files = model_files(n_shards=SHARDS, shard_size=2 * MIB)
    hub.add_repo(REPO, files)
    # Stalled mid-body until the registry commits a blob (passing takes one layer's
    # build), or for STALL seconds at most.
    hub.stall(REPO, LAST, seconds=STALL, after_bytes=MIB)
    image = f"{registry.host}/models/llm:buildah"
    done = hub_bytes_at_first_commit(hub, registry)
    res = build(capsys, image, tmp_path / "ws")
    seen = done()
    assert res.code == 0, res.err
    assert seen, "the registry never committed a blob"
    assert seen[0] < len(files[LAST]), seen  # pushed before the last byte was served
    assert_models_match(unpack(f"docker://{image}", tmp_path / "check"), files)


def buildah_containers(ws: Path) -> list[str]:
    (driver,) = [d for d in ("vfs", "overlay") if (ws / "storage" / d).is_dir()]
    proc = subprocess.run(
        ["buildah", "--root", str(ws / "storage" / driver), "--runroot",
         str(ws / "storage/run" / driver), "--storage-driver", driver, "containers", "--quiet"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout.split()


def test_a_download_failure_mid_build_stops_buildah_with_its_own_error(
    hub, registry, capsys, tmp_path
):
    """The last shard arrives corrupted after buildah has built and pushed the first
    layer: the build ends with the download's IntegrityError (exit 21, its own message),
    no manifest, no buildah container left; the rerun sends only what was missing."""
    files = model_files(n_shards=SHARDS, shard_size=2 * MIB)
    hub.add_repo(REPO, files)
    hub.stall(REPO, LAST, seconds=STALL, after_bytes=MIB)  # until a layer is pushed
    hub.corrupt(REPO, LAST)
    image = f"{registry.host}/models/llm:buildah-bad"
    ws = tmp_path / "ws"
    done = hub_bytes_at_first_commit(hub, registry)
    res = build(capsys, image, ws, "--attempts", "1")
    done()
    assert res.code == errors.IntegrityError.exit_code, res.err
    assert "sha256 mismatch" in res.err and LAST in res.err and "Traceback" not in res.err
    first = registry.committed_blobs()
    assert first, "no layer was pushed before the download failed: not mid-build"
    with RegistryClient(registry.host, tls_verify=False) as client:
        assert client.head_manifest("models/llm", "buildah-bad") is None  # no manifest
    assert buildah_containers(ws) == []
    hub.clear_faults()
    mark = len(registry.entries())
    again = build(capsys, image, ws)
    assert again.code == 0, again.err
    resent = {b.digest for b in registry.committed_blobs(mark)}
    assert not resent & {b.digest for b in first}, "a layer of the failed run was sent again"
    assert_models_match(unpack(f"docker://{image}", tmp_path / "check"), files)


def test_a_refused_upload_stops_buildah_before_the_download_ends(
    hub, registry, cutting_proxy, capsys, tmp_path
):
    """The upload thread's failure (a 413 from a proxy in front of the registry) wakes
    the builder waiting for the next layer's files: the build ends with the 413 while the
    last shard is still stalled, by the Hub's own count."""
    files = model_files(n_shards=SHARDS, shard_size=2 * MIB)
    hub.add_repo(REPO, files)
    second = f"model-00001-of-{SHARDS:05d}.safetensors"  # the builder waits for it
    hub.stall(REPO, second, seconds=60, after_bytes=MIB)
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    proxy.refuse(b"PUT /v2/models/llm/blobs/uploads/", b"413 Request Entity Too Large")
    res = build(capsys, f"{proxy.host}/models/llm:413", tmp_path / "ws")
    assert res.code == errors.RegistryError.exit_code, res.err
    assert "too large (HTTP 413)" in res.err and "Traceback" not in res.err, res.err
    assert hub.bytes_served[(REPO, second)] < len(files[second])
