"""The buildah engine against real buildah 1.28 and real registries (docker-registry).

Models are tiny (two 1.5-2.5 MiB shards + two small files, 3 layers) so a build takes a
few seconds; the layer mechanics are the same as for a 400 GB model."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelcar_builder.auth import Credentials
from modelcar_builder.engines import BuildResult, RegistryOptions
from modelcar_builder.engines.buildah import (
    DEFAULT_OVERLAP,
    ENV_OVERLAP,
    BuildahEngine,
    BuildahSettings,
    buildah_mounts_here,
    check_compression,
    classify_failure,
    estimate_per_layer_peak,
    has_cap_sys_admin,
    meaningful_line,
    overlay_unusable,
    overlay_verdict,
    scrub,
)
from modelcar_builder.errors import (
    BuildFailed,
    EnginePrivilegeError,
    EngineUnavailable,
    RegistryAuthError,
    RegistryUnreachable,
    StorageDriverUnsupported,
    UsageError,
)
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST as OCI_MANIFEST
from modelcar_builder.pipeline import resolve
from modelcar_builder.plan import Plan, make_plan
from modelcar_builder.registry import RegistryClient
from modelcar_builder.selection import Selection
from modelcar_builder.workspace import Workspace
from tests.support.build_requests import THRESHOLD, request_for, token_file
from tests.support.features import (
    mounted_overlay,
    need,
    overlay_mount,
    overlay_refuses_upper_on_overlay,
    root,
    setpriv_drops_caps,
)
from tests.support.hubsim import EDGE_FILES
from tests.support.imagecheck import assert_models_match, unpack
from tests.support.models import make_model
from tests.support.procwatch import CmdlineWatcher

pytestmark = pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah not installed")

MIB = 1 << 20
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "org/tiny-model"


# -- helpers -------------------------------------------------------------------------------


def hub_plan(model: Path) -> Plan:
    """Plan the local dir, then present it as a Hub snapshot so the revision label is
    exercised too (the files are read from ``model`` all the same)."""
    plan = resolve(str(model), Selection(), threshold=THRESHOLD).plan
    snapshot = dataclasses.replace(
        plan.snapshot, kind="hub", location=REPO_ID, revision="main", commit=COMMIT
    )
    return make_plan(snapshot, THRESHOLD)


def skopeo_to_layout(src: str, dest: Path, *extra: str) -> Path:
    subprocess.run(
        ["skopeo", "copy", "-q", *extra, src, f"oci:{dest}:t"],
        check=True,
        capture_output=True,
    )
    return dest


def read_layout(layout: Path) -> tuple[dict, dict]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(layout, index["manifests"][0]["digest"]))
    return manifest, json.loads(blob(layout, manifest["config"]["digest"]))


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def layer_members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            body = tar.extractfile(member).read() if member.isfile() else None
            out.append((member, body))
    return out


class LogText(logging.Handler):
    """Collects every record of the tool's loggers, whatever handlers or propagation
    other tests (CLI setup) left on them: caplog relies on propagation to the root."""

    NAMES = ("modelcar", "modelcar_builder")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def clear(self) -> None:
        self.lines.clear()


@pytest.fixture
def logs() -> Iterator[LogText]:
    handler = LogText()
    saved = []
    for name in LogText.NAMES:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    yield handler
    for logger, level in saved:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # No credentials of the machine's user may leak into a test.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "MODELCAR_BUILDAH_STORAGE_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    yield


# -- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", ["1", "0"])
def test_round_trip_plain_registry(model, ws, tmp_path, registry, base_image, overlap, monkeypatch):
    monkeypatch.setenv(ENV_OVERLAP, overlap)
    plan = hub_plan(model)
    target = f"{registry.host}/models/tiny:v1"
    result = BuildahEngine().build(request_for(model, ws, target, base_image.ref, plan=plan))
    assert not list((ws / "tmp").glob("modelcar-layout-*"))

    assert result.engine == "buildah"
    assert result.base_layers == 1
    assert [layer.files for layer in result.layers] == [
        ("model-00001-of-00002.safetensors",),
        ("model-00002-of-00002.safetensors",),
        tuple(sorted(["a/config.json", "config.json", *EDGE_FILES])),
    ]
    assert all(layer.media_type.endswith("tar+gzip") for layer in result.layers)
    layout = skopeo_to_layout(f"docker://{target}", tmp_path / "out", "--src-tls-verify=false")
    manifest, config = read_layout(layout)
    # exactly base + one layer per planned layer
    assert len(manifest["layers"]) == 1 + len(plan.layers)
    assert [d["digest"] for d in manifest["layers"][1:]] == [x.digest for x in result.layers]
    assert config["rootfs"]["diff_ids"][1:] == [x.diff_id for x in result.layers]
    assert not config["config"].get("Entrypoint")
    assert not config["config"].get("Cmd")
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.source"] == f"https://huggingface.co/{REPO_ID}"
    assert labels["org.opencontainers.image.revision"] == COMMIT
    assert manifest["annotations"]["org.opencontainers.image.revision"] == COMMIT
    assert manifest["annotations"]["org.opencontainers.image.base.name"] == base_image.ref

    files: dict[str, bytes] = {}
    for index, desc in enumerate(manifest["layers"][1:]):
        names = set()
        for member, body in layer_members(blob(layout, desc["digest"])):
            assert (member.uid, member.gid) == (0, 0), member.name
            assert member.mtime == 0, member.name
            if member.isdir():
                assert member.mode & 0o7777 == 0o755, member.name
            else:
                assert member.isfile(), member.name
                assert member.mode & 0o7777 == 0o644, member.name
                files[member.name] = body
                names.add(member.name.removeprefix("models/"))
        assert names == set(result.layers[index].files)
    expected = {
        f"models/{p.relative_to(model)}": p.read_bytes() for p in model.rglob("*") if p.is_file()
    }
    assert files == expected  # a/config.json and config.json both kept, byte for byte


def test_layout_target_uncompressed(model, ws, tmp_path, base_image):
    out = tmp_path / "layout"
    result = BuildahEngine().build(
        request_for(model, ws, f"oci:{out}:v1", base_image.oci_ref, compression="none")
    )
    index = json.loads((out / "index.json").read_text())
    entry = index["manifests"][0]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    assert entry["digest"] == result.manifest_digest
    manifest, _ = read_layout(out)
    assert len(manifest["layers"]) == 1 + 3
    for layer in result.layers:
        assert layer.media_type == "application/vnd.oci.image.layer.v1.tar"
        assert layer.digest == layer.diff_id  # uncompressed: the blob is the diff


def test_zstd_is_a_usage_error_before_buildah_runs(model, ws, tmp_path, base_image):
    """Only the removed chain mode (``buildah push``) could write zstd, which KServe's
    fetch refuses anyway: a usage error naming gzip, before any buildah command."""
    out = tmp_path / "layout"
    with pytest.raises(UsageError) as caught:
        BuildahEngine().build(
            request_for(model, ws, f"oci:{out}:v1", base_image.oci_ref, compression="zstd")
        )
    assert caught.value.exit_code == 2 and "zstd" in caught.value.message
    assert "KServe" in caught.value.hint and "--compression gzip" in caught.value.hint
    assert not out.exists() and not (ws / "storage").exists()  # buildah never ran
    for fine in ("gzip", "none"):
        check_compression(fine)


# -- reproducibility and re-push -------------------------------------------------------------


def test_reproducible_and_repush_uploads_nothing(model, tmp_path, registry, base_image):
    target = f"{registry.host}/models/tiny:v1"
    first = BuildahEngine().build(request_for(model, tmp_path / "ws1", target, base_image.ref))
    assert first.bytes_uploaded == sum(x.size for x in first.layers) + base_layer_size(
        registry, "models/tiny", first
    )

    # Same workspace, same target: found whole in the registry, nothing uploaded.
    mark = registry.mark()
    again = BuildahEngine().build(request_for(model, tmp_path / "ws1", target, base_image.ref))
    assert again.manifest_digest == first.manifest_digest
    assert registry.upload_requests(since=mark) == []
    assert again.bytes_uploaded == 0
    assert not any(x.uploaded for x in again.layers)

    # Another repository: every layer the registry has is mounted (the workspace state
    # says where each blob went); only the 1 KB config is sent again.
    mark = registry.mark()
    other = f"{registry.host}/models/other:v1"
    moved = BuildahEngine().build(request_for(model, tmp_path / "ws1", other, base_image.ref))
    assert moved.manifest_digest == first.manifest_digest
    assert [b.digest for b in registry.committed_blobs(since=mark)] in (
        [],
        [moved.config_digest],
    )
    assert len(registry.mounts(since=mark)) == 1 + len(moved.layers)
    assert moved.bytes_uploaded == 0

    # A fresh workspace knows no earlier push: --mount-from names the source.
    mark = registry.mark()
    promoted = f"{registry.host}/models/promoted:v1"
    request = request_for(model, tmp_path / "ws3", promoted, base_image.ref)
    built = BuildahEngine().build(dataclasses.replace(request, mount_from=("models/tiny",)))
    assert built.manifest_digest == first.manifest_digest
    mounted = {e.query["mount"] for e in registry.mounts(since=mark)}
    assert mounted >= {x.digest for x in built.layers}
    assert [b.digest for b in registry.committed_blobs(since=mark)] in ([], [built.config_digest])

    # From scratch (new workspace: empty storage, empty caches): the very same digest.
    fresh = BuildahEngine().build(
        request_for(model, tmp_path / "ws2", f"{registry.host}/models/fresh:v1", base_image.ref)
    )
    assert fresh.manifest_digest == first.manifest_digest
    assert [x.digest for x in fresh.layers] == [x.digest for x in first.layers]


def base_layer_size(registry, repo: str, result: BuildResult) -> int:
    with RegistryClient(registry.host, tls_verify=False) as client:
        manifest = json.loads(client.get_manifest(repo, result.manifest_digest).body)
    return sum(d["size"] for d in manifest["layers"][: result.base_layers])


def test_per_layer_rerun_skips_layers_the_target_has(model, ws, tmp_path, base_image, logs):
    out = tmp_path / "layout"
    first = BuildahEngine().build(request_for(model, ws, f"oci:{out}:v1", base_image.oci_ref))
    # Nothing is kept in buildah's storage, and every per-layer layout is gone.
    assert storage_list(ws, "images") == []
    assert storage_list(ws, "containers") == []
    assert not list((ws / "tmp").glob("modelcar-layout-*"))

    logs.clear()
    second = BuildahEngine().build(request_for(model, ws, f"oci:{out}:v2", base_image.oci_ref))
    assert second.manifest_digest == first.manifest_digest
    assert all(f"layer-00{i} cached" in logs.text for i in range(3))
    assert "committing" not in logs.text
    assert not any(x.uploaded for x in second.layers)

    # A changed middle shard: only that layer is built again.
    logs.clear()
    (model / "model-00002-of-00002.safetensors").write_bytes(os.urandom(3 * MIB // 2))
    third = BuildahEngine().build(request_for(model, ws, f"oci:{out}:v3", base_image.oci_ref))
    assert "layer-000 cached" in logs.text and "layer-002 cached" in logs.text
    assert "committing layer-001" in logs.text and "committing layer-000" not in logs.text
    assert [x.uploaded for x in third.layers] == [False, True, False]
    assert third.layers[0].digest == first.layers[0].digest
    assert third.layers[1].digest != first.layers[1].digest

    # A crash between a commit and the upload leaves a container or image behind: the
    # next build clears the storage first, so the peak stays one layer's.
    ctr = subprocess.run(
        [*buildah_args(ws), "from", "--quiet", "scratch"], capture_output=True, text=True
    ).stdout.strip()
    assert ctr
    (model / "config.json").write_text('{"edited": true}')
    BuildahEngine().build(request_for(model, ws, f"oci:{out}:v4", base_image.oci_ref))
    assert storage_list(ws, "containers") == []


def test_compression_changes_the_blobs_not_the_layers(model, tmp_path, base_image):
    """The same tar bytes (diff_ids) whether a layer is sent gzip or uncompressed: the
    layer's content does not depend on how it is committed or sent."""
    results = {}
    for compression in ("gzip", "none"):
        out = tmp_path / f"layout-{compression}"
        request = request_for(
            model, tmp_path / f"ws-{compression}", f"oci:{out}:v1", base_image.oci_ref,
            compression=compression,
        )  # fmt: skip
        results[compression] = BuildahEngine().build(request)
    gzipped, plain = results["gzip"].layers, results["none"].layers
    assert [x.diff_id for x in gzipped] == [x.diff_id for x in plain]
    assert [x.digest for x in plain] == [x.diff_id for x in plain]
    assert not {x.digest for x in gzipped} & {x.digest for x in plain}


