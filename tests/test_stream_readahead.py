"""``--stream`` read-ahead against the Hub imitation over real HTTP, into a real registry:
a large file goes as parallel Range segments (seen from the server's own counters),
in order, within a bounded window; a cut segment resumes at the byte it reached; a
corrupted byte in one segment fails the build before any manifest; a 429 is waited out
without spending a try, an expired CDN URL is resolved again once, and a server that
ignores Range gets the file over one connection."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from modelcar_builder import errors
from modelcar_builder.registry import RegistryClient
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.fetch_options import FetchOptions
from modelcar_builder.source.hub import HubAccess
from modelcar_builder.source.stream import HubStreams
from modelcar_builder.source.window import window_segments
from tests.support.clitools import run
from tests.support.imagecheck import assert_models_match, unpack
from tests.support.models import MIB, REPO, build_args, model_files

SEG = 256 * 1024  # MODELCAR_SEGMENT_SIZE: the stream's segments are this small here
BIG = "model-00000-of-00001.safetensors"


@pytest.fixture
def big_repo(hub, monkeypatch):
    hub.add_repo(REPO, model_files(n_shards=1, shard_size=3 * MIB))
    monkeypatch.setenv("MODELCAR_SEGMENT_SIZE", str(SEG))
    return hub


def build(capsys, tmp_path, image: str, *extra: str):
    return run(capsys, *build_args(image, tmp_path / "ws", "scratch"), "--stream",
               "--connections", "4", *extra)  # fmt: skip


def test_a_large_file_streams_over_several_connections_at_once(
    big_repo, registry, capsys, tmp_path
):
    big_repo.connection_rate = 4 * MIB  # a per-connection cap, as a CDN has: overlap shows
    image = f"{registry.host}/models/llm:readahead"
    res = build(capsys, tmp_path, image)
    assert res.code == 0, res.err
    assert big_repo.peak_in_flight[(REPO, BIG)] >= 2  # the server saw ranges at once
    size = len(model_files(n_shards=1, shard_size=3 * MIB)[BIG])
    assert big_repo.bytes_served[(REPO, BIG)] == size  # each byte once
    img = unpack(f"docker://{image}", tmp_path / "check")
    assert_models_match(img, model_files(n_shards=1, shard_size=3 * MIB))


def test_a_cut_segment_resumes_at_the_byte_it_reached(big_repo, registry, capsys, tmp_path):
    big_repo.cut(REPO, BIG, after_bytes=SEG // 2, times=2)
    image = f"{registry.host}/models/llm:readahead-cut"
    res = build(capsys, tmp_path, image)
    assert res.code == 0, res.err
    assert "resuming at byte" in res.err and "Traceback" not in res.err
    size = len(model_files(n_shards=1, shard_size=3 * MIB)[BIG])
    assert big_repo.bytes_served[(REPO, BIG)] < size + SEG  # resumed, not refetched
    img = unpack(f"docker://{image}", tmp_path / "check")
    assert_models_match(img, model_files(n_shards=1, shard_size=3 * MIB))


def test_a_corrupted_segment_never_reaches_a_manifest(big_repo, registry, capsys, tmp_path):
    big_repo.corrupt(REPO, BIG, offset=5 * SEG + 17)  # inside the sixth segment
    image = f"{registry.host}/models/llm:readahead-bad"
    res = build(capsys, tmp_path, image)
    assert res.code == errors.IntegrityError.exit_code, res.err
    assert "sha256 mismatch" in res.err and "Traceback" not in res.err
    with RegistryClient(registry.host, tls_verify=False) as client:
        assert client.head_manifest("models/llm", "readahead-bad") is None


def resolves(hub) -> list:
    """Requests for BIG's /resolve/ (the CDN URL is asked for there), as in test_segments."""
    return [r for r in hub.requests if "/resolve/" in r.path and r.path.endswith(BIG)]


def test_a_429_on_a_segment_is_waited_out_and_spends_no_attempt(big_repo, registry, capsys,
                                                                tmp_path):  # fmt: skip
    big_repo.fail(REPO, BIG, status=429, times=2, headers={"Retry-After": "1"})
    image = f"{registry.host}/models/llm:readahead-429"
    start = time.monotonic()
    res = build(capsys, tmp_path, image, "--attempts", "1")  # a spent attempt would fail
    assert res.code == 0, res.err
    assert time.monotonic() - start >= 1  # waited as it was asked
    assert f"{BIG}: the Hub is rate limiting (HTTP 429); waiting 1 s" in res.err
    assert "Traceback" not in res.err
    assert "resuming at byte" not in res.err  # no try spent on it
    cdn = [r for r in big_repo.requests if r.method == "GET" and f"filename={BIG}" in r.path]
    assert all(r.headers.get("Range") for r in cdn)  # segments throughout, no fallback
    img = unpack(f"docker://{image}", tmp_path / "check")
    assert_models_match(img, model_files(n_shards=1, shard_size=3 * MIB))


