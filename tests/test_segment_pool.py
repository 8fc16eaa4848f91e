"""The one segment pool (source/pool.py) against the Hub imitation over real HTTP: any
sink gets the file's segments in order with the bytes at their offsets, the connections
go back to the budget, a segment that keeps failing stops the pool with the sink's own
error, and the disk path's one-connection read is a one-segment run of the same pool
(resumed in the run at the byte a cut reached, not from byte 0)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from modelcar_builder.errors import DownloadFailed
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.connections import ConnectionBudget
from modelcar_builder.source.fetch_options import FetchOptions
from modelcar_builder.source.http import RangeSource, Transient, hub_session
from modelcar_builder.source.hub import HubAccess
from modelcar_builder.source.pool import SegmentPool, Segments
from tests.support.clitools import run
from tests.support.waiting import wait_until

MIB = 1 << 20
SEG = 256 * 1024
REPO = "acme/pool"
BIG = "model.safetensors"


def big_bytes(size: int = 3 * MIB + 4321) -> bytes:
    block = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(4096))  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


class Kept:
    """A sink of the test's own: the bytes received in place in one buffer, the order
    segments were let in."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.admitted: list[int] = []
        self.lock = threading.Lock()

    def room(self) -> int:
        return 1 << 20

    def admit(self, i: int, start: int, end: int) -> bool:
        with self.lock:
            self.admitted.append(i)
        return True

    def memory(self, i: int) -> memoryview | None:
        return memoryview(self.data)[i * SEG : (i + 1) * SEG]  # received in place

    def write(self, i: int, block: memoryview, pos: int) -> None:
        raise AssertionError("a sink with memory is never written to")


def pool_for(hub, sink: Kept, opts: FetchOptions, budget: ConnectionBudget) -> SegmentPool:
    data = big_bytes()
    entry = FileEntry(BIG, len(data), sha256=hashlib.sha256(data).hexdigest())
    access = HubAccess(hub.endpoint)
    url = access.file_url(REPO, BIG, hub.head(REPO))
    source = RangeSource(hub_session(opts), url, access, entry, opts, threading.Event())

    def gave_up(exc: Transient) -> DownloadFailed:
        return DownloadFailed(f"the test's sink gave up: {exc}")

    return SegmentPool(source, entry, Segments.fresh(entry.size, SEG), sink, opts, budget,
                       gave_up)  # fmt: skip


@pytest.fixture
def pool_repo(hub):
    hub.add_repo(REPO, {BIG: big_bytes(), "config.json": b"{}"})
    return hub


def test_any_sink_gets_the_segments_in_order_and_the_connections_come_back(pool_repo):
    pool_repo.connection_rate = 4 * MIB  # a per-connection cap: the workers overlap
    opts = FetchOptions(connections=4, segment_size=SEG)
    budget = ConnectionBudget(opts.connections)
    budget.acquire()  # the file's own connection, as the disk path holds it
    sink = Kept(len(big_bytes()))
    pool = pool_for(pool_repo, sink, opts, budget)
    pool.start()

    def finished() -> bool:
        pool.grow()  # as the disk path's hashing pass and the stream's reader do
        return not pool.active

    wait_until(finished, "every segment fetched")
    assert pool.close() and pool.fault is None
    assert bytes(sink.data) == big_bytes()
    count = -(-len(big_bytes()) // SEG)
    assert sink.admitted == list(range(count))  # each segment once, lowest first
    assert pool_repo.peak_in_flight[(REPO, BIG)] >= 2
    budget.release()  # the file's own
    assert all(budget.try_acquire() for _ in range(opts.connections))  # all came back


def test_a_segment_that_keeps_failing_stops_the_pool_with_the_sinks_error(pool_repo):
    pool_repo.fail(REPO, BIG, status=503, times=None)
    opts = FetchOptions(connections=2, segment_size=SEG, attempts=2)
    budget = ConnectionBudget(opts.connections)
    budget.acquire()
    pool = pool_for(pool_repo, Kept(len(big_bytes())), opts, budget)
    pool.start()
    wait_until(lambda: pool.fault is not None, "the pool gave up")
    assert pool.close()  # every worker ended
    assert isinstance(pool.fault, DownloadFailed) and "the test's sink gave up" in str(pool.fault)
    assert pool.stop.is_set()


def test_a_one_connection_download_is_one_segment_resumed_at_the_byte_reached(
    pool_repo, capsys, tmp_path, monkeypatch
):
    size = len(big_bytes())
    monkeypatch.setenv("MODELCAR_CONNECTIONS", "1")
    pool_repo.cut(REPO, BIG, after_bytes=MIB + 7)
    ws = tmp_path / "ws"
    res = run(capsys, "fetch", REPO, "--workspace", str(ws))
    assert res.code == 0, res.err
    assert f"{BIG}: " in res.err and "resuming at byte" in res.err
    cdn = [
        r.headers.get("Range", "")
        for r in pool_repo.requests
        if r.method == "GET" and r.path.startswith("/repos/") and f"filename={BIG}" in r.path
    ]
    assert cdn[0] == "" and len(cdn) == 2  # the whole file asked for, then the rest
    assert cdn[1].startswith("bytes=") and int(cdn[1][6:].split("-")[0]) > 0
    assert pool_repo.bytes_served[(REPO, BIG)] < size + SEG  # resumed, not restarted
    files = ws / "files" / f"{REPO.replace('/', '--')}--{pool_repo.head(REPO)}"
    assert (files / BIG).read_bytes() == big_bytes()
    assert not list((ws / "partial").rglob("*.segments"))  # one segment keeps no record
