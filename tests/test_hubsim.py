"""The Hub imitation must satisfy the real huggingface_hub client, or the other tests prove
nothing. Faults are checked with plain `requests` so that client retries don't hide them."""

from __future__ import annotations

import hashlib
import http.client
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from huggingface_hub import (
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests.support.hubsim import ROUTE_INFO, ROUTE_RESOLVE, HubSim, git_blob_id

REPO = "acme/tiny"
CONFIG = b'{"model_type": "tiny"}\n'
WEIGHTS = bytes(range(256)) * 4096  # 1 MiB, LFS by suffix
FILES = {
    "config.json": CONFIG,
    "model.safetensors": WEIGHTS,
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "tokenizer/merges.txt": b"#version: 0.2\n",
    "onnx/model.onnx": b"\x08\x01" * 10,
    "README.md": "# tiny\n",
}
CHUNK_PROBE = 4096  # a mid-body stall point


@pytest.fixture
def commit(hub: HubSim) -> str:
    """The commit that REPO's main (and tag v1.0) points at."""
    return hub.add_repo(REPO, FILES, tags={"v1.0": "main"})


@pytest.fixture
def api(hub: HubSim) -> HfApi:
    return HfApi(endpoint=hub.endpoint)


def download(hub: HubSim, cache: Path, filename: str, **kwargs: object) -> bytes:
    path = hf_hub_download(REPO, filename, endpoint=hub.endpoint, cache_dir=cache, **kwargs)
    return Path(path).read_bytes()


def url(hub: HubSim, path: str, revision: str = "main") -> str:
    return hub.resolve_url(REPO, path, revision)


# --------------------------------------------------------------------------- metadata routes


def test_model_info_with_files_metadata(hub: HubSim, api: HfApi, commit: str) -> None:
    info = api.model_info(REPO, files_metadata=True)
    assert info.id == REPO and info.sha == commit and len(commit) == 40
    assert info.private is False and info.gated is False
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == set(FILES)
    assert siblings["config.json"].size == len(CONFIG)
    assert siblings["config.json"].blob_id == git_blob_id(CONFIG)
    assert siblings["config.json"].lfs is None
    lfs = siblings["model.safetensors"].lfs
    assert lfs is not None and lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert (
        lfs.size == len(WEIGHTS)
        and lfs.pointer_size == hub.file(REPO, "model.safetensors").pointer_size
    )
    # Without ?blobs=true the real Hub only sends file names.
    assert all(s.size is None for s in api.model_info(REPO).siblings or [])


def test_revisions_branch_tag_pr_and_sha(
    hub: HubSim, api: HfApi, commit: str, tmp_path: Path
) -> None:
    pr_sha = hub.commit(REPO, {"config.json": b"{}"}, branch="refs/pr/1")
    dev_sha = hub.commit(REPO, {"extra.txt": b"x"}, branch="dev")
    for revision, sha in [
        ("main", commit),
        ("v1.0", commit),
        ("refs/tags/v1.0", commit),
        ("refs/heads/dev", dev_sha),
        ("dev", dev_sha),
        ("refs/pr/1", pr_sha),
        (commit, commit),
    ]:
        assert api.model_info(REPO, revision=revision).sha == sha, revision
    assert download(hub, tmp_path, "config.json", revision="refs/pr/1") == b"{}"
    assert any("/revision/refs%2Fpr%2F1" in r.path for r in hub.requests)
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [t.target_commit for t in refs.tags] == [commit]
    assert [p.ref for p in refs.pull_requests or []] == ["refs/pr/1"]


def test_branch_move_keeps_old_sha(hub: HubSim, api: HfApi, commit: str, tmp_path: Path) -> None:
    new = hub.commit(REPO, {"config.json": b'{"v": 2}', "README.md": None})
    assert new != commit and api.model_info(REPO).sha == new
    assert "README.md" not in {s.rfilename for s in api.model_info(REPO).siblings or []}
    assert download(hub, tmp_path, "config.json") == b'{"v": 2}'
    assert download(hub, tmp_path, "config.json", revision=commit) == CONFIG
    assert api.model_info(REPO, revision=commit).sha == commit
    assert hub.add_repo("acme/other", FILES) == hub.add_repo("acme/other", FILES)  # deterministic


def test_list_repo_tree_recursive_paginates(hub: HubSim, api: HfApi, commit: str) -> None:
    entries = list(api.list_repo_tree(REPO, recursive=True))
    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    folders = {e.path for e in entries if isinstance(e, RepoFolder)}
    assert set(files) == set(FILES) and folders == {"tokenizer", "onnx"}
    assert files["model.safetensors"].lfs is not None
    assert files["model.safetensors"].lfs.sha256 == hub.file(REPO, "model.safetensors").sha256
    assert files["config.json"].blob_id == git_blob_id(CONFIG) and files["config.json"].lfs is None
    pages = [r for r in hub.requests if "/tree/" in r.path]
    assert len(pages) == 3 and all("cursor=" in r.path for r in pages[1:])  # 8 entries, 3 per page
    assert {e.path for e in api.list_repo_tree(REPO)} == {
        "README.md",
        "config.json",
        "model.safetensors",
        "onnx",
        "tokenizer",
    }
    sub = {e.path for e in api.list_repo_tree(REPO, "tokenizer", recursive=True, revision=commit)}
    assert sub == {"tokenizer/vocab.txt", "tokenizer/merges.txt"}
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, "nope"))


