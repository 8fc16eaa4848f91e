"""A local imitation of the Hugging Face Hub, good enough for the real `huggingface_hub` client.

Two stdlib HTTP servers on 127.0.0.1: the Hub itself (API routes + `resolve`) and a "CDN" on
another port that serves LFS bytes. Like the real Hub, `resolve` answers LFS files with a 302 to
the CDN origin, so the client drops its Authorization header and downloads from a signed URL.

Routes, headers and error codes follow what `huggingface_hub` 2.4 parses (see
`file_download.get_hf_file_metadata`, `utils/_http.hf_raise_for_status`, `hf_api.model_info`,
`list_repo_tree`, `get_paths_info`, `list_repo_refs`). Faults (corrupt / cut / stall / fail) can
be switched on per file path or per route to exercise retry, resume and verification logic;
`ignore_ranges` makes the CDN answer Range requests with a 200 and the whole body.

Gating follows the real Hub: metadata of a gated repo (info, tree, paths-info, refs) is public,
only the file bytes (`resolve`) need a granted token. Private repos need a valid token everywhere
and are reported as missing otherwise.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import socket
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from tests.support.ports import stop_server

CHUNK = 1 << 20  # body writes of 1 MiB: big enough to be fast, small enough for fault offsets
CAPPED_CHUNK = 1 << 18  # under a rate cap: smaller writes keep the rate smooth
MIB = 1 << 20
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")
FIXED_DATE = "2024-01-01T00:00:00.000Z"  # deterministic timestamps for ModelInfo

# Route names usable as `fail()` / `stall()` / `cut()` targets instead of a file path.
ROUTE_INFO = "@info"  # GET /api/models/{repo}[/revision/{rev}]
ROUTE_TREE = "@tree"  # GET /api/models/{repo}/tree/{rev}[/{path}]
ROUTE_PATHS_INFO = "@paths-info"  # POST /api/models/{repo}/paths-info/{rev}
ROUTE_REFS = "@refs"  # GET /api/models/{repo}/refs
ROUTE_RESOLVE = "@resolve"  # HEAD|GET /{repo}/resolve/{rev}/{path} (also the LFS 302)
ROUTE_CDN = "@cdn"  # HEAD|GET on the CDN server

_API_ACTIONS = ("revision", "tree", "paths-info", "refs")
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


# --------------------------------------------------------------------------- content model

# Files every end-to-end test repo carries, because real repos do: empty files (an empty
# __init__.py or added_tokens.json is common) and names with spaces and non-ASCII letters.
EDGE_FILES: dict[str, bytes] = {
    "added_tokens.json": b"",
    "pkg/__init__.py": b"",
    "extra files/vocabulário ü.txt": "café ☕\n".encode(),
}


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob, which the Hub reports as `blobId`/`oid` and as ETag."""
    digest = hashlib.sha1(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


@dataclass(frozen=True)
class HubFile:
    """One file of a commit. `blob_id` is the git id of what git stores (the pointer for LFS)."""

    path: str
    data: bytes = field(repr=False)
    lfs: bool
    blob_id: str
    sha256: str
    pointer_size: int  # 0 for non-LFS files

    @property
    def size(self) -> int:
        return len(self.data)

    def lfs_json(self, sha_key: str) -> dict[str, object] | None:
        # model_info calls the digest "sha256", tree/paths-info call it "oid".
        if not self.lfs:
            return None
        return {sha_key: self.sha256, "size": self.size, "pointerSize": self.pointer_size}

    def sibling(self, blobs: bool) -> dict[str, object]:
        entry: dict[str, object] = {"rfilename": self.path}
        if blobs:
            entry.update(size=self.size, blobId=self.blob_id)
            if self.lfs:
                entry["lfs"] = self.lfs_json("sha256")
        return entry

    def tree_entry(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "type": "file",
            "oid": self.blob_id,
            "size": self.size,
            "path": self.path,
        }
        if self.lfs:
            entry["lfs"] = self.lfs_json("oid")
        return entry


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    files: Mapping[str, HubFile]  # never mutated once the commit exists

    def directories(self) -> set[str]:
        dirs: set[str] = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return dirs

    def dir_entry(self, path: str) -> dict[str, object]:
        # A stable stand-in for the git tree id: hash of everything below the directory.
        digest = hashlib.sha1(b"tree\0")
        for p in sorted(self.files):
            if p.startswith(path + "/"):
                digest.update(f"{p}\0{self.files[p].blob_id}\n".encode())
        return {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}

    def tree(self, path: str, recursive: bool) -> list[dict[str, object]] | None:
        """Entries below `path` ("" = root), or None if `path` is not a directory."""
        dirs = self.directories()
        if path and path not in dirs:
            return None
        prefix = f"{path}/" if path else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

        entries = [self.dir_entry(d) for d in sorted(dirs) if wanted(d)]
        entries += [self.files[p].tree_entry() for p in sorted(self.files) if wanted(p)]
        return sorted(entries, key=lambda e: str(e["path"]))

    def path_info(self, path: str) -> dict[str, object] | None:
        if path in self.files:
            return self.files[path].tree_entry()
        if path in self.directories():
            return self.dir_entry(path)
        return None


@dataclass
class HubRepo:
    """A model repo. `gated` is False, "auto" or "manual"; flip `gated`/`private` freely."""

    repo_id: str
    gated: bool | str = False
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # also holds "refs/pr/N"
    tags: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False)  # sha256 -> LFS bytes

    def resolve(self, revision: str) -> Commit | None:
        """Branch, tag, refs/heads|tags|pr/..., or a full commit sha -> commit."""
        for prefix, table in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if revision.startswith(prefix):
                revision = revision[len(prefix) :]
                sha = table.get(revision)
                return self.commits.get(sha) if sha else None
        sha = self.branches.get(revision) or self.tags.get(revision) or revision.lower()
        return self.commits.get(sha)


