"""Repos shaped like real Hub repos, end to end through the CLI with real parts (the Hub
imitation, docker-registry, buildah, skopeo/umoci, podman): file sizes at every edge,
models with hundreds of shards, and shard indexes that do not match the selection."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from modelcar_builder.source.download import CHUNK
from tests.support.clitools import run
from tests.support.hubsim import EDGE_FILES, ROUTE_RESOLVE
from tests.support.imagecheck import assert_models_match, unpack
from tests.support.podman import make_podman, podman_available

MIB = 1 << 20
THRESHOLD = 2 * MIB


def data(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def edge_files() -> dict[str, bytes]:
    """Every size edge the fetch and layer code branches on."""
    return {
        "config.json": b'{"model_type": "edge"}',
        "exact-chunk.safetensors": data("chunk", CHUNK),
        "under-threshold.safetensors": data("under", THRESHOLD - 1),
        "at-threshold.safetensors": data("at", THRESHOLD),
        "over-threshold.safetensors": data("over", THRESHOLD + CHUNK + 1),
        **EDGE_FILES,
    }


def build(capsys, image: str, ws: Path, base: str, *extra: str):
    return run(
        capsys, "build", "acme/edge", "--image", image, "--workspace", str(ws),
        "--base-image", base, "--layer-threshold", str(THRESHOLD), "--no-tls-verify", *extra,
    )  # fmt: skip


def raw_manifest(image: str) -> dict:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{image}"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(raw)


ENGINES = {
    "native": ("--engine", "native"),
    "native-stream": ("--engine", "native", "--stream"),
    "buildah": ("--engine", "buildah"),
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_every_size_edge_builds_and_reruns(engine, hub, registry, base_image, capsys, tmp_path):
    hub.add_repo("acme/edge", edge_files())
    image = f"{registry.host}/edge/{engine}:v1"
    report = tmp_path / "report.json"
    first = build(capsys, image, tmp_path / "ws", base_image.ref, *ENGINES[engine],
                  "--report", str(report))  # fmt: skip
    assert first.code == 0, first.err
    doc = json.loads(report.read_text())
    layer_of = {f["path"]: f["layer"] for f in doc["files"]}
    own = [p for p in layer_of if list(layer_of.values()).count(layer_of[p]) == 1]
    assert sorted(own) == ["at-threshold.safetensors", "over-threshold.safetensors"]
    assert layer_of["under-threshold.safetensors"] == layer_of["added_tokens.json"]
    assert layer_of["exact-chunk.safetensors"] == layer_of["added_tokens.json"]

    img = unpack(f"docker://{image}", tmp_path / "check")
    assert_models_match(img, edge_files())  # empty files included, 0644
    assert (img.rootfs / "models" / "pkg" / "__init__.py").stat().st_size == 0

    hub.reset_counters()
    again = build(capsys, image, tmp_path / "ws", base_image.ref, *ENGINES[engine],
                  "--report", str(report))  # fmt: skip
    assert again.code == 0, again.err
    assert again.last_line == first.last_line
    if engine != "native-stream":
        assert json.loads(report.read_text())["bytes_downloaded"] == 0


def test_fetch_of_edge_sizes_then_rerun_fetches_nothing(hub, capsys, tmp_path):
    hub.add_repo("acme/edge", edge_files())
    ws = tmp_path / "ws"
    first = run(capsys, "fetch", "acme/edge", "--workspace", str(ws))
    assert first.code == 0, first.err
    files = Path(first.last_line)
    for path, content in edge_files().items():
        assert (files / path).read_bytes() == content, path
        assert (files / path).stat().st_mode & 0o777 == 0o644, path
    again = run(capsys, "fetch", "acme/edge", "--workspace", str(ws))
    assert again.code == 0, again.err
    assert "nothing to fetch" in again.err


# -- hundreds of shards --------------------------------------------------------------------

SHARDS = 300
SHARD_BYTES = 32 * 1024  # the index (~15 KB) stays under the threshold


def many_shards() -> dict[str, bytes]:
    files = {
        f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors": data(f"s{i}", SHARD_BYTES + i)
        for i in range(SHARDS)
    }
    files["config.json"] = b'{"model_type": "huge"}'
    index = {"metadata": {}, "weight_map": {f"w{i}": p for i, p in enumerate(files) if i < SHARDS}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    return files


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    why = podman_available()
    if why:
        pytest.skip(why)
    pm = make_podman(tmp_path_factory.mktemp("podman"))
    yield pm
    pm.close()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["native", "native-stream", "buildah"])
def test_300_shards_become_an_image_podman_can_run(
    engine, hub, registry, base_image, podman, capsys, tmp_path
):
    files = many_shards()
    hub.add_repo("acme/huge", files)
    image = f"{registry.host}/huge/{engine}:v1"
    plan = run(capsys, "plan", "acme/huge", "--layer-threshold", str(SHARD_BYTES), "--json")
    assert plan.code == 0, plan.err
    planned = json.loads(plan.out)
    assert "300 large files" in planned["grouping"]
    res = run(
        capsys, "build", "acme/huge", *ENGINES[engine], "--image", image,
        "--workspace", str(tmp_path / "ws"), "--base-image", base_image.ref,
        "--layer-threshold", str(SHARD_BYTES), "--no-tls-verify",
    )  # fmt: skip
    assert res.code == 0, res.err
    layers = raw_manifest(image)["layers"]
    assert len(layers) == 1 + len(planned["layers"]) <= 100  # busybox + the planned layers

    podman.pull(image)
    # KServe's init container check, then every file read back inside a started container.
    podman.start(image, '[ -d /models ] && [ "$(ls -A /models)" ]')
    out = podman.start(image, "cd /models && find . -type f -exec sha256sum {} \\;").stdout
    seen = {}
    for line in out.splitlines():
        digest, path = line.split("  ", 1)
        seen[path.removeprefix("./")] = digest
    assert seen == {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}, podman.driver


def test_prepared_context_follows_the_grouped_plan(hub, capsys, tmp_path):
    hub.add_repo("acme/huge", many_shards())
    res = run(capsys, "prepare", "acme/huge", "--workspace", str(tmp_path / "ws"),
              "--base-image", "scratch", "--layer-threshold", str(SHARD_BYTES))  # fmt: skip
    assert res.code == 0, res.err
    ctx = Path(res.last_line)
    copies = [
        ln for ln in (ctx / "Containerfile").read_text().splitlines() if ln.startswith("COPY")
    ]
    layer_dirs = sorted(p for p in ctx.iterdir() if p.is_dir())
    assert len(copies) == len(layer_dirs) <= 100  # scratch: no base layer to count
    shipped = sorted(p.name for d in layer_dirs for p in d.rglob("*.safetensors"))
    assert len(shipped) == SHARDS


# -- shard index completeness --------------------------------------------------------------


def sharded_repo() -> dict[str, bytes]:
    shards = {f"model-{i:05d}-of-00003.safetensors": data(f"x{i}", MIB + i) for i in (1, 2, 3)}
    index = {"weight_map": {f"layer.{i}": p for i, p in enumerate(shards)}}
    return {
        "config.json": b"{}",
        "model.safetensors.index.json": json.dumps(index).encode(),
        **shards,
        **EDGE_FILES,
    }


def test_exclude_that_drops_a_shard_fails_in_plan_before_any_download(hub, capsys, tmp_path):
    hub.add_repo("acme/sharded", sharded_repo())
    hub.reset_counters()
    ws = tmp_path / "ws"
    drop = ("--exclude", "model-00002-of-00003.safetensors")
    for cmd in (["plan"], ["fetch", "--workspace", str(ws)]):
        res = run(capsys, *cmd, "acme/sharded", *drop)
        assert res.code == 15, res.err
        lines = res.err.strip().splitlines()
        assert lines[0] == (
            "error: model.safetensors.index.json names 1 file the image would lack: "
            "model-00002-of-00003.safetensors (matched by --exclude)"
        )
        assert "--allow-incomplete" in lines[1]
    assert not shard_requests(hub)
    assert not (ws / "files").exists() or not any((ws / "files").rglob("*.safetensors"))

    ok = run(capsys, "fetch", "acme/sharded", "--workspace", str(ws), *drop, "--allow-incomplete")
    assert ok.code == 0, ok.err
    assert not (Path(ok.last_line) / "model-00002-of-00003.safetensors").exists()


INDEX = "model.safetensors.index.json"


@pytest.mark.parametrize(
    ("status", "headers", "wait"),
    [
        # The Hub's own rate-limit header: t=1 is waited, not the 5 s default of a bare 429.
        (429, {"RateLimit": '"resolvers";r=0;t=1'}, 1),
        (503, {}, 1),  # the first backoff step
    ],
)
def test_a_429_or_503_on_the_shard_index_is_retried(hub, capsys, status, headers, wait):
    """The index is read while planning: one 429 or 5xx there used to end plan, fetch and
    build with exit 20 at once. It is retried like the metadata call, one line per retry."""
    hub.add_repo("acme/sharded", sharded_repo())
    hub.fail("acme/sharded", INDEX, status=status, times=1, headers=headers)
    res = run(capsys, "plan", "acme/sharded", "--json")
    assert res.code == 0, res.err
    retries = [line for line in res.err.splitlines() if "retrying in" in line]
    assert retries == [
        f"modelcar: reading {INDEX} from the Hub failed (HTTP {status}); "
        f"retrying in {wait} s (try 2 of 3)"
    ], res.err
    assert json.loads(res.out)["commit"] == hub.head("acme/sharded")
    index_gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(INDEX)]
    assert len(index_gets) == 2


def test_a_cut_index_read_is_retried(hub, capsys):
    hub.add_repo("acme/sharded", sharded_repo())
    hub.cut("acme/sharded", INDEX, after_bytes=20)
    res = run(capsys, "plan", "acme/sharded")
    assert res.code == 0, res.err
    retries = [line for line in res.err.splitlines() if "retrying in" in line]
    assert len(retries) == 1 and f"reading {INDEX} from the Hub failed (" in retries[0], res.err


def test_the_index_read_gives_up_after_three_tries(hub, capsys):
    hub.add_repo("acme/sharded", sharded_repo())
    hub.fail("acme/sharded", INDEX, status=503, times=None)
    res = run(capsys, "plan", "acme/sharded")
    assert res.code == 20, res.err
    assert f"error: reading {INDEX} from the Hub failed (HTTP 503)" in res.err
    assert res.err.count("retrying in") == 2 and "Traceback" not in res.err


def test_the_gated_access_probe_is_retried(hub, capsys, tmp_path):
    """A gated repo's access check (a HEAD on one file) is a metadata read too."""
    hub.add_repo("acme/gated", sharded_repo(), gated=True)
    hub.tokens.add("hf_gated_ok")
    token = tmp_path / "token"
    token.write_text("hf_gated_ok\n")
    hub.fail("acme/gated", ROUTE_RESOLVE, status=503, times=1)
    res = run(capsys, "plan", "acme/gated", "--hf-token-file", str(token))
    assert res.code == 0, res.err
    assert "the Hub's access check on acme/gated failed (HTTP 503); retrying in 1 s" in res.err