def test_get_paths_info(hub: HubSim, api: HfApi, commit: str) -> None:
    infos = api.get_paths_info(
        REPO, ["model.safetensors", "tokenizer", "missing.bin"], revision="v1.0"
    )
    assert [i.path for i in infos] == ["model.safetensors", "tokenizer"]
    weights, folder = infos
    assert isinstance(weights, RepoFile) and isinstance(folder, RepoFolder)
    assert weights.size == len(WEIGHTS) and weights.lfs is not None
    assert weights.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    json_body = requests.post(
        f"{hub.endpoint}/api/models/{REPO}/paths-info/main", json={"paths": ["config.json"]}
    )
    assert json_body.json()[0]["oid"] == git_blob_id(CONFIG)


# --------------------------------------------------------------------------- file routes


def test_downloads_lfs_via_cdn_and_plain_from_hub(hub: HubSim, commit: str, tmp_path: Path) -> None:
    assert download(hub, tmp_path, "config.json") == CONFIG
    assert download(hub, tmp_path, "model.safetensors") == WEIGHTS
    assert download(hub, tmp_path, "tokenizer/vocab.txt") == FILES["tokenizer/vocab.txt"]
    assert hub.bytes_served[(REPO, "model.safetensors")] == len(WEIGHTS)
    cdn_gets = [r for r in hub.requests if r.path.startswith("/repos/")]
    assert len(cdn_gets) == 1 and cdn_gets[0].method == "GET"
    local = snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=tmp_path / "snap")
    assert (Path(local) / "onnx/model.onnx").read_bytes() == FILES["onnx/model.onnx"]


def test_file_metadata_headers(hub: HubSim, commit: str) -> None:
    plain = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=hub.endpoint))
    assert (plain.commit_hash, plain.etag, plain.size) == (commit, git_blob_id(CONFIG), len(CONFIG))
    lfs = get_hf_file_metadata(url(hub, "model.safetensors"))
    assert lfs.etag == hashlib.sha256(WEIGHTS).hexdigest() and lfs.size == len(WEIGHTS)
    assert lfs.commit_hash == commit and lfs.location.startswith(hub.cdn_endpoint + "/repos/")
    head = requests.head(url(hub, "config.json"))
    assert head.headers["Content-Length"] == str(len(CONFIG))
    assert head.headers["ETag"] == f'"{git_blob_id(CONFIG)}"'


def test_range_requests_answer_206(hub: HubSim, commit: str) -> None:
    partial = requests.get(url(hub, "config.json"), headers={"Range": "bytes=5-"})
    assert partial.status_code == 206 and partial.content == CONFIG[5:]
    assert partial.headers["Content-Range"] == f"bytes 5-{len(CONFIG) - 1}/{len(CONFIG)}"
    lfs = requests.get(url(hub, "model.safetensors"), headers={"Range": "bytes=10-19"})
    assert lfs.status_code == 206 and lfs.content == WEIGHTS[10:20]
    assert lfs.history[0].status_code == 302
    assert hub.requests[-1].headers["Range"] == "bytes=10-19"
    past_end = requests.get(url(hub, "config.json"), headers={"Range": f"bytes={len(CONFIG)}-"})
    assert past_end.status_code == 416