# --------------------------------------------------------------------------- faults


@dataclass
class _Fault:
    kind: str  # "corrupt" | "cut" | "stall" | "fail"
    remaining: int | None  # None: active until clear_faults()
    status: int = 503
    seconds: float = 0.0
    after_bytes: int | None = None  # cut: bytes sent before closing; stall: None = before headers
    offset: int | None = None  # corrupt: file offset of the flipped byte, None = middle
    headers: dict[str, str] = field(default_factory=dict)  # fail: extra headers (Retry-After)


@dataclass
class _Plan:
    """The faults that one response must suffer, picked (and used up) when it is built."""

    fail_status: int | None = None
    fail_headers: dict[str, str] = field(default_factory=dict)
    stall_seconds: float = 0.0
    stall_after: int | None = None
    cut_after: int | None = None
    corrupt_offset: int | None = None
    corrupt: bool = False

    def apply(self, fault: _Fault) -> None:
        if fault.kind == "fail":
            self.fail_status, self.fail_headers = fault.status, fault.headers
        elif fault.kind == "stall":
            self.stall_seconds, self.stall_after = fault.seconds, fault.after_bytes
        elif fault.kind == "cut":
            self.cut_after = fault.after_bytes
        else:
            self.corrupt, self.corrupt_offset = True, fault.offset


class RequestRecord(NamedTuple):
    method: str
    path: str  # raw request target, query string included; CDN paths start with /repos/
    headers: dict[str, str]  # keys in Canonical-Case, e.g. "Range", "Authorization"


# --------------------------------------------------------------------------- responses


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: memoryview = field(default_factory=lambda: memoryview(b""))
    plan: _Plan = field(default_factory=_Plan)
    counter: tuple[str, str] | None = None  # bytes_served key for file bytes
    body_offset: int = 0  # file offset of body[0], so corrupt offsets survive Range requests
    file_size: int = 0


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(
        status, {"Content-Type": "application/json", **(headers or {})}, memoryview(body)
    )


def _error(status: int, code: str | None, message: str, **headers: str) -> _Response:
    # The client reads X-Error-Code to pick the exception class and shows X-Error-Message or
    # the JSON "error" field (HEAD responses have no body, hence the header).
    extra = {"X-Error-Message": message, **headers}
    if code:
        extra["X-Error-Code"] = code
    return _json(status, {"error": message}, extra)