@pytest.mark.slow
def test_complete_sharded_repo_builds(hub, registry, base_image, capsys, tmp_path):
    hub.add_repo("acme/sharded", sharded_repo())
    image = f"{registry.host}/sharded/m:v1"
    res = run(
        capsys, "build", "acme/sharded", "--engine", "native", "--image", image,
        "--workspace", str(tmp_path / "ws"), "--base-image", base_image.ref, "--no-tls-verify",
    )  # fmt: skip
    assert res.code == 0, res.err
    assert_models_match(unpack(f"docker://{image}", tmp_path / "check"), sharded_repo())


def test_local_directory_missing_a_shard_is_refused(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    for path, content in sharded_repo().items():
        if path != "model-00003-of-00003.safetensors":
            (model / path).parent.mkdir(parents=True, exist_ok=True)
            (model / path).write_bytes(content)
    res = run(capsys, "plan", str(model))
    assert res.code == 15
    assert "model-00003-of-00003.safetensors (not in the repo)" in res.err


def test_base_deeper_than_the_budget_fails_before_any_download(
    hub, registry, base_image, capsys, tmp_path
):
    hub.add_repo("acme/sharded", sharded_repo())
    hub.reset_counters()
    res = run(
        capsys, "build", "acme/sharded", "--engine", "native", "--image",
        f"{registry.host}/x/y:v1", "--workspace", str(tmp_path / "ws"),
        "--base-image", base_image.ref, "--no-tls-verify", "--max-layers", "2",
        "--layer-threshold", str(MIB),
    )  # fmt: skip
    assert res.code == 16, res.err
    assert "the base image has 1 layers" in res.err
    assert not shard_requests(hub)


def shard_requests(hub) -> list:
    """Requests that move shard bytes (the index JSON is read while planning)."""
    return [
        r for r in hub.requests
        if r.path.startswith("/cdn") or ("/resolve/" in r.path and "index.json" not in r.path)
    ]  # fmt: skip


def test_a_missing_base_image_fails_before_any_download_with_a_hint(
    hub, registry, capsys, tmp_path
):
    hub.add_repo("acme/sharded", sharded_repo())
    hub.reset_counters()
    res = run(
        capsys, "build", "acme/sharded", "--engine", "native", "--image",
        f"{registry.host}/x/y:v1", "--workspace", str(tmp_path / "ws"),
        "--base-image", f"{registry.host}/nope/base:1", "--no-tls-verify",
    )  # fmt: skip
    assert res.code == 17, res.err
    lines = res.err.strip().splitlines()
    assert lines[-2].startswith("error: base image") and "not found" in lines[-2]
    assert lines[-1].startswith("hint: check --base-image")
    assert not shard_requests(hub)


def test_every_error_class_has_a_hint():
    import inspect

    from modelcar_builder import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.ModelcarError)]  # fmt: skip
    assert len(classes) > 20
    assert [c.__name__ for c in classes if not c.default_hint] == []
    codes = [c.exit_code for c in classes]
    assert all(0 < code < 256 for code in codes)