@pytest.mark.parametrize("overlap", ["1", "0"])
def test_per_layer_upload_failure_is_mapped_and_leaves_no_layouts(
    model, ws, registry, cutting_proxy, logs, monkeypatch, overlap
):
    """The first layer's upload dies mid-way and the registry stays away: with or without
    overlap, the same mapped error in the main thread, no layer built after the failure
    was seen, no cache entry for a layer the registry lacks, and no per-layer layout left."""
    monkeypatch.setenv(ENV_OVERLAP, overlap)
    proxy = cutting_proxy(("127.0.0.1", registry.port))
    proxy.cut_after(MIB)  # inside layer-000's PUT (a 1.5 MiB shard); then refused
    with pytest.raises(RegistryUnreachable) as caught:
        BuildahEngine().build(request_for(model, ws, f"{proxy.host}/models/tiny:v1", "scratch"))
    assert proxy.host in caught.value.message
    assert "sending layer-000" in logs.text
    assert "committing layer-002" not in logs.text
    assert not list((ws / "tmp").glob("modelcar-layout-*"))
    for state in (ws / "state").glob("*.json"):
        assert json.loads(state.read_text()).get("buildah", {}).get("per_layer", {}) == {}

    proxy.restore()  # the rerun completes
    result = BuildahEngine().build(
        request_for(model, ws, f"{proxy.host}/models/tiny:v1", "scratch")
    )
    assert all(x.uploaded for x in result.layers)
    assert not list((ws / "tmp").glob("modelcar-layout-*"))


