"""Multi-connection downloads against the Hub imitation over real HTTP: a large file is
fetched as parallel Range segments from the CDN URL resolved once, resumed per segment
(within a run and after kill -9), checked by its sha256 and never kept when wrong."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelcar_builder import errors
from modelcar_builder.source.pool import Segments
from tests.support.clitools import run
from tests.support.waiting import wait_until

MIB = 1 << 20
SEG = 256 * 1024
REPO = "acme/big"
BIG = "model.safetensors"


def big_bytes(size: int = 4 * MIB + 12345) -> bytes:
    block = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(4096))  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def repo(hub, monkeypatch):
    hub.add_repo(REPO, {BIG: big_bytes(), "config.json": b'{"model_type": "big"}'})
    monkeypatch.setenv("MODELCAR_SEGMENT_SIZE", str(SEG))
    return hub


def files_dir(ws: Path, hub) -> Path:
    return ws / "files" / f"{REPO.replace('/', '--')}--{hub.head(REPO)}"


def cdn_ranges(hub, path: str = BIG) -> list[str]:
    return [
        r.headers.get("Range", "")
        for r in hub.requests
        if r.method == "GET" and r.path.startswith("/repos/") and f"filename={path}" in r.path
    ]


def resolves(hub, path: str = BIG) -> list:
    return [r for r in hub.requests if "/resolve/" in r.path and r.path.endswith(path)]


def test_one_file_goes_over_several_connections_at_once(repo, capsys, tmp_path, monkeypatch):
    """With a per-connection cap, several Range requests for the one file are served at
    the same time (the Hub imitation counts bodies in flight), all from the CDN URL that
    /resolve/ was asked for once."""
    repo.connection_rate = 4 * MIB
    monkeypatch.setenv("MODELCAR_CONNECTIONS", "8")
    ws = tmp_path / "ws"
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert (files_dir(ws, repo) / BIG).read_bytes() == big_bytes()
    ranges = cdn_ranges(repo)
    assert len(ranges) == -(-len(big_bytes()) // SEG)  # one request per segment, no retries
    assert all(r.startswith("bytes=") and r.count("-") == 1 and r[-1] != "-" for r in ranges)
    assert repo.peak_in_flight[(REPO, BIG)] >= 4
    assert len(resolves(repo)) == 1 and resolves(repo)[0].method == "HEAD"
    assert repo.bytes_served[(REPO, BIG)] == len(big_bytes())
    assert not list((ws / "partial").rglob("*.segments"))


def test_a_corrupted_segment_is_caught_by_the_sha256_and_never_kept(repo, capsys, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    monkeypatch.setenv("MODELCAR_ATTEMPTS", "5")
    repo.corrupt(REPO, BIG)  # one byte in the middle: one segment carries it
    ws = tmp_path / "ws"
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == errors.IntegrityError.exit_code
    assert "sha256 mismatch" in res.err and "Traceback" not in res.err
    assert repo.bytes_served[(REPO, BIG)] == 2 * len(big_bytes())  # two passes, then named
    assert not (files_dir(ws, repo) / BIG).exists()
    assert not [p for p in (ws / "partial").rglob("*") if p.is_file()]
    repo.clear_faults()
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert (files_dir(ws, repo) / BIG).read_bytes() == big_bytes()


def test_a_segment_cut_mid_body_resumes(repo, capsys, tmp_path, monkeypatch):
    size = len(big_bytes())
    repo.cut(REPO, BIG, after_bytes=SEG // 3)
    ws = tmp_path / "ws"
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert "retrying in" in res.err
    assert (files_dir(ws, repo) / BIG).read_bytes() == big_bytes()
    # Segments resumed where they stopped: far less than a second copy was sent.
    assert repo.bytes_served[(REPO, BIG)] < size + size // 2
    resumed = [r for r in cdn_ranges(repo) if int(r[6:].split("-")[0]) % SEG]
    assert resumed, cdn_ranges(repo)


def test_a_cut_segment_resumes_in_the_next_run(repo, capsys, tmp_path, monkeypatch):
    size = len(big_bytes())
    monkeypatch.setenv("MODELCAR_ATTEMPTS", "1")
    repo.connection_rate = 2 * MIB  # the cut lands while the other segments are mid-way
    repo.cut(REPO, BIG, after_bytes=SEG // 2)
    ws = tmp_path / "ws"
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == errors.DownloadFailed.exit_code
    record = next((ws / "partial").rglob("*.segments"))
    done = Segments.load(record, size).done()
    assert 0 < done < size
    repo.connection_rate = None
    repo.reset_counters()
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert repo.bytes_served[(REPO, BIG)] == size - done
    assert (files_dir(ws, repo) / BIG).read_bytes() == big_bytes()


def test_kill_9_mid_download_resumes_each_segment(repo, tmp_path):
    size = len(big_bytes())
    repo.connection_rate = 256 * 1024  # 4 connections: about 4 s for the whole file
    ws = tmp_path / "ws"
    env = {**os.environ, "HF_ENDPOINT": repo.endpoint, "MODELCAR_CONNECTIONS": "4",
           "MODELCAR_SEGMENT_SIZE": str(SEG)}  # fmt: skip
    cmd = [sys.executable, "-m", "modelcar_builder", "fetch", REPO, "--workspace", str(ws)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def segments_done() -> int:
        assert proc.poll() is None, "the download finished before it could be killed"
        done = 0
        for record in (ws / "partial").rglob("*.segments"):
            segs = Segments.load(record, size)
            done = segs.done() if segs else 0
        return done

    done = wait_until(segments_done, "a segment recorded as done")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert 0 < done < size, "the download finished before it could be killed"
    repo.connection_rate = None
    # the dead client's bodies are still being written off
    wait_until(lambda: not repo.in_flight[(REPO, BIG)], "the killed client's bodies ended")
    repo.reset_counters()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert repo.bytes_served[(REPO, BIG)] < size  # resumed, not restarted
    assert (files_dir(ws, repo) / BIG).read_bytes() == big_bytes()


def test_429_waits_as_asked_and_spends_no_attempt(repo, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELCAR_ATTEMPTS", "1")
    repo.fail(REPO, BIG, status=429, times=2, headers={"Retry-After": "1"})
    ws = tmp_path / "ws"
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert "rate limiting (HTTP 429); waiting 1 s" in res.err
    assert (files_dir(ws, repo) / BIG).read_bytes() == big_bytes()


def test_an_expired_cdn_url_is_resolved_again_not_per_segment(repo, capsys, tmp_path):
    repo.fail(REPO, BIG, status=403, times=1)  # the CDN refuses the signed URL once
    ws = tmp_path / "ws"
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert len(resolves(repo)) == 2
    assert (files_dir(ws, repo) / BIG).read_bytes() == big_bytes()


def test_small_files_keep_one_connection(repo, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELCAR_SEGMENT_SIZE", str(4 * MIB))  # the file is < 2 segments
    ws = tmp_path / "ws"
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert cdn_ranges(repo) == [""]
    assert [r.method for r in resolves(repo)] == ["GET"]


def test_segment_records_are_checked_before_use(tmp_path):
    record = tmp_path / "x.part.segments"
    Segments.fresh(10 * SEG + 5, SEG, prefix=3 * SEG + 7).save(record)
    segs = Segments.load(record, 10 * SEG + 5)
    assert segs is not None and segs.done() == segs.prefix() == 3 * SEG + 7
    assert len(segs.pending()) == 8
    assert Segments.load(record, 10 * SEG + 6) is None  # another size: not this file's
    record.write_text(json.dumps({"size": 2 * SEG, "segment": SEG, "reached": [0, 3 * SEG]}))
    assert Segments.load(record, 2 * SEG) is None  # a segment past its end


def test_rate_cap_of_the_hub_imitation(hub):
    import requests

    hub.add_repo(REPO, {BIG: big_bytes(MIB)})
    hub.connection_rate = 4 * MIB
    t0 = time.monotonic()
    with requests.get(hub.resolve_url(REPO, BIG), timeout=30) as resp:
        assert resp.content == big_bytes(MIB)
    assert time.monotonic() - t0 >= 0.2  # 1 MiB at 4 MiB/s (a small burst allowed)


def test_layer_digest_comes_from_the_segmented_pass(repo, tmp_path):
    from modelcar_builder.oci.layer import LayerEntry, TarLayer
    from modelcar_builder.pipeline import resolve
    from modelcar_builder.selection import Selection
    from modelcar_builder.source.download import FetchOptions, fetch
    from modelcar_builder.workspace import Workspace

    resolved = resolve(REPO, Selection(), threshold=MIB)
    ws = tmp_path / "ws"
    repo.cut(REPO, BIG, after_bytes=SEG + 7)  # and across a resumed attempt
    result = fetch(resolved.plan, Workspace(ws).ensure(), resolved.access,
                   FetchOptions(segment_size=SEG, connections=6))  # fmt: skip
    assert len(cdn_ranges(repo)) > 2
    cached = json.loads(next((ws / "state").glob("*.json")).read_text())["layers"]
    path = result.files_dir / BIG
    truth = TarLayer([LayerEntry(BIG, path.stat().st_size, path)]).digest()
    assert truth in [v["digest"] for v in cached.values()]


def test_layer_0_is_downloaded_first_with_most_connections(hub, tmp_path):
    """Plan order, proven from the Hub's own record: when the last byte of layer 0's file
    was out, the larger file of layer 1 (which "largest first" used to start with, and
    then had all but served) had been served less than half. Layer 0 held most of the
    connections meanwhile. (A third held on an idle machine; on a loaded one the second
    file's one early connection got ahead further: 0.38 was seen.)"""
    from modelcar_builder.pipeline import resolve
    from modelcar_builder.selection import Selection
    from modelcar_builder.source.download import FetchOptions, fetch
    from modelcar_builder.workspace import Workspace

    first, second = "a-00001.safetensors", "b-00002.safetensors"
    files = {first: big_bytes(3 * MIB), second: big_bytes(3 * MIB + SEG)}
    hub.add_repo(REPO, files)
    hub.connection_rate = 2 * MIB
    resolved = resolve(REPO, Selection(), threshold=MIB)
    assert [lay.files[0].path for lay in resolved.plan.layers] == [first, second]
    result = fetch(resolved.plan, Workspace(tmp_path / "ws").ensure(), resolved.access,
                   FetchOptions(segment_size=SEG, connections=6, jobs=2))  # fmt: skip
    assert sorted(result.fetched) == [first, second]
    then = hub.served_when_full[(REPO, first)]
    assert then.get((REPO, second), 0) < len(files[second]) / 2, then
    assert hub.peak_in_flight[(REPO, first)] >= 4


def test_a_free_connection_goes_to_the_earliest_file_waiting():
    import threading

    from modelcar_builder.source.connections import ConnectionBudget

    budget = ConnectionBudget(2)
    budget.acquire(0)
    budget.acquire(1)
    got: list[int] = []

    def wait_for(rank: int) -> threading.Thread:
        t = threading.Thread(target=lambda: (budget.acquire(rank), got.append(rank)))
        t.start()
        return t

    def waiting(ranks: list[int]) -> None:  # an event, not a clock: a loaded CI is slow
        wait_until(lambda: sorted(budget._waiting) == ranks, lambda: str(budget._waiting),
                   interval=0.01)  # fmt: skip

    late = wait_for(7)
    waiting([7])
    early = wait_for(3)
    waiting([3, 7])
    assert got == [] and not budget.try_acquire(5)  # none free
    budget.release()
    early.join(5)
    assert got == [3]  # rank 3 came later but is earlier in plan order
    assert not budget.try_acquire(9)  # rank 7 still waits: a later file may not grow
    budget.release()
    late.join(5)
    assert got == [3, 7]
    budget.release()
    assert budget.try_acquire(9)  # nobody waits: any file may take a free one