def test_an_expired_cdn_url_is_resolved_again_once_for_all_segments(big_repo, registry,
                                                                   capsys, tmp_path):  # fmt: skip
    big_repo.fail(REPO, BIG, status=403, times=1)  # the CDN refuses the signed URL once
    image = f"{registry.host}/models/llm:readahead-403"
    res = build(capsys, tmp_path, image, "--attempts", "1")
    assert res.code == 0, res.err
    assert [r.method for r in resolves(big_repo)] == ["HEAD", "HEAD"]  # once, then once more
    img = unpack(f"docker://{image}", tmp_path / "check")
    assert_models_match(img, model_files(n_shards=1, shard_size=3 * MIB))


def test_a_server_that_ignores_range_falls_back_to_one_connection(big_repo, registry, capsys,
                                                                  tmp_path):  # fmt: skip
    big_repo.ignore_ranges = True  # the CDN answers every Range request with 200, whole body
    image = f"{registry.host}/models/llm:readahead-norange"
    res = build(capsys, tmp_path, image)
    assert res.code == 0, res.err
    warnings = [line for line in res.err.splitlines() if "over one connection" in line]
    assert len(warnings) == 1 and BIG in warnings[0], res.err
    assert "ignored a Range request" in warnings[0] and "Traceback" not in res.err
    cdn = [r for r in big_repo.requests if r.method == "GET" and f"filename={BIG}" in r.path]
    assert "Range" not in cdn[-1].headers  # the last one: the whole file, one connection
    img = unpack(f"docker://{image}", tmp_path / "check")
    assert_models_match(img, model_files(n_shards=1, shard_size=3 * MIB))


def readahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("readahead-")]


def test_the_reader_never_holds_more_than_the_window(big_repo):
    """A slow reader (a slow registry): the workers fill the window and wait; the bytes
    held never pass window x segment, and arrive in order (the sha256 checks that)."""
    data = model_files(n_shards=1, shard_size=3 * MIB)[BIG]
    opts = FetchOptions(connections=3, segment_size=SEG)
    streams = HubStreams(HubAccess(big_repo.endpoint), REPO, big_repo.head(REPO), opts)
    entry = FileEntry(BIG, len(data), sha256=hashlib.sha256(data).hexdigest())
    bound = window_segments(opts) * SEG
    try:
        got = bytearray()
        with streams(entry, None) as stream:
            buf = bytearray(64 * 1024)
            while n := stream.readinto(buf):
                got += buf[:n]
                assert streams.window.held <= bound
                if len(got) < MIB:
                    time.sleep(0.01)  # slower than the Hub: the window fills up
        assert bytes(got) == data
        assert 2 * SEG <= streams.window.peak <= bound  # it read ahead, and no further
        assert streams.window.held == 0
        # Closed mid-file: the workers stop and are joined, the window is free again.
        big_repo.connection_rate = 1 * MIB
        stream = streams(entry, None)
        stream.readinto(bytearray(1024))
        # close() wakes the workers (closing what they read) and joins them: bounded
        # here so that a worker left waiting fails the test instead of hanging it.
        closer = threading.Thread(target=stream.close)
        closer.start()
        closer.join(timeout=60)
        assert not closer.is_alive(), "close() never returned: a worker was not woken"
        assert not readahead_threads() and streams.window.held == 0
    finally:
        streams.close()


def test_a_worker_finds_its_segment_already_read_and_freed(big_repo, monkeypatch):
    """The reader may read a segment to its end and free it the moment its worker hands
    over the last block, before that worker looks at the segment again: the worker must
    take that as done (a KeyError here once failed a --stream build under load). The
    worker is held for a moment after each body so that the reader always gets there
    first: the interleaving the race needs, every time."""
    from modelcar_builder.source import pool

    real = pool.read_body

    def then_pause(*args):  # type: ignore[no-untyped-def]
        reached = real(*args)
        time.sleep(0.05)  # the reader, right behind, reads the segment out and frees it
        return reached

    monkeypatch.setattr(pool, "read_body", then_pause)
    data = model_files(n_shards=1, shard_size=3 * MIB)[BIG]
    opts = FetchOptions(connections=4, segment_size=SEG)
    streams = HubStreams(HubAccess(big_repo.endpoint), REPO, big_repo.head(REPO), opts)
    entry = FileEntry(BIG, len(data), sha256=hashlib.sha256(data).hexdigest())
    try:
        with streams(entry, None) as stream:
            assert stream.read() == data
    finally:
        streams.close()
    assert not readahead_threads() and streams.window.held == 0
