"""Hub -> workspace with the real huggingface_hub client against the Hub imitation:
commit pinning, selection, integrity, resume, retries, rerun, bad input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from modelcar_builder import errors
from modelcar_builder.pipeline import resolve
from modelcar_builder.selection import Selection
from modelcar_builder.source.download import FetchOptions, fetch
from modelcar_builder.workspace import Workspace
from tests.support.clitools import run
from tests.support.features import (
    mounted_overlay,
    need,
    overlay_refuses_upper_on_overlay,
    root,
    tmpfs_mount,
)
from tests.support.hubsim import EDGE_FILES, ROUTE_INFO
from tests.support.waiting import wait_until

MIB = 1 << 20
REPO = "acme/tiny"


def fetch_files(seed: int = 0) -> dict[str, bytes]:
    shard = lambda i: hashlib.sha256(b"%d-%d" % (seed, i)).digest() * (MIB // 16)  # noqa: E731
    return {
        "config.json": json.dumps({"model_type": "tiny", "seed": seed}).encode(),
        "a/config.json": b'{"sub": true}',
        "tokenizer.json": b'{"vocab": {}}' * 50,
        "model-00001-of-00002.safetensors": shard(1)[: 2 * MIB],
        "model-00002-of-00002.safetensors": shard(2)[: 2 * MIB + 123],
        "pytorch_model.bin": b"duplicate weights",
        ".gitattributes": b"*.safetensors filter=lfs\n",
        **EDGE_FILES,
    }


@pytest.fixture
def repo(hub):
    hub.add_repo(REPO, fetch_files())
    return hub


def fetched_dir(ws: Path, commit: str) -> Path:
    return ws / "files" / f"{REPO.replace('/', '--')}--{commit}"


def resolve_requests(hub) -> list:
    return [r for r in hub.requests if "/resolve/" in r.path or r.path.startswith("/cdn")]


def test_plan_pins_commit_and_reports_layers(repo, capsys):
    res = run(capsys, "plan", f"hf://{REPO}@main", "--json", "--layer-threshold", str(MIB))
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert doc["commit"] == repo.head(REPO)
    paths = [f["path"] for layer in doc["layers"] for f in layer["files"]]
    assert paths == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "a/config.json",
        "added_tokens.json",
        "config.json",
        "extra files/vocabulário ü.txt",
        "pkg/__init__.py",
        "tokenizer.json",
    ]
    assert [len(layer["files"]) for layer in doc["layers"]] == [1, 1, 6]
    shard = doc["layers"][0]["files"][0]
    assert shard["sha256"] == repo.file(REPO, shard["path"]).sha256
    assert doc["layers"][2]["files"][0]["blob_id"] == repo.file(REPO, "a/config.json").blob_id
    assert {s["path"] for s in doc["skipped"]} == {"pytorch_model.bin", ".gitattributes"}
    assert resolve_requests(repo) == []  # plan downloads nothing


def test_human_plan_says_what_was_skipped_and_why(repo, capsys):
    res = run(capsys, "plan", REPO)
    assert res.code == 0, res.err
    assert f"hf://{REPO}@{repo.head(REPO)} (asked: main)" in res.out
    assert "skipped pytorch_model.bin: duplicate weight format" in res.out
    assert "disk needed: native" in res.out


def test_branch_moving_mid_build_cannot_mix_revisions(repo, ws):
    resolved = resolve(f"hf://{REPO}@main", Selection())
    old_commit = resolved.plan.snapshot.commit
    repo.commit(
        REPO, {"config.json": b'{"moved": true}', "model-00001-of-00002.safetensors": b"x" * 99}
    )
    assert repo.head(REPO) != old_commit
    result = fetch(resolved.plan, Workspace(ws).ensure(), resolved.access, FetchOptions())
    assert result.files_dir == fetched_dir(ws, old_commit)
    for path, data in fetch_files().items():
        if path not in ("pytorch_model.bin", ".gitattributes"):
            assert (result.files_dir / path).read_bytes() == data, path


def test_fetch_by_tag_and_pr_revisions(repo, capsys, ws):
    sha = repo.commit(REPO, {"extra.json": b"{}"}, branch="refs/pr/1")
    repo.tag(REPO, "v1", "main")
    res = run(capsys, "plan", f"{REPO}@refs/pr/1", "--json")
    assert json.loads(res.out)["commit"] == sha
    res = run(capsys, "plan", f"{REPO}@v1", "--json")
    assert json.loads(res.out)["commit"] == repo.head(REPO, "v1")


def test_prepare_keeps_subdirectories_and_links_without_copying(repo, capsys, ws):
    res = run(capsys, "prepare", REPO, "--workspace", str(ws), "--layer-threshold", str(MIB))
    assert res.code == 0, res.err
    ctx = Path(res.last_line)
    layer0 = ctx / "layer-002"  # small files: the last layer
    assert (layer0 / "config.json").read_bytes() == fetch_files()["config.json"]
    assert (layer0 / "a" / "config.json").read_bytes() == b'{"sub": true}'
    shard = ctx / "layer-000" / "model-00001-of-00002.safetensors"
    fetched = fetched_dir(ws, repo.head(REPO)) / "model-00001-of-00002.safetensors"
    assert os.path.samefile(shard, fetched)  # a hard link: the bytes exist once
    text = (ctx / "Containerfile").read_text()
    assert "COPY --chown=0:0 layer-002/ /models/" in text
    assert f'org.opencontainers.image.revision="{repo.head(REPO)}"' in text
    instructions = [line.split()[0] for line in text.splitlines() if line and line[0] != "#"]
    assert instructions[:4] == ["FROM", "ENTRYPOINT", "CMD", "LABEL"]
    assert "ENTRYPOINT []" in text and "CMD []" in text
    assert not list(ctx.rglob("pytorch_model.bin"))


def test_corrupt_bytes_are_never_kept(repo, capsys, ws, monkeypatch):
    monkeypatch.setenv("MODELCAR_ATTEMPTS", "2")
    repo.corrupt(REPO, "model-00002-of-00002.safetensors")
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == errors.IntegrityError.exit_code
    assert "sha256 mismatch" in res.err and "Traceback" not in res.err
    files = fetched_dir(ws, repo.head(REPO))
    assert not (files / "model-00002-of-00002.safetensors").exists()
    assert not list((ws / "partial").rglob("*.part"))
    # Files that did verify are kept: the rerun fetches only the bad one.
    assert (files / "model-00001-of-00002.safetensors").exists()
    repo.clear_faults()
    repo.reset_counters()
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert set(repo.bytes_served) == {(REPO, "model-00002-of-00002.safetensors")}


def test_corrupt_small_file_caught_by_git_blob_id(repo, capsys, ws, monkeypatch):
    monkeypatch.setenv("MODELCAR_ATTEMPTS", "1")
    repo.corrupt(REPO, "a/config.json")
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == errors.IntegrityError.exit_code
    assert "git blob id mismatch" in res.err


def test_resume_after_cut_fetches_only_the_rest(repo, capsys, ws, monkeypatch):
    path = "model-00002-of-00002.safetensors"
    size = len(fetch_files()[path])
    monkeypatch.setenv("MODELCAR_ATTEMPTS", "1")
    repo.cut(REPO, path, after_bytes=size // 2 + 1000)
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == errors.DownloadFailed.exit_code
    assert "rerun" in res.err
    repo.reset_counters()
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert 0 < repo.bytes_served[(REPO, path)] < size
    assert any(r.headers.get("Range", "").startswith("bytes=") for r in repo.requests)
    assert (fetched_dir(ws, repo.head(REPO)) / path).read_bytes() == fetch_files()[path]


def test_transient_failures_are_retried_within_one_run(repo, capsys, ws, monkeypatch):
    monkeypatch.setenv("MODELCAR_READ_TIMEOUT", "1")
    repo.cut(REPO, "model-00001-of-00002.safetensors", after_bytes=4096, times=2)
    repo.fail(REPO, "tokenizer.json", status=503, times=2)
    repo.stall(REPO, "config.json", seconds=3, times=1)
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    files = fetched_dir(ws, repo.head(REPO))
    for path in ("model-00001-of-00002.safetensors", "tokenizer.json", "config.json"):
        assert (files / path).read_bytes() == fetch_files()[path]


def test_rerun_downloads_nothing_and_says_so(repo, capsys, ws):
    assert run(capsys, "fetch", REPO, "--workspace", str(ws)).code == 0
    repo.reset_counters()
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0
    assert "nothing to fetch" in res.err
    assert resolve_requests(repo) == []


def test_file_present_but_unrecorded_is_verified_not_redownloaded(repo, ws):
    resolved = resolve(REPO, Selection())
    workspace = Workspace(ws).ensure()
    fetch(resolved.plan, workspace, resolved.access, FetchOptions())
    state_file = next((ws / "state").glob("*.json"))
    state_file.unlink()  # as if we crashed between rename and state save
    repo.reset_counters()
    result = fetch(resolved.plan, workspace, resolved.access, FetchOptions())
    assert result.downloaded_bytes == 0 and resolve_requests(repo) == []
    # ...and remembered, so the next run does not hash them again.
    verified = json.loads(state_file.read_text())["verified"]
    assert set(verified) == {f.path for f in resolved.plan.snapshot.files}


def test_progress_lines_when_not_a_tty(repo, capsys, ws, monkeypatch):
    monkeypatch.setenv("MODELCAR_PROGRESS_INTERVAL", "0")
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0
    lines = [line for line in res.err.splitlines() if line.startswith("fetch: ")]
    assert lines and "MiB/s" in lines[-1] and "\r" not in res.err


@pytest.mark.parametrize(
    ("source", "code", "words"),
    [
        ("acme/missing", errors.SourceNotFound.exit_code, "not found"),
        (f"{REPO}@nope", errors.RevisionNotFound.exit_code, "revision 'nope' not found"),
        ("hf://bad id", errors.UsageError.exit_code, "malformed Hub repo id"),
    ],
)
def test_bad_sources_give_one_line_and_exit_code(repo, capsys, source, code, words):
    res = run(capsys, "plan", source)
    assert res.code == code
    assert words in res.err and "hint:" in res.err and "Traceback" not in res.err


def test_gated_repo_needs_a_valid_token(hub, capsys, tmp_path, ws):
    hub.add_repo("acme/gated", fetch_files(), gated=True)
    hub.tokens.add("hf_valid_token_123")
    res = run(capsys, "plan", "acme/gated")
    assert res.code == errors.AccessDenied.exit_code and "gated" in res.err
    bad = tmp_path / "bad-token"
    bad.write_text("hf_wrong\n")
    res = run(capsys, "plan", "acme/gated", "--hf-token-file", str(bad))
    assert res.code == errors.AccessDenied.exit_code
    assert "hf_wrong" not in res.err and "--hf-token-file" in res.err
    good = tmp_path / "good-token"
    good.write_text("hf_valid_token_123\n")
    res = run(capsys, "fetch", "acme/gated", "--hf-token-file", str(good), "--workspace", str(ws))
    assert res.code == 0, res.err
    assert "hf_valid_token_123" not in res.err + res.out


def test_hf_token_env_is_honoured(hub, capsys, monkeypatch):
    hub.add_repo("acme/private", {"config.json": b"{}"}, private=True)
    hub.tokens.add("hf_env_token")
    assert run(capsys, "plan", "acme/private").code == errors.SourceNotFound.exit_code
    monkeypatch.setenv("HF_TOKEN", "hf_env_token")
    assert run(capsys, "plan", "acme/private").code == 0


def test_not_enough_space_is_caught_before_downloading(repo, capsys, tmp_path):
    need(tmpfs_mount)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        res = run(capsys, "fetch", REPO, "--workspace", str(small / "ws"))
        assert res.code == errors.InsufficientSpace.exit_code
        assert "needs" in res.err and "free" in res.err and "hint:" in res.err
        assert resolve_requests(repo) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_forced_overlay_that_cannot_mount_fails_before_downloading(
    repo, capsys, tmp_path, monkeypatch
):
    """The buildah engine's preflight probes a forced overlay driver before the fetch."""
    need(root, overlay_refuses_upper_on_overlay)
    monkeypatch.setenv("MODELCAR_BUILDAH_STORAGE_DRIVER", "overlay")
    with mounted_overlay(tmp_path / "fs") as merged:
        args = ["--image", f"oci:{tmp_path / 'out'}:v1", "--workspace", str(merged / "ws")]
        res = run(capsys, "build", REPO, "--engine", "buildah", "--base-image", "scratch", *args)
    assert res.code == errors.StorageDriverUnsupported.exit_code == 43, res.err
    assert "hint:" in res.err and "MODELCAR_BUILDAH_STORAGE_DRIVER=vfs" in res.err
    assert resolve_requests(repo) == []