def test_overlap_from_env():
    assert BuildahSettings.from_env({}).overlap is DEFAULT_OVERLAP
    assert BuildahSettings.from_env({ENV_OVERLAP: "0"}).overlap is False
    assert BuildahSettings.from_env({ENV_OVERLAP: " 1 "}).overlap is True
    with pytest.raises(UsageError):
        BuildahSettings.from_env({ENV_OVERLAP: "maybe"})


def buildah_args(ws: Path) -> list[str]:
    (driver,) = [d for d in ("vfs", "overlay") if (ws / "storage" / d).is_dir()]
    root = ["--root", str(ws / "storage" / driver), "--runroot", str(ws / "storage/run" / driver)]
    return ["buildah", *root, "--storage-driver", driver]


def storage_list(ws: Path, what: str) -> list[dict]:
    """``buildah images --all`` / ``containers`` of the engine's private storage."""
    args = ["images", "--all", "--json", "--no-trunc"] if what == "images" else [what, "--json"]
    proc = subprocess.run(
        [*buildah_args(ws), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout) or []


# -- credentials -----------------------------------------------------------------------------


def test_htpasswd_token_never_on_argv_or_in_logs(
    model, ws, tmp_path, registry_htpasswd, base_image, logs
):
    reg = registry_htpasswd
    base = base_image.copy_to(reg)  # the base pull needs the credentials too
    options = RegistryOptions(tls_verify=False, token_file=token_file(tmp_path / "t", reg.password))
    target = f"{reg.host}/models/tiny:v1"
    mark = reg.mark()
    with CmdlineWatcher(reg.password) as watcher:
        result = BuildahEngine().build(request_for(model, ws, target, base, options))
    assert watcher.seen == []
    # buildah commits to a local layout; our client talks to registries (no pull, no push)
    assert {"from", "copy", "commit"} <= watcher.subcommands
    assert not {"pull", "push", "login"} & watcher.subcommands
    assert reg.password not in logs.text
    assert "running " in logs.text and "buildah" in logs.text  # debug lines were captured
    creds = Credentials(reg.username, reg.password, "test")
    with RegistryClient(reg.host, creds, tls_verify=False) as client:
        info = client.head_manifest("models/tiny", "v1", accept=(OCI_MANIFEST,))
    assert info is not None and info.digest == result.manifest_digest
    assert not list((ws / "tmp").glob("modelcar-auth-*"))  # the authfile is gone
    # The base layer was mounted from base/busybox: only the model layers count.
    assert len(reg.mounts(since=mark)) == 1
    assert result.bytes_uploaded == sum(x.size for x in result.layers)


def test_wrong_token_is_registry_auth_error(model, ws, tmp_path, registry_htpasswd, base_image):
    reg = registry_htpasswd
    wrong = reg.password[::-1]
    options = RegistryOptions(tls_verify=False, token_file=token_file(tmp_path / "t", wrong))
    with pytest.raises(RegistryAuthError) as err:
        BuildahEngine().build(
            request_for(model, ws, f"{reg.host}/models/tiny:v1", base_image.oci_ref, options)
        )
    assert reg.host in err.value.message
    assert wrong not in err.value.message and wrong not in err.value.hint


def test_wrong_base_credentials_are_named(
    model, ws, tmp_path, registry, registry_htpasswd, base_image
):
    """The target is fine; the base's registry refuses our client's credentials (401)."""
    reg = registry_htpasswd
    base = base_image.copy_to(reg)
    wrong = "x" + reg.password[1:]
    authfile = tmp_path / "auth.json"
    dataclasses.replace(reg, password=wrong).write_authfile(authfile)
    options = RegistryOptions(tls_verify=False, authfile=str(authfile))
    with pytest.raises(RegistryAuthError) as err:
        BuildahEngine().build(
            request_for(model, ws, f"{registry.host}/models/tiny:v1", base, options)
        )
    message = err.value.message
    assert f"registry {reg.host} refused the credentials from authfile {authfile}" in message
    assert wrong not in message and reg.password not in message


def test_tls_registry_with_ca_file(model, ws, registry_tls, base_image):
    reg = registry_tls
    base = base_image.copy_to(reg)
    options = RegistryOptions(tls_verify=True, ca_file=str(reg.ca_file))
    result = BuildahEngine().build(
        request_for(model, ws, f"{reg.host}/models/tiny:v1", base, options)
    )
    with RegistryClient(reg.host, ca_file=str(reg.ca_file)) as client:
        info = client.head_manifest("models/tiny", "v1", accept=(OCI_MANIFEST,))
    assert info is not None and info.digest == result.manifest_digest


def test_tls_registry_without_ca_is_unreachable(model, ws, registry_tls, base_image):
    options = RegistryOptions(tls_verify=True)
    with pytest.raises(RegistryUnreachable):
        BuildahEngine().build(
            request_for(model, ws, f"{registry_tls.host}/m/t:v1", base_image.oci_ref, options)
        )


def test_base_connection_refused(model, ws, tmp_path):
    with pytest.raises(RegistryUnreachable) as err:
        BuildahEngine().build(
            request_for(model, ws, f"oci:{tmp_path / 'out'}:v1", "127.0.0.1:9/base/busybox:1")
        )
    assert "127.0.0.1:9" in err.value.message


# -- environment failures --------------------------------------------------------------------


def test_buildah_missing(model, ws, tmp_path, monkeypatch, base_image):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(EngineUnavailable) as err:
        BuildahEngine().build(request_for(model, ws, f"oci:{tmp_path}/o:v1", base_image.oci_ref))
    assert "buildah" in err.value.hint and "--engine native" in err.value.hint


def test_none_compression_to_registry_round_trip(model, ws, tmp_path, registry, base_image):
    """Uncompressed layers to a registry: each committed to an OCI layout in the
    workspace and sent by our own client; the layouts are gone afterwards."""
    target = f"{registry.host}/models/plain:v1"
    request = request_for(model, ws, target, base_image.ref, compression="none")
    result = BuildahEngine().build(request)
    assert len(result.layers) == 3
    for layer in result.layers:
        assert layer.media_type == "application/vnd.oci.image.layer.v1.tar"
        assert layer.digest == layer.diff_id and layer.uploaded
    with RegistryClient(registry.host, tls_verify=False) as client:
        manifest = json.loads(client.get_manifest("models/plain", "v1").body)
    assert [d["digest"] for d in manifest["layers"][1:]] == [x.digest for x in result.layers]
    img = unpack(f"docker://{target}", tmp_path / "check")
    files = {str(p.relative_to(model)): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    assert_models_match(img, files)
    assert not list((ws / "tmp").glob("modelcar-layout-*"))

    # Same content, same repository: nothing is sent again.
    mark = registry.mark()
    again = BuildahEngine().build(
        request_for(model, ws, target, base_image.ref, compression="none")
    )
    assert again.manifest_digest == result.manifest_digest
    assert registry.upload_requests(since=mark) == []


def test_auto_driver_is_overlay_where_it_mounts(model, ws, tmp_path, base_image, logs):
    out = tmp_path / "layout"
    BuildahEngine().build(request_for(model, ws, f"oci:{out}:v1", base_image.oci_ref))
    # Expected from an independent probe (mount(8) on the same filesystem), so the test
    # holds where overlay cannot mount, privileged or not.
    can_mount = overlay_mount() is None
    assert (overlay_unusable(ws / "storage") is None) is can_mount
    driver = "overlay" if can_mount else "vfs"
    assert (ws / "storage" / driver).is_dir()
    assert not (ws / "storage" / ("vfs" if can_mount else "overlay")).exists()
    assert not list((ws / "storage").glob("overlay-probe-*"))  # the probe cleaned up
    assert ("vfs storage, because" in logs.text) is not can_mount


def test_has_cap_sys_admin_reads_bit_21():
    assert has_cap_sys_admin("Name:\tx\nCapEff:\t000001fffeffffff\n")
    assert not has_cap_sys_admin("CapEff:\t00000000a80425fb\n")  # docker's default set
    assert not has_cap_sys_admin("nothing here\n")


_CHILD = """
import json, sys
from pathlib import Path
from modelcar_builder.engines.buildah import BuildahEngine
from modelcar_builder.errors import ModelcarError
from tests.support.build_requests import request_for
model, ws, out, base = sys.argv[1:5]
try:
    result = BuildahEngine().build(request_for(Path(model), Path(ws), f"oci:{out}:v1", base))
    print(json.dumps({"ok": result.manifest_digest, "layers": len(result.layers)}))
except ModelcarError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}))
"""
_NO_SETFCAP = ["--bounding-set=-sys_admin,-setfcap", "--inh-caps=-sys_admin,-setfcap"]


def build_without_caps(model: Path, ws: Path, out: Path, base: str, **env: str) -> dict:
    """Run the engine in a child that has neither CAP_SYS_ADMIN nor CAP_SETFCAP, like a
    pod without OpenShift's pipelines-scc."""
    argv = ["setpriv", *_NO_SETFCAP, sys.executable, "-c", _CHILD, str(model), str(ws)]
    proc = subprocess.run(
        [*argv, str(out), base],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_without_setfcap_buildah_defaults_hit_uid_map(model, tmp_path, base_image):
    """The seed's failure, for real: root without SYS_ADMIN re-execs into a user
    namespace and cannot write uid_map without SETFCAP."""
    need(root, setpriv_drops_caps)
    got = build_without_caps(
        model, tmp_path / "ws", tmp_path / "o", base_image.oci_ref,
        MODELCAR_BUILDAH_PRIVATE_STATE="0",
    )  # fmt: skip
    assert got.get("error") == "EnginePrivilegeError", got
    assert "uid_map" in got["message"]
    assert "SETFCAP" in got["hint"] and "--engine native" in got["hint"]


def test_without_setfcap_private_state_builds_with_vfs(model, tmp_path, base_image):
    """No container ever runs, so with the re-exec skipped vfs needs no SETFCAP."""
    need(root, setpriv_drops_caps)
    got = build_without_caps(model, tmp_path / "ws", tmp_path / "o", base_image.oci_ref)
    assert got.get("layers") == 3, got


def test_overlay_without_sys_admin_is_privilege_error(model, tmp_path, base_image):
    """The probe sees no CAP_SYS_ADMIN and says so before buildah runs, whatever
    containers/storage would have called it ("backing file system is unsupported")."""
    need(root, setpriv_drops_caps)
    got = build_without_caps(
        model, tmp_path / "ws", tmp_path / "o", base_image.oci_ref,
        MODELCAR_BUILDAH_STORAGE_DRIVER="overlay",
    )  # fmt: skip
    assert got.get("error") == "EnginePrivilegeError", got
    assert "CAP_SYS_ADMIN" in got["message"]
    for fix in (
        "SYS_ADMIN",
        "privileged SCC",
        "MODELCAR_BUILDAH_STORAGE_DRIVER=vfs",
        "--engine native",
    ):
        assert fix in got["hint"], got
    assert not (tmp_path / "ws" / "storage" / "overlay").exists()  # buildah never ran


def test_overlay_on_a_filesystem_without_overlay_support_is_storage_error(
    model, tmp_path, base_image, monkeypatch
):
    """With CAP_SYS_ADMIN, on a workspace where overlay cannot put its upper dir (here:
    on an overlay mount, like a workspace in a container's root fs): the new error 43."""
    need(root, overlay_refuses_upper_on_overlay)
    monkeypatch.setenv("MODELCAR_BUILDAH_STORAGE_DRIVER", "overlay")
    with mounted_overlay(tmp_path / "fs") as merged:
        ws = merged / "ws"
        with pytest.raises(StorageDriverUnsupported) as caught:
            BuildahEngine().preflight(Workspace(ws).ensure())
        assert "MODELCAR_BUILDAH_STORAGE_DRIVER=vfs" in caught.value.hint
        with pytest.raises(StorageDriverUnsupported):
            BuildahEngine().build(
                request_for(model, ws, f"oci:{tmp_path / 'o'}:v1", base_image.oci_ref)
            )
        assert not (ws / "storage" / "overlay").exists()  # buildah never ran
        assert not list((ws / "storage").glob("overlay-probe-*"))  # the probe cleaned up
    assert StorageDriverUnsupported.exit_code == 43


@pytest.mark.parametrize(
    ("mount_error", "sys_admin", "expected"),
    [
        (None, True, None),
        (None, False, None),  # a user namespace where the mount works: nothing to say
        ("overlay mount refused in /ws: Operation not permitted", False, EnginePrivilegeError),
        ("overlay mount refused in /ws: Invalid argument", True, StorageDriverUnsupported),
    ],
)
def test_overlay_verdict_decides_by_the_probe(mount_error, sys_admin, expected):
    error = overlay_verdict(mount_error, sys_admin)
    if expected is None:
        assert error is None
        return
    assert type(error) is expected
    assert mount_error in error.message
    assert "MODELCAR_BUILDAH_STORAGE_DRIVER=vfs" in error.hint and "--engine native" in error.hint
    assert error.exit_code == (41 if expected is EnginePrivilegeError else 43)


def test_buildah_mounts_here_unless_it_enters_its_own_user_namespace():
    private, shared = BuildahSettings(private_state=True), BuildahSettings(private_state=False)
    assert buildah_mounts_here(shared, root=True, sys_admin=True)
    assert buildah_mounts_here(private, root=True, sys_admin=False)  # markers stop the re-exec
    assert not buildah_mounts_here(shared, root=True, sys_admin=False)  # re-execs into userns
    assert not buildah_mounts_here(private, root=False, sys_admin=True)  # rootless buildah


# -- pure functions ----------------------------------------------------------------------------

UID_MAP = (
    'time="2024-01-01T00:00:00Z" level=error msg="writing \\"0 0 4294967295\\\\n\\" to '
    '/proc/12409/uid_map: write /proc/12409/uid_map: operation not permitted"\n'
    'time="2024-01-01T00:00:00Z" level=error msg="(Unable to determine exit status)"\n'
)


def test_classify_uid_map():
    err = classify_failure("pull", UID_MAP)
    assert isinstance(err, EnginePrivilegeError)
    assert "uid_map: operation not permitted" in err.message
    assert "Unable to determine" not in err.message


def test_classify_other_errors_name_the_step_and_the_line():
    other = classify_failure("copy", "noise\nError: no such file: /x\n")
    assert (
        isinstance(other, BuildFailed) and other.message == "buildah copy failed: no such file: /x"
    )


def test_secrets_are_scrubbed_from_classified_errors():
    secret = "eyJhbGciOiJSUzI1NiJ9.sekrit"
    err = classify_failure("push", f"Error: unauthorized: bad token {secret}", secrets=[secret])
    assert secret not in err.message
    assert scrub(f"a {secret} b", [secret]) == "a *** b"


STDERR_SAMPLES = [
    UID_MAP,
    "",
    "Error: no such file: /x\n",
    'time="x" level=fatal msg="kernel does not support overlay fs: \'overlay\' is not supported '
    'over extfs at \\"/ws/storage/overlay/overlay\\": backing file system is unsupported for '
    'this graph driver"\n',
    "Error: mount /ws/storage/overlay: operation not permitted\n",
    "Error: creating build container: unauthorized: authentication required\n",
    "Error: dial tcp 127.0.0.1:9: connect: connection refused\n",
    "Error: writing blob: storing blob to file: no space left on device\n",
    "(Unable to determine exit status)\n",
]


@pytest.mark.parametrize("stderr", STDERR_SAMPLES)
def test_classify_failure_always_gives_a_hint(stderr):
    err = classify_failure("commit", stderr)
    assert err.hint.strip(), f"{type(err).__name__} without a hint for {stderr!r}"


def test_classify_overlay_text_is_a_fallback_naming_both_fixes():
    """Without a probe (buildah in its own user namespace) the text cannot say privilege
    or filesystem: the hint names vfs, SYS_ADMIN and native."""
    err = classify_failure("rm", STDERR_SAMPLES[3])
    assert isinstance(err, BuildFailed) and "backing file system is unsupported" in err.message
    for fix in ("MODELCAR_BUILDAH_STORAGE_DRIVER=vfs", "SYS_ADMIN", "--engine native"):
        assert fix in err.hint


def test_meaningful_line_prefers_error_lines():
    text = 'time="x" level=warning msg="meh"\nSTEP 1\nError: the real reason\n'
    assert meaningful_line(text) == "the real reason"
    assert meaningful_line("just one line\n") == "just one line"


def test_estimate_per_layer_peak_is_a_few_copies_of_the_largest_layer():
    # the measured case: 4 x 512 MiB shards + small files. The container, buildah's temp
    # blob and the layout blob of the largest layer (0.75x measured, vfs and overlay
    # alike); independent of the number of layers.
    shards = [512, 512, 512, 512, 1]
    assert estimate_per_layer_peak(shards) / sum(shards) == pytest.approx(0.75, abs=0.01)
    assert estimate_per_layer_peak([512] * 30) == estimate_per_layer_peak(shards)
    assert estimate_per_layer_peak([]) == 0
    # overlap: one layout of another layer still uploading while the largest is committed
    assert estimate_per_layer_peak(shards, overlap=True) / sum(shards) == pytest.approx(
        1.0, abs=0.01
    )
    assert estimate_per_layer_peak([5, 1, 3], overlap=True) == 3 * 5 + 3
    assert estimate_per_layer_peak([7], overlap=True) == 21
    assert estimate_per_layer_peak([], overlap=True) == 0