def test_ignore_ranges_answers_200_with_the_whole_body(hub: HubSim, commit: str) -> None:
    hub.ignore_ranges = True
    lfs = requests.get(url(hub, "model.safetensors"), headers={"Range": "bytes=10-19"})
    assert lfs.status_code == 200 and lfs.content == WEIGHTS
    assert "Content-Range" not in lfs.headers
    assert hub.requests[-1].headers["Range"] == "bytes=10-19"  # asked, and ignored
    hub.ignore_ranges = False
    again = requests.get(url(hub, "model.safetensors"), headers={"Range": "bytes=10-19"})
    assert again.status_code == 206 and again.content == WEIGHTS[10:20]


def test_large_file_concurrent_ranges(hub: HubSim) -> None:
    big = hashlib.sha256(b"seed").digest() * (100 * 1024 * 1024 // 32 + 3)  # 100 MiB + 96 bytes
    hub.add_repo("acme/big", {"weights.bin": big})
    hub.add_repo("acme/many", {f"f{i}.txt": str(i) * 100 for i in range(40)})
    step = len(big) // 4 + 1

    def fetch(i: int) -> bytes:
        rng = f"bytes={i * step}-{min(len(big), (i + 1) * step) - 1}"
        return requests.get(
            hub.resolve_url("acme/big", "weights.bin"), headers={"Range": rng}
        ).content

    def small(i: int) -> bytes:
        return requests.get(hub.resolve_url("acme/many", f"f{i}.txt")).content

    with ThreadPoolExecutor(8) as pool:
        assert b"".join(pool.map(fetch, range(4))) == big
        assert list(pool.map(small, range(40))) == [str(i).encode() * 100 for i in range(40)]
    assert hub.bytes_served[("acme/big", "weights.bin")] == len(big)


# --------------------------------------------------------------------------- errors and access


def test_error_codes_map_to_client_exceptions(
    hub: HubSim, api: HfApi, commit: str, tmp_path: Path
) -> None:
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/missing", "config.json", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        download(hub, tmp_path, "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        download(hub, tmp_path, "missing.json")
    assert requests.head(url(hub, "missing.json")).headers["X-Error-Code"] == "EntryNotFound"


def test_gated_repo_needs_a_known_token(hub: HubSim, api: HfApi, tmp_path: Path) -> None:
    hub.add_repo(REPO, FILES, gated=True)
    hub.tokens.add("hf_good")
    assert api.model_info(REPO).gated == "manual"  # metadata stays public, like the real Hub
    with pytest.raises(GatedRepoError):
        download(hub, tmp_path, "model.safetensors")
    with pytest.raises(GatedRepoError) as wrong:
        download(hub, tmp_path, "config.json", token="hf_wrong")
    assert wrong.value.response.status_code == 403
    assert requests.head(url(hub, "config.json")).status_code == 401
    assert download(hub, tmp_path, "model.safetensors", token="hf_good") == WEIGHTS
    cdn = [r for r in hub.requests if r.path.startswith("/repos/")]
    assert cdn and all("Authorization" not in r.headers for r in cdn)  # token stays on the Hub


def test_private_repo_looks_missing_without_token(hub: HubSim, tmp_path: Path) -> None:
    hub.add_repo(REPO, FILES, private=True)
    hub.tokens.add("hf_good")
    with pytest.raises(RepositoryNotFoundError) as err:
        HfApi(endpoint=hub.endpoint).model_info(REPO)
    assert not isinstance(err.value, GatedRepoError) and err.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        download(hub, tmp_path, "config.json", token="hf_wrong")
    assert HfApi(endpoint=hub.endpoint, token="hf_good").model_info(REPO).private is True
    assert download(hub, tmp_path, "config.json", token="hf_good") == CONFIG


# --------------------------------------------------------------------------- faults


def test_corrupt_flips_one_byte_until_cleared(hub: HubSim, commit: str) -> None:
    hub.corrupt(REPO, "model.safetensors")
    for _ in range(2):
        bad = requests.get(url(hub, "model.safetensors")).content
        assert len(bad) == len(WEIGHTS) and bad != WEIGHTS
        assert sum(a != b for a, b in zip(bad, WEIGHTS, strict=True)) == 1
    hub.corrupt(REPO, "config.json", offset=0)
    assert requests.get(url(hub, "config.json")).content[1:] == CONFIG[1:]
    hub.clear_faults()
    assert requests.get(url(hub, "model.safetensors")).content == WEIGHTS


def test_cut_closes_after_n_bytes(hub: HubSim, commit: str) -> None:
    hub.cut(REPO, "model.safetensors", after_bytes=1000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url(hub, "model.safetensors"))
    assert hub.bytes_served[(REPO, "model.safetensors")] == 1000
    assert requests.get(url(hub, "model.safetensors")).content == WEIGHTS  # times=1


def test_cut_is_resumed_by_the_real_client(hub: HubSim, commit: str, tmp_path: Path) -> None:
    hub.cut(REPO, "model.safetensors", after_bytes=300_000)
    assert download(hub, tmp_path, "model.safetensors") == WEIGHTS
    ranges = [r.headers.get("Range") for r in hub.requests if r.path.startswith("/repos/")]
    # The client buffers 10 MB chunks, so a cut before the first chunk restarts from 0.
    assert len(ranges) == 2 and ranges[0] is None


def test_stall_triggers_client_timeouts(hub: HubSim, commit: str) -> None:
    hub.stall(REPO, "config.json", seconds=2)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(url(hub, "config.json"), timeout=0.3)
    hub.stall(REPO, "model.safetensors", seconds=2, after_bytes=CHUNK_PROBE)
    with pytest.raises(requests.exceptions.ConnectionError):
        # A mid-body stall surfaces as a read timeout while streaming.
        requests.get(url(hub, "model.safetensors"), timeout=0.3).content  # noqa: B018
    assert requests.get(url(hub, "config.json"), timeout=2).content == CONFIG


def test_fail_answers_status_for_n_requests(hub: HubSim, api: HfApi, commit: str) -> None:
    hub.fail(REPO, "config.json", status=503, times=2)
    assert [requests.get(url(hub, "config.json")).status_code for _ in range(3)] == [503, 503, 200]
    hub.fail(REPO, "model.safetensors", status=500)
    assert requests.get(url(hub, "model.safetensors")).status_code == 500  # on the CDN
    assert requests.head(url(hub, "config.json")).status_code == 200  # file faults hit bytes only
    hub.fail(REPO, ROUTE_RESOLVE, status=502)
    assert requests.head(url(hub, "config.json")).status_code == 502
    hub.fail(REPO, ROUTE_INFO, status=503)
    with pytest.raises(HfHubHTTPError) as err:
        api.model_info(REPO)
    assert err.value.response.status_code == 503
    assert api.model_info(REPO).sha == commit


def test_counters_record_and_reset(hub: HubSim, commit: str) -> None:
    requests.get(url(hub, "config.json"), headers={"Range": "bytes=0-3"})
    assert hub.bytes_served[(REPO, "config.json")] == 4
    assert hub.requests[-1].method == "GET" and hub.requests[-1].headers["Range"] == "bytes=0-3"
    hub.reset_counters()
    assert not hub.requests and not hub.bytes_served


def test_fixture_env_and_harmless_routes(hub: HubSim) -> None:
    assert os.environ["HF_ENDPOINT"] == hub.endpoint != hub.cdn_endpoint
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == os.environ["HF_HUB_DISABLE_XET"] == "1"
    assert requests.get(f"{hub.endpoint}/api/agent-harnesses").json()["harnesses"] == {}
    assert http.client.responses[requests.get(f"{hub.endpoint}/nope").status_code] == "Not Found"


def test_stopping_a_server_whose_loop_never_answers_is_bounded():
    """A fixture's teardown runs after a test's timeout has fired: stopping a server whose
    serve_forever loop is not running (stuck, or never started) must still return."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.support.ports import stop_server

    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    # server.shutdown() alone would wait forever here: stop_server must return at all.
    stopper = threading.Thread(target=stop_server, args=(server,), kwargs={"wait": 0.5})
    stopper.start()
    stopper.join(timeout=60)
    assert not stopper.is_alive(), "stop_server never returned"
    assert server.socket.fileno() == -1  # the listening socket is closed anyway