def test_sigterm_mid_download_exits_130_and_the_rerun_resumes(repo, tmp_path):
    import signal
    import sys

    path = "model-00002-of-00002.safetensors"
    repo.stall(REPO, path, seconds=30, after_bytes=MIB)
    ws = tmp_path / "ws"
    env = {**os.environ, "HF_ENDPOINT": repo.endpoint, "MODELCAR_FETCH_JOBS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelcar_builder", "fetch", REPO, "--workspace", str(ws)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: repo.bytes_served.get((REPO, path), 0) >= MIB, f"1 MiB of {path} served")

    def on_disk() -> int:
        """Bytes the client has written to its .part (sparse: allocated blocks only); the
        Hub's count says sent, not received: a SIGTERM before the client read them
        would leave nothing to resume from on a loaded machine."""
        parts = [q for q in ws.rglob(f"{path}*") if q.is_file() and q.suffix != ".json"]
        return max((q.stat().st_blocks * 512 for q in parts), default=0)

    wait_until(lambda: on_disk() >= MIB, f"1 MiB of {path} written to the workspace")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    repo.clear_faults()
    repo.reset_counters()
    res = subprocess.run(
        [sys.executable, "-m", "modelcar_builder", "fetch", REPO, "--workspace", str(ws)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert repo.bytes_served[(REPO, path)] < len(fetch_files()[path])  # resumed, not restarted


def _true_layer_digests(files_dir: Path, plan) -> dict[str, str]:
    from modelcar_builder.oci.layer import LayerEntry, TarLayer

    out = {}
    for layer in plan.layers:
        if len(layer.files) == 1:
            (f,) = layer.files
            out[f.path] = TarLayer([LayerEntry(f.path, f.size, files_dir / f.path)]).digest()
    return out


def test_layer_digests_come_from_the_download_pass_even_after_a_resume(repo, ws, monkeypatch):
    """Large files are layers of their own: their layer digest is hashed while they
    download (and across a resume), so the native engine never re-reads them to hash."""
    resolved = resolve(REPO, Selection(), threshold=MIB)
    workspace = Workspace(ws).ensure()
    repo.cut(REPO, "model-00002-of-00002.safetensors", after_bytes=MIB + 7)
    with pytest.raises(errors.DownloadFailed):
        fetch(resolved.plan, workspace, resolved.access, FetchOptions(attempts=1))
    result = fetch(resolved.plan, workspace, resolved.access, FetchOptions())
    cached = json.loads(next((ws / "state").glob("*.json")).read_text())["layers"]
    truth = _true_layer_digests(result.files_dir, resolved.plan)
    assert len(truth) == 2 and sorted(v["digest"] for v in cached.values()) == sorted(
        truth.values()
    )


def test_native_build_after_fetch_does_not_hash_the_shards_again(repo, ws, tmp_path, monkeypatch):
    from modelcar_builder.oci.layer import TarLayer

    resolved = resolve(REPO, Selection(), threshold=MIB)
    fetch(resolved.plan, Workspace(ws).ensure(), resolved.access, FetchOptions())
    hashed: list[int] = []
    real_digest = TarLayer.digest

    def spy(self, open_entry=None):
        hashed.append(len(self.entries))
        return real_digest(self, open_entry)

    monkeypatch.setattr(TarLayer, "digest", spy)
    from modelcar_builder.buildopts import BuildOptions
    from modelcar_builder.run import run_build
    from modelcar_builder.settings import RegistryOptions
    from modelcar_builder.target import parse_target

    image = f"oci:{tmp_path / 'out'}:v1"
    options = BuildOptions(REPO, image, engine="native", base_image="scratch")
    target = parse_target(image)
    outcome = run_build(resolved, Workspace(ws), target, options, registry=RegistryOptions())
    assert hashed == [6]  # only the small-files layer was hashed by reading it
    truth = _true_layer_digests(ws / "files" / f"{REPO.replace('/', '--')}--{repo.head(REPO)}",
                                resolved.plan)  # fmt: skip
    assert {layer.digest for layer in outcome.result.layers} >= set(truth.values())


def test_a_corrupt_shard_is_fetched_twice_then_named(repo, capsys, ws, monkeypatch):
    """The same wrong bytes twice are not a network accident: with the default 5 attempts
    a persistently corrupt shard costs two downloads, not five, and progress stays <= 100 %."""
    path = "model-00002-of-00002.safetensors"
    monkeypatch.setenv("MODELCAR_PROGRESS_INTERVAL", "0")
    repo.corrupt(REPO, path)
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == errors.IntegrityError.exit_code
    assert res.err.splitlines()[-2].startswith(f"error: {path}: sha256 mismatch")
    size = len(fetch_files()[path])
    assert repo.bytes_served[(REPO, path)] == 2 * size
    assert f"{path}: " in res.err and "retrying in" in res.err and "attempt 2 of 5" in res.err
    assert "<unknown>" not in res.err
    percents = [int(m) for m in re.findall(r"\((\d+)%\)", res.err)]
    assert percents and max(percents) <= 100


def test_a_disk_that_fills_mid_download_is_exit_31_and_the_rerun_resumes(
    hub, capsys, tmp_path, monkeypatch
):
    """The space check passed, then something else filled the volume while a shard was
    downloading: one line naming the path (exit 31, not a traceback or 'rerun with
    --debug'), the partial file kept, and a rerun with room finishes from where it was."""
    need(tmpfs_mount)
    path = "model.safetensors"
    data = hashlib.sha256(b"enospc").digest() * (3 * MIB // 32)
    hub.add_repo("acme/full", {"config.json": b"{}", path: data})
    hub.stall("acme/full", path, seconds=60, after_bytes=MIB)  # until the filler is done
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(ws)], check=True)
    monkeypatch.setenv("MODELCAR_ATTEMPTS", "1")
    try:

        def fill() -> None:
            """Another writer takes the room once the shard's first MiB is on disk (an
            event, not a clock: a slow machine starts the download later), then the
            stalled shard goes on and meets the full volume."""

            def first_mib_written() -> bool:
                parts = list((ws / "partial").rglob("*.part"))
                return bool(parts) and parts[0].stat().st_size >= MIB

            wait_until(first_mib_written, "a .part file of 1 MiB", timeout=60, interval=0.02)
            with open(ws / "filler", "wb") as f, contextlib.suppress(OSError):
                f.write(b"\0" * (6 * MIB))
            hub.release_stalls()

        filler = threading.Thread(target=fill)
        filler.start()
        res = run(capsys, "fetch", "acme/full", "--workspace", str(ws))
        filler.join()
        assert res.code == errors.InsufficientSpace.exit_code, res.err
        lines = res.err.strip().splitlines()
        assert lines[-2].startswith("error: the volume holding ") and str(ws) in lines[-2]
        assert "model.safetensors needs" in lines[-2] and "more" in lines[-2]
        assert "Traceback" not in res.err
        parts = list((ws / "partial").rglob("*.part"))
        assert parts and parts[0].stat().st_size >= MIB  # kept for the resume
        (ws / "filler").unlink()
        hub.clear_faults()
        hub.reset_counters()
        again = run(capsys, "fetch", "acme/full", "--workspace", str(ws))
        assert again.code == 0, again.err
        assert hub.bytes_served[("acme/full", path)] < len(data)  # resumed, not restarted
    finally:
        subprocess.run(["umount", str(ws)], check=True)


def test_a_hub_that_never_answers_its_metadata_call_fails_within_the_read_timeout(repo, capsys, ws):
    """huggingface_hub's client waits forever by default: a Hub or proxy that takes the
    connection and never answers hung a build before its first byte. --read-timeout
    bounds the metadata call too; after three tries: one line, exit 20, nothing fetched."""
    repo.stall(REPO, ROUTE_INFO, seconds=60, times=None)  # silent before the headers
    res = run(capsys, "fetch", REPO, "--workspace", str(ws), "--read-timeout", "1")
    # Not the stall: a call that waited it out would get its answer and the fetch pass.
    assert res.code == errors.DownloadFailed.exit_code, res.err
    assert "cannot reach the Hub" in res.err and "ReadTimeout" in res.err, res.err
    assert res.err.count("retrying in") == 2 and "Traceback" not in res.err
    assert [r.path.split("?")[0] for r in repo.requests].count(f"/api/models/{REPO}") == 3
    assert not any(key[1].endswith(".safetensors") for key in repo.bytes_served)


@pytest.mark.parametrize("fault", ["stall", "503", "429"])
def test_one_lost_or_failed_metadata_answer_is_retried(repo, capsys, ws, fault):
    """A metadata answer lost once (a stalled connection), a 503 blip or a 429 does not
    end the build: the call is tried again, with one warning line, and the fetch
    completes. A 429 waits as its Retry-After says (2 s, not the 1 s first backoff)."""
    if fault == "stall":
        repo.stall(REPO, ROUTE_INFO, seconds=60, times=1)
    elif fault == "429":
        repo.fail(REPO, ROUTE_INFO, status=429, times=1, headers={"Retry-After": "2"})
    else:
        repo.fail(REPO, ROUTE_INFO, status=503, times=2)
    res = run(capsys, "fetch", REPO, "--workspace", str(ws), "--read-timeout", "1")
    assert res.code == 0, res.err
    expected = {"stall": "ReadTimeout", "503": "HTTP 503", "429": "HTTP 429"}[fault]
    assert f"failed ({expected}); retrying in" in res.err, res.err
    if fault == "429":
        assert "failed (HTTP 429); retrying in 2 s (try 2 of 3)" in res.err, res.err
    files = fetched_dir(ws, repo.head(REPO))
    assert (files / "config.json").read_bytes() == fetch_files()["config.json"]


def test_a_missing_repo_is_not_retried(hub, capsys, ws):
    """A 404 is an answer a retry cannot change: named at once, one request."""
    res = run(capsys, "fetch", "acme/nope", "--workspace", str(ws))
    assert res.code == errors.SourceNotFound.exit_code, res.err
    assert "retrying" not in res.err
    assert [r.path.split("?")[0] for r in hub.requests] == ["/api/models/acme/nope"]