def _canonical(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else None


class _BadRange(Exception):
    pass


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=N-`, `bytes=N-M`, `bytes=-K` -> (start, end_exclusive); None = whole file."""
    if not header:
        return None
    match = _RANGE_RE.match(header)
    if not match:  # multi-range or garbage: ignoring Range is allowed (RFC 9110 §14.2)
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            raise _BadRange
        return max(size - int(last), 0), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise _BadRange
    return start, end


def _bytes_response(
    data: bytes, range_header: str | None, headers: dict[str, str], counter: tuple[str, str]
) -> _Response:
    """200 or 206 for file bytes, sliced without copying."""
    size = len(data)
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}
    try:
        span = _parse_range(range_header, size)
    except _BadRange:
        return _error(416, None, "Range Not Satisfiable", **{"Content-Range": f"bytes */{size}"})
    if span is None:
        return _Response(200, headers, memoryview(data), counter=counter, file_size=size)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    view = memoryview(data)[start:end]
    return _Response(206, headers, view, counter=counter, body_offset=start, file_size=size)


def _disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # default 5 refuses bursts of parallel downloads

    def __init__(self, sim: HubSim, role: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sim = sim
        self.role = role  # "hub" | "cdn"
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):  # type: ignore[no-untyped-def]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        # A client that gives up on a kept-alive connection (the tool closing a failed
        # stream) resets it: normal, and no traceback on the test's stderr.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        # Keep-alive connections would otherwise pin handler threads after the fixture ends.
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every reply has a length
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet test output

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        sim = self.server.sim
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {_canonical(k): v for k, v in self.headers.items()}
        sim._record(RequestRecord(method, self.path, headers))
        route = sim._route_hub if self.server.role == "hub" else sim._route_cdn
        try:
            self._send(route(method, self.path, headers, body), head_only=method == "HEAD")
        except OSError:
            self.close_connection = True  # the client gave up (timeout, cancelled download)

    def _send(self, resp: _Response, head_only: bool) -> None:
        plan = resp.plan
        if plan.stall_seconds and plan.stall_after is None:
            self.server.sim._stall(plan.stall_seconds)
        if plan.fail_status is not None:
            msg = f"Simulated failure ({plan.fail_status})"
            resp = _error(plan.fail_status, None, msg, **plan.fail_headers)
            plan = resp.plan
        self.send_response(resp.status)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if not head_only:
            self._send_body(resp)

    def _send_body(self, resp: _Response) -> None:
        sim = self.server.sim
        sim._flight(resp.counter, +1)
        try:
            self._send_body_capped(resp)
        finally:
            sim._flight(resp.counter, -1)

    def _send_body_capped(self, resp: _Response) -> None:
        body, plan, sim = resp.body, resp.plan, self.server.sim
        buckets = sim._buckets(self)
        piece = CHUNK if not buckets else CAPPED_CHUNK
        limit = len(body) if plan.cut_after is None else min(len(body), plan.cut_after)
        stall_at = plan.stall_after if plan.stall_seconds else None
        flip_at = None
        if plan.corrupt:
            flip_at = resp.file_size // 2 if plan.corrupt_offset is None else plan.corrupt_offset
            flip_at -= resp.body_offset
        sent = 0
        while sent < limit:
            if stall_at is not None and sent >= stall_at:
                sim._stall(plan.stall_seconds)
                stall_at = None
            end = min(limit, sent + piece)
            for bucket in buckets:
                bucket.take(end - sent, sim._sleep)
            if stall_at is not None and sent < stall_at < end:
                end = stall_at
            # Count first: once the bytes are out, a test may read the counter before this
            # thread runs again. A failed write takes its count back.
            sim._count(resp.counter, end - sent, resp.file_size)
            try:
                self.wfile.write(_maybe_flip(body[sent:end], sent, flip_at))
            except OSError:
                sim._count(resp.counter, sent - end)
                raise
            sent = end
        if limit < len(body):
            self._abort()

    def _abort(self) -> None:
        # Headers promised the full Content-Length: closing now is a truncated download.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class TokenBucket:
    """A rate cap: ``take(n)`` waits until n bytes fit under ``rate`` bytes/s. Debt-based,
    so concurrent takers of one bucket (the link) share its rate."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = burst if burst is not None else max(64 * 1024, self.rate / 50)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int, sleep) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - n
            self.stamp = now
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            sleep(wait)


def _maybe_flip(chunk: memoryview, chunk_start: int, flip_at: int | None) -> memoryview | bytes:
    if flip_at is None or not chunk_start <= flip_at < chunk_start + len(chunk):
        return chunk
    copy = bytearray(chunk)  # only this chunk is copied, never the whole file
    copy[flip_at - chunk_start] ^= 0xFF
    return bytes(copy)


# --------------------------------------------------------------------------- the simulator


class HubSim:
    """The Hub imitation. Build repos with `add_repo`/`commit`, then point clients at `endpoint`."""

    def __init__(
        self,
        *,
        tree_page_size: int = 3,
        lfs_threshold: int = MIB,
        lfs_suffixes: tuple[str, ...] = LFS_SUFFIXES,
        connection_rate: float | None = None,
        link_rate: float | None = None,
    ) -> None:
        self.tree_page_size = tree_page_size
        # Rate caps in bytes/s on file bytes (token buckets): per connection and for the
        # whole link (both servers together). None = uncapped. Change them any time.
        self.connection_rate = connection_rate
        self.link_rate = link_rate
        # A CDN that ignores Range (allowed, RFC 9110 §14.2): 200 and the whole body.
        self.ignore_ranges = False
        self._link_bucket: TokenBucket | None = None
        # File bodies being sent right now, and the most at once, per (repo, path).
        self.in_flight: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.peak_in_flight: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.lfs_threshold = lfs_threshold
        self.lfs_suffixes = lfs_suffixes
        self.tokens: set[str] = set()
        self.repos: dict[str, HubRepo] = {}
        self.bytes_served: defaultdict[tuple[str, str], int] = defaultdict(int)
        # The moment a file's bytes served first reached its size: every file's count then
        # (the server's own record of which file was complete first, and how far the rest).
        self.served_when_full: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
        self.requests: list[RequestRecord] = []
        self._faults: dict[tuple[str, str], list[_Fault]] = defaultdict(list)
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._released = threading.Event()  # replaced by each release_stalls()
        self._secret = b"hubsim-cdn-signing-key"
        self._hub: _Server | None = None
        self._cdn: _Server | None = None
        self._threads: list[threading.Thread] = []

    # ---- lifecycle

    def start(self) -> HubSim:
        self._hub, self._cdn = _Server(self, "hub"), _Server(self, "cdn")
        for server in (self._hub, self._cdn):
            # A short poll interval keeps shutdown() (and so fixture teardown) fast.
            thread = threading.Thread(
                target=server.serve_forever, args=(0.02,), name=f"hubsim-{server.role}"
            )
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._closing.set()  # wakes stalled handlers
        for server in (self._hub, self._cdn):
            if server is not None:
                stop_server(server)
                server.drop_connections()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HubSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._hub is not None, "HubSim not started"
        return self._hub.origin

    @property
    def cdn_endpoint(self) -> str:
        assert self._cdn is not None, "HubSim not started"
        return self._cdn.origin

    # ---- building content

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str],
        branch: str = "main",
        gated: bool | str = False,
        private: bool = False,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create (or replace) a repo with one commit on `branch`; returns its sha.

        `tags` maps tag name -> revision (branch or sha), resolved after the commit."""
        with self._lock:
            gate = "manual" if gated is True else gated
            self.repos[repo_id] = HubRepo(repo_id, gated=gate, private=private)
            sha = self.commit(repo_id, files, branch=branch)
            for name, target in (tags or {}).items():
                self.tag(repo_id, name, target)
            return sha

    def commit(
        self, repo_id: str, files: Mapping[str, bytes | str | None], branch: str = "main"
    ) -> str:
        """Add/replace files (None deletes) on top of `branch` and move it; returns the new sha.

        A missing branch (e.g. "refs/pr/1") starts from main's head. Old shas stay resolvable."""
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches.get(branch) or repo.branches.get("main")
            tree = dict(repo.commits[parent].files) if parent else {}
            for path, data in files.items():
                if data is None:
                    tree.pop(path, None)
                else:
                    tree[path] = self._make_file(path, data)
                    if tree[path].lfs:
                        repo.blobs[tree[path].sha256] = tree[path].data
            sha = _commit_sha(repo_id, parent, tree)
            repo.commits[sha] = Commit(sha, parent, tree)
            repo.branches[branch] = sha
            return sha

    def tag(self, repo_id: str, name: str, revision: str = "main") -> str:
        with self._lock:
            repo = self.repos[repo_id]
            commit = repo.resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_id}: unknown revision {revision!r}")
            repo.tags[name] = commit.sha
            return commit.sha

    def head(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            commit = self.repos[repo_id].resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_id}: unknown revision {revision!r}")
            return commit.sha

    def file(self, repo_id: str, path: str, revision: str = "main") -> HubFile:
        with self._lock:
            return self.repos[repo_id].commits[self.head(repo_id, revision)].files[path]

    def resolve_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def _make_file(self, path: str, data: bytes | str) -> HubFile:
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, bytes):
            data = bytes(data)  # bytearray/memoryview: freeze once so slices stay valid
        sha256 = hashlib.sha256(data).hexdigest()
        is_lfs = path.endswith(self.lfs_suffixes) or len(data) >= self.lfs_threshold
        if not is_lfs:
            return HubFile(path, data, False, git_blob_id(data), sha256, 0)
        pointer = lfs_pointer(sha256, len(data))
        return HubFile(path, data, True, git_blob_id(pointer), sha256, len(pointer))

    # ---- faults

    def corrupt(self, repo_id: str, path: str, offset: int | None = None) -> None:
        """Serve `path` with one byte flipped (same length) until `clear_faults()`."""
        self._add_fault(repo_id, path, _Fault("corrupt", None, offset=offset))

    def cut(self, repo_id: str, path: str, after_bytes: int, times: int | None = 1) -> None:
        """Send full headers, then close the connection after `after_bytes` body bytes."""
        self._add_fault(repo_id, path, _Fault("cut", times, after_bytes=after_bytes))

    def stall(
        self,
        repo_id: str,
        path: str,
        seconds: float,
        times: int | None = 1,
        after_bytes: int | None = None,
    ) -> None:
        """Go silent for `seconds`: before the headers, or after `after_bytes` body bytes."""
        fault = _Fault("stall", times, seconds=seconds, after_bytes=after_bytes)
        self._add_fault(repo_id, path, fault)

    def fail(
        self,
        repo_id: str,
        path_or_route: str,
        status: int = 503,
        times: int | None = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer `status` instead. Target a file path or a ROUTE_* name (e.g. "@info").
        `headers` go with the answer, e.g. {"Retry-After": "1"} for a 429."""
        fault = _Fault("fail", times, status=status, headers=dict(headers or {}))
        self._add_fault(repo_id, path_or_route, fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add_fault(self, repo_id: str, target: str, fault: _Fault) -> None:
        with self._lock:
            self._faults[(repo_id, target)].append(fault)

    def _take_faults(self, repo_id: str, targets: list[str], plan: _Plan | None = None) -> _Plan:
        """Pick the first live fault of each kind for these targets and use one `times` up."""
        plan = plan or _Plan()
        with self._lock:
            seen: set[str] = set()
            for target in targets:
                for fault in self._faults.get((repo_id, target), []):
                    if fault.kind in seen or fault.remaining == 0:
                        continue
                    seen.add(fault.kind)
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    plan.apply(fault)
        return plan

    # ---- counters

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_served.clear()
            self.served_when_full.clear()
            self.requests.clear()
            self.peak_in_flight.clear()

    def _flight(self, key: tuple[str, str] | None, delta: int) -> None:
        if key is None:
            return
        with self._lock:
            self.in_flight[key] += delta
            self.peak_in_flight[key] = max(self.peak_in_flight[key], self.in_flight[key])

    def _buckets(self, handler: object) -> list[TokenBucket]:
        """The caps a body is sent under: its connection's bucket (kept on the handler,
        which serves one connection) and the link's."""
        out = []
        if self.connection_rate:
            bucket = getattr(handler, "_bucket", None)
            if bucket is None or bucket.rate != self.connection_rate:
                bucket = TokenBucket(self.connection_rate)
                handler._bucket = bucket  # type: ignore[attr-defined]
            out.append(bucket)
        if self.link_rate:
            with self._lock:
                if self._link_bucket is None or self._link_bucket.rate != self.link_rate:
                    self._link_bucket = TokenBucket(self.link_rate)
                out.append(self._link_bucket)
        return out

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _count(self, key: tuple[str, str] | None, n: int, size: int | None = None) -> None:
        if key is not None:
            with self._lock:
                self.bytes_served[key] += n
                if size is not None and self.bytes_served[key] >= size:
                    self.served_when_full.setdefault(key, dict(self.bytes_served))

    def release_stalls(self) -> None:
        """End every stall in progress now: a test waits for an event the servers record,
        not for a clock (stalls that start later last their full time again)."""
        with self._lock:
            released, self._released = self._released, threading.Event()
        released.set()

    def _sleep(self, seconds: float) -> None:
        self._closing.wait(seconds)

    def _stall(self, seconds: float) -> None:
        """A stall: ``seconds``, or until the sim stops or release_stalls() is called."""
        with self._lock:
            released = self._released
        deadline = time.monotonic() + seconds
        while not (self._closing.is_set() or released.is_set()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            released.wait(min(remaining, 0.05))

    # ---- hub routes

    def _route_hub(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> _Response:
        url = urlsplit(target)
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        if segs[:2] == ["api", "agent-harnesses"]:
            return _json(200, {"standardEnvVars": [], "harnesses": {}})
        if segs[:2] == ["api", "telemetry"]:
            return _json(200, {})
        if segs[:2] == ["api", "models"] and len(segs) > 2:
            return self._route_api(method, url.path, segs[2:], query, headers, body)
        if "resolve" in segs[1:3] and method in ("GET", "HEAD"):
            cut = segs.index("resolve", 1)
            return self._route_resolve(method, "/".join(segs[:cut]), segs[cut + 1 :], headers)
        return _error(404, None, "Sorry, we can't find the page you are looking for.")

    def _split_repo(self, segs: list[str]) -> tuple[str, list[str]]:
        """`org/name/...` or legacy `name/...` -> (repo_id, rest)."""
        with self._lock:
            if len(segs) >= 2 and f"{segs[0]}/{segs[1]}" in self.repos:
                return f"{segs[0]}/{segs[1]}", segs[2:]
            if segs[0] in self.repos or len(segs) == 1 or segs[1] in _API_ACTIONS:
                return segs[0], segs[1:]
        return f"{segs[0]}/{segs[1]}", segs[2:]

    def _check_access(
        self, repo_id: str, headers: Mapping[str, str], files: bool
    ) -> tuple[HubRepo | None, _Response | None]:
        """The repo, or the error the real Hub gives (private repos look missing)."""
        with self._lock:
            repo = self.repos.get(repo_id)
            token = _bearer(headers)
            valid = token in self.tokens
        if repo is None:
            return None, _error(404, "RepoNotFound", "Repository not found")
        if repo.private and not valid:
            return None, _error(401, "RepoNotFound", "Repository not found")
        if repo.gated and files and not valid:
            if token is None:
                msg = (
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                return None, _error(401, "GatedRepo", msg)
            msg = (
                f"Access to model {repo_id} is restricted and you are not in the authorized "
                f"list. Visit {self.endpoint}/{repo_id} to ask for access."
            )
            return None, _error(403, "GatedRepo", msg)
        return repo, None

    def _find_commit(self, repo: HubRepo, revision: str) -> Commit | _Response:
        with self._lock:
            commit = repo.resolve(revision)
        return commit or _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _route_api(
        self,
        method: str,
        raw_path: str,
        segs: list[str],
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
    ) -> _Response:
        repo_id, rest = self._split_repo(segs)
        action = rest[0] if rest else "revision"
        route = {"revision": ROUTE_INFO, "tree": ROUTE_TREE, "paths-info": ROUTE_PATHS_INFO}
        plan = self._take_faults(repo_id, [route.get(action, ROUTE_REFS)])
        repo, denied = self._check_access(repo_id, headers, files=False)
        if repo is None:
            resp = denied
        elif action == "refs" and method == "GET":
            resp = self._refs(repo)
        elif action == "revision" and method == "GET" and len(rest) <= 2:
            revision = rest[1] if len(rest) == 2 else "main"
            resp = self._info(repo, revision, _flag(query, "blobs"))
        elif action == "tree" and method == "GET" and len(rest) >= 2:
            resp = self._tree(repo, raw_path, rest[1], "/".join(rest[2:]), query)
        elif action == "paths-info" and method == "POST" and len(rest) == 2:
            resp = self._paths_info(repo, rest[1], headers, body)
        else:
            resp = _error(404, None, "Sorry, we can't find the page you are looking for.")
        assert resp is not None
        resp.plan = plan
        return resp

    def _info(self, repo: HubRepo, revision: str, blobs: bool) -> _Response:
        commit = self._find_commit(repo, revision)
        if isinstance(commit, _Response):
            return commit
        files = [commit.files[p] for p in sorted(commit.files)]
        payload: dict[str, object] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.sha,
            "lastModified": FIXED_DATE,
            "createdAt": FIXED_DATE,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [f.sibling(blobs) for f in files],
            "spaces": [],
        }
        if blobs:
            payload["usedStorage"] = sum(f.size for f in files)
        return _json(200, payload)

    def _tree(
        self,
        repo: HubRepo,
        raw_path: str,
        revision: str,
        path: str,
        query: dict[str, list[str]],
    ) -> _Response:
        commit = self._find_commit(repo, revision)
        if isinstance(commit, _Response):
            return commit
        entries = commit.tree(path.strip("/"), _flag(query, "recursive"))
        if entries is None:
            return _error(404, "EntryNotFound", f"{path} does not exist on {revision!r}")
        start = _decode_cursor(query.get("cursor", [""])[0])
        page = entries[start : start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(entries):
            params = {k: v[0] for k, v in query.items() if k != "cursor"}
            params["cursor"] = _encode_cursor(start + self.tree_page_size)
            headers["Link"] = f'<{self.endpoint}{raw_path}?{urlencode(params)}>; rel="next"'
        return _json(200, page, headers)

    def _paths_info(
        self, repo: HubRepo, revision: str, headers: Mapping[str, str], body: bytes
    ) -> _Response:
        commit = self._find_commit(repo, revision)
        if isinstance(commit, _Response):
            return commit
        if headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        infos = [commit.path_info(p) for p in dict.fromkeys(paths)]  # missing paths: skipped
        return _json(200, [info for info in infos if info is not None])

    def _refs(self, repo: HubRepo) -> _Response:
        with self._lock:
            heads = {k: v for k, v in repo.branches.items() if not k.startswith("refs/pr/")}
            prs = {k: v for k, v in repo.branches.items() if k.startswith("refs/pr/")}
            tags = dict(repo.tags)

        def refs(table: dict[str, str], ref: str) -> list[dict[str, str]]:
            return [
                {"name": n, "ref": ref.format(n), "targetCommit": sha}
                for n, sha in sorted(table.items())
            ]

        payload = {
            "branches": refs(heads, "refs/heads/{}"),
            "converts": [],
            "tags": refs(tags, "refs/tags/{}"),
            "pullRequests": refs(prs, "{}"),
        }
        return _json(200, payload)

    def _route_resolve(
        self, method: str, repo_id: str, rest: list[str], headers: dict[str, str]
    ) -> _Response:
        plan = self._take_faults(repo_id, [ROUTE_RESOLVE])
        repo, denied = self._check_access(repo_id, headers, files=True)
        if repo is None or len(rest) < 2:
            resp = denied or _error(404, "EntryNotFound", "Entry not found")
        else:
            resp = self._resolve(method, repo, rest[0], "/".join(rest[1:]), headers, plan)
        resp.plan = plan
        return resp

    def _resolve(
        self,
        method: str,
        repo: HubRepo,
        revision: str,
        path: str,
        headers: dict[str, str],
        plan: _Plan,
    ) -> _Response:
        commit = self._find_commit(repo, revision)
        if isinstance(commit, _Response):
            return commit
        hub_file = commit.files.get(path)
        if hub_file is None:
            # X-Repo-Commit lets the client cache the file's absence for this commit.
            msg = f"{path} does not exist on {revision!r}"
            return _error(404, "EntryNotFound", msg, **{"X-Repo-Commit": commit.sha})
        common = {"X-Repo-Commit": commit.sha, "Content-Disposition": _disposition(path)}
        if hub_file.lfs:
            return self._lfs_redirect(repo.repo_id, hub_file, common)
        common["ETag"] = f'"{hub_file.blob_id}"'
        resp = _bytes_response(
            hub_file.data, headers.get("Range"), common, (repo.repo_id, hub_file.path)
        )
        if method == "GET" and resp.status in (200, 206):
            self._take_faults(repo.repo_id, [path], plan)
        return resp

    def _lfs_redirect(self, repo_id: str, hub_file: HubFile, common: dict[str, str]) -> _Response:
        location = self._cdn_url(repo_id, hub_file)
        headers = {
            **common,
            "Location": location,
            "X-Linked-Etag": f'"{hub_file.sha256}"',
            "X-Linked-Size": str(hub_file.size),
            "ETag": f'"{hub_file.sha256}"',
            "Content-Type": "text/plain; charset=utf-8",
        }
        return _Response(302, headers, memoryview(f"Found. Redirecting to {location}".encode()))

    # ---- CDN route

    def _signature(self, repo_id: str, sha256: str, path: str) -> str:
        msg = f"{repo_id}\0{sha256}\0{path}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def _cdn_url(self, repo_id: str, hub_file: HubFile) -> str:
        # Signed like S3/CloudFront URLs, so clients must use the Location as given.
        params = {
            "filename": hub_file.path,
            "response-content-disposition": _disposition(hub_file.path),
            "X-Amz-Expires": "3600",
            "X-Amz-Signature": self._signature(repo_id, hub_file.sha256, hub_file.path),
        }
        return f"{self.cdn_endpoint}/repos/{repo_id}/{hub_file.sha256}?{urlencode(params)}"

    def _route_cdn(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> _Response:
        url = urlsplit(target)
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if method not in ("GET", "HEAD") or len(segs) < 3 or segs[0] != "repos":
            return _error(404, None, "NoSuchKey")
        repo_id, sha256, path = "/".join(segs[1:-1]), segs[-1], query.get("filename", "")
        plan = self._take_faults(repo_id, [ROUTE_CDN])
        given = query.get("X-Amz-Signature", "")
        if not hmac.compare_digest(given, self._signature(repo_id, sha256, path)):
            resp = _error(403, None, "SignatureDoesNotMatch")
        else:
            with self._lock:
                repo = self.repos.get(repo_id)
                data = repo.blobs.get(sha256) if repo else None
            if data is None:
                resp = _error(404, None, "NoSuchKey")
            else:
                extra = {"ETag": f'"{sha256}"', "Content-Disposition": _disposition(path)}
                rng = None if self.ignore_ranges else headers.get("Range")
                resp = _bytes_response(data, rng, extra, (repo_id, path))
                if method == "GET" and resp.status in (200, 206):
                    self._take_faults(repo_id, [path], plan)
        resp.plan = plan
        return resp


def _commit_sha(repo_id: str, parent: str | None, tree: Mapping[str, HubFile]) -> str:
    """Deterministic 40-hex commit id from repo, parent and content."""
    digest = hashlib.sha1(f"commit\0{repo_id}\0{parent or ''}\0".encode())
    for path in sorted(tree):
        digest.update(f"{path}\0{tree[path].blob_id}\n".encode())
    return digest.hexdigest()


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[0].lower() in ("1", "true", "yes")


def _encode_cursor(offset: int) -> str:
    # Opaque like the real Hub's cursors, so nobody is tempted to compute them.
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(cursor.encode()))["offset"])
    except (ValueError, KeyError, TypeError):
        return 0
