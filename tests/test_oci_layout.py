"""oci/image.py + oci/layout.py, checked with the real readers: skopeo and umoci."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelcar_builder.errors import BlobDigestMismatch, IntegrityError, PlatformNotFound
from modelcar_builder.oci import (
    ANNOTATION_CREATED,
    ANNOTATION_FILE_SHA256,
    ANNOTATION_FILEPATH,
    ANNOTATION_REF_NAME,
    ANNOTATION_REVISION,
    ANNOTATION_SOURCE,
    ANNOTATION_TITLE,
    ANNOTATION_TOOL_VERSION,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
)
from modelcar_builder.oci.image import (
    BaseImage,
    Descriptor,
    base_image,
    build_config,
    build_manifest,
    canonical_json,
    image_annotations,
)
from modelcar_builder.oci.layer import (
    DigestingIterator,
    TarLayer,
    gzip_chunks,
    layer_annotations,
    layer_media_type,
)
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.plan import make_plan
from modelcar_builder.snapshot import FileEntry, Snapshot

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="needs skopeo and umoci"
)

CREATED = "2024-01-02T03:04:05Z"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL_FILES = {
    "config.json": b'{"model_type": "top"}\n',
    "a/config.json": b'{"model_type": "nested"}\n',
    "tokenizer/tokenizer.json": b'{"vocab": {}}\n' * 50,
    "model-00001-of-00002.safetensors": os.urandom(3 * 1024 * 1024 + 17),
    "sub/dir/model-00002-of-00002.safetensors": os.urandom(2 * 1024 * 1024),
}
THRESHOLD = 1024 * 1024


def run(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model")
    for rel, data in MODEL_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def umoci_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base image made by umoci (not by us): one file layer, Env, WorkingDir, a label and
    an Entrypoint + Cmd that our config must drop."""
    work = tmp_path_factory.mktemp("base")
    rootfs = work / "rootfs" / "bin"
    rootfs.mkdir(parents=True)
    (rootfs / "hello").write_bytes(b"#!/bin/sh\necho hello\n")
    layout = work / "layout"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:latest")
    run("umoci", "insert", "--rootless", "--image", f"{layout}:latest", str(work / "rootfs"), "/")
    run(
        "umoci", "config", "--image", f"{layout}:latest",
        "--config.entrypoint", "/bin/sh", "--config.cmd", "-c",
        "--config.env", "FOO=bar", "--config.workingdir", "/w",
        "--config.label", "base.label=kept", "--config.label", ANNOTATION_SOURCE + "=base",
        "--os", "linux", "--architecture", "amd64",
    )  # fmt: skip
    return layout


@dataclass
class Built:
    layout: OciLayout
    manifest: Descriptor
    tag: str


def snapshot_of(model_dir: Path) -> Snapshot:
    files = tuple(
        FileEntry(rel, len(data), sha256=hashlib.sha256(data).hexdigest())
        for rel, data in MODEL_FILES.items()
    )
    return Snapshot("hub", "org/model", "main", COMMIT, files)


def build_image(
    model_dir: Path,
    out: Path,
    tag: str = "v1",
    base: tuple[BaseImage, OciLayout] | None = None,
    compression: str = "none",
) -> Built:
    """What an engine does: plan → one streamed pass per layer → config → manifest → tag."""
    snapshot = snapshot_of(model_dir)
    layout = OciLayout(out).init()
    descriptors: list[Descriptor] = []
    diff_ids: list[str] = []
    comments: list[str] = []
    for planned in make_plan(snapshot, threshold=THRESHOLD).layers:
        tar = TarLayer.from_files(planned.files, model_dir)
        raw = DigestingIterator(tar.chunks())
        blob = gzip_chunks(raw) if compression == "gzip" else raw
        digest, size = layout.write_blob(blob)
        if compression == "none":
            assert (digest, size) == (raw.digest, tar.size)
        diff_ids.append(raw.digest)
        comments.append(f"models: {planned.name}")
        descriptors.append(
            Descriptor(
                layer_media_type(compression), digest, size, layer_annotations(planned.files)
            )
        )
    base_config = None
    annotations = image_annotations(snapshot.source_url, COMMIT, CREATED, "0.1.0")
    if base is not None:
        base_img, base_layout = base
        for layer in base_img.layers:
            layout.copy_blob_from(base_layout, layer.digest)
        descriptors = list(base_img.layers) + descriptors
        base_config = base_img.config
        annotations = image_annotations(
            snapshot.source_url, COMMIT, CREATED, "0.1.0",
            base_name=base_img.name, base_digest=base_img.manifest_digest,
        )  # fmt: skip
    config = build_config(base_config, diff_ids, annotations, CREATED, comments)
    config_digest, config_size = layout.write_blob_bytes(config)
    manifest = build_manifest(
        Descriptor(MEDIA_TYPE_CONFIG, config_digest, config_size), descriptors, annotations
    )
    return Built(layout, layout.add_manifest(manifest, MEDIA_TYPE_MANIFEST, tag), tag)


def skopeo_inspect(built: Built, *flags: str) -> dict:
    return json.loads(run("skopeo", "inspect", *flags, f"oci:{built.layout.path}:{built.tag}"))


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", str(bundle))
    return bundle / "rootfs"


def tar_members(layout: OciLayout, manifest: dict) -> Iterator[tarfile.TarInfo]:
    for layer in manifest["layers"]:
        with tarfile.open(layout.blob_path(layer["digest"]), "r:*") as tar:
            yield from tar.getmembers()


def assert_models_tree(rootfs: Path) -> None:
    found = {}
    for path in (rootfs / "models").rglob("*"):
        rel = path.relative_to(rootfs / "models").as_posix()
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o755, rel
        else:
            assert path.is_file() and not path.is_symlink(), rel
            assert mode == 0o644, rel
            found[rel] = path.read_bytes()
    assert found == MODEL_FILES  # bytes and paths, subdirectories kept: no flattening
    assert stat.S_IMODE((rootfs / "models").stat().st_mode) == 0o755


def assert_layout_modes(path: Path) -> None:
    for item in [path, *path.rglob("*")]:
        mode = stat.S_IMODE(item.stat().st_mode)
        assert mode == (0o755 if item.is_dir() else 0o644), item


def test_image_without_base(model_dir: Path, tmp_path: Path) -> None:
    old_umask = os.umask(0o077)  # prove that modes never come from the umask
    try:
        built = build_image(model_dir, tmp_path / "layout")
    finally:
        os.umask(old_umask)
    assert_layout_modes(built.layout.path)
    assert json.loads((built.layout.path / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"
    }

    inspected = skopeo_inspect(built)
    assert inspected["Digest"] == built.manifest.digest
    assert inspected["Architecture"] == "amd64" and inspected["Os"] == "linux"
    assert inspected["Labels"][ANNOTATION_REVISION] == COMMIT

    config = skopeo_inspect(built, "--config")
    assert "Entrypoint" not in config["config"] and "Cmd" not in config["config"]
    assert len(config["rootfs"]["diff_ids"]) == len(config["history"]) == 3

    manifest = json.loads(run("skopeo", "inspect", "--raw", f"oci:{built.layout.path}:v1"))
    assert manifest["mediaType"] == MEDIA_TYPE_MANIFEST
    assert manifest["annotations"][ANNOTATION_SOURCE] == "https://huggingface.co/org/model"
    assert manifest["annotations"][ANNOTATION_CREATED] == CREATED
    assert manifest["annotations"][ANNOTATION_TOOL_VERSION] == "0.1.0"
    shard1, shard2, small = manifest["layers"]
    assert all(layer["mediaType"] == MEDIA_TYPE_LAYER for layer in manifest["layers"])
    assert small["annotations"][ANNOTATION_TITLE] == "small-files"
    assert shard2["annotations"][ANNOTATION_FILEPATH] == (
        "/models/sub/dir/model-00002-of-00002.safetensors"
    )
    assert (
        shard1["annotations"][ANNOTATION_FILE_SHA256]
        == hashlib.sha256(MODEL_FILES["model-00001-of-00002.safetensors"]).hexdigest()
    )

    for member in tar_members(built.layout, manifest):
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.name == "models" or member.name.startswith("models/")

    rootfs = umoci_unpack(built.layout.path, "v1", tmp_path / "bundle")
    assert sorted(p.name for p in rootfs.iterdir()) == ["models"]
    assert_models_tree(rootfs)


def test_same_inputs_same_digest(model_dir: Path, tmp_path: Path) -> None:
    first = build_image(model_dir, tmp_path / "one")
    second = build_image(model_dir, tmp_path / "two")
    assert first.manifest.digest == second.manifest.digest
    # Rebuilding into the same layout keeps one entry per tag.
    again = build_image(model_dir, tmp_path / "one")
    assert again.manifest.digest == first.manifest.digest
    assert len(again.layout.index()["manifests"]) == 1


def test_image_on_umoci_base(model_dir: Path, umoci_base: Path, tmp_path: Path) -> None:
    base_layout = OciLayout(umoci_base)
    base = base_layout.read_image("latest", name="example.com/base:latest")
    built = build_image(model_dir, tmp_path / "layout", base=(base, base_layout))

    config = skopeo_inspect(built, "--config")
    runtime = config["config"]
    assert "Entrypoint" not in runtime and "Cmd" not in runtime
    assert runtime["Env"] == ["FOO=bar"] and runtime["WorkingDir"] == "/w"
    assert runtime["Labels"]["base.label"] == "kept"
    assert runtime["Labels"][ANNOTATION_SOURCE] == "https://huggingface.co/org/model"
    assert config["rootfs"]["diff_ids"][:1] == base.diff_ids
    assert len(config["rootfs"]["diff_ids"]) == 4
    non_empty = [h for h in config["history"] if not h.get("empty_layer")]
    assert len(non_empty) == 4

    manifest = skopeo_inspect(built, "--raw")
    assert manifest["layers"][0]["mediaType"] == MEDIA_TYPE_LAYER_GZIP
    assert manifest["annotations"]["org.opencontainers.image.base.digest"] == (base.manifest_digest)
    rootfs = umoci_unpack(built.layout.path, "v1", tmp_path / "bundle")
    assert (rootfs / "bin" / "hello").read_bytes().startswith(b"#!/bin/sh")
    assert_models_tree(rootfs)


def test_docker_base_layers_keep_their_digest(
    model_dir: Path, umoci_base: Path, tmp_path: Path
) -> None:
    # skopeo writes a Docker schema 2 manifest (docker gzip layer type) into a dir: copy.
    docker_dir = tmp_path / "docker"
    run(
        "skopeo", "copy", "--insecure-policy", "--format", "v2s2",
        f"oci:{umoci_base}:latest", f"dir:{docker_dir}",
    )  # fmt: skip
    manifest_bytes = (docker_dir / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["layers"][0]["mediaType"] == DOCKER_LAYER_GZIP
    config_bytes = (docker_dir / manifest["config"]["digest"].split(":")[1]).read_bytes()
    digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    base = base_image("docker-base", digest, manifest, config_bytes)
    assert [layer.media_type for layer in base.layers] == [MEDIA_TYPE_LAYER_GZIP]
    assert [layer.digest for layer in base.layers] == [
        layer["digest"] for layer in manifest["layers"]
    ]

    # Put the docker blobs into a layout and build on top: skopeo and umoci accept the
    # same bytes under the OCI type.
    staging = OciLayout(tmp_path / "staging").init()
    for layer in base.layers:
        with open(docker_dir / layer.digest.split(":")[1], "rb") as blob:
            staging.write_blob(iter(lambda b=blob: b.read(1 << 20), b""), layer.digest)
    built = build_image(model_dir, tmp_path / "layout", base=(base, staging))
    skopeo_inspect(built)
    rootfs = umoci_unpack(built.layout.path, "v1", tmp_path / "bundle")
    assert (rootfs / "bin" / "hello").exists()
    assert_models_tree(rootfs)


def test_gzip_layers_survive_skopeo_copy(model_dir: Path, tmp_path: Path) -> None:
    built = build_image(model_dir, tmp_path / "gz", compression="gzip")
    manifest = skopeo_inspect(built, "--raw")
    assert {layer["mediaType"] for layer in manifest["layers"]} == {MEDIA_TYPE_LAYER_GZIP}
    copy = tmp_path / "copy"
    run(
        "skopeo", "copy", "--insecure-policy",
        f"oci:{built.layout.path}:v1", f"oci:{copy}:v1",
    )  # fmt: skip
    copied = OciLayout(copy)
    descriptor, _ = copied.read_manifest("v1")
    assert descriptor.digest == built.manifest.digest  # nothing rewritten on the way
    assert_models_tree(umoci_unpack(copy, "v1", tmp_path / "bundle"))


def test_read_image_selects_platform(umoci_base: Path, tmp_path: Path) -> None:
    source = OciLayout(umoci_base)
    amd64, _ = source.read_manifest("latest")
    layout = OciLayout(tmp_path / "multi").init()
    for digest in [amd64.digest, *(d.digest for d in source.read_image("latest").layers)]:
        layout.copy_blob_from(source, digest)
    layout.copy_blob_from(source, source.read_image("latest").config_descriptor.digest)
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": "sha256:" + "0" * 64,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm64"},
            },
            {**amd64.to_dict(), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    layout.add_manifest(canonical_json(index), MEDIA_TYPE_INDEX, "multi")
    image = layout.read_image("multi", platform=("linux", "amd64"))
    assert image.manifest_digest == amd64.digest
    with pytest.raises(PlatformNotFound) as failure:
        layout.read_image("multi", platform=("linux", "s390x"))
    assert "linux/amd64" in failure.value.hint and "linux/arm64" in failure.value.hint


def test_config_drops_entrypoint_and_checks_platform() -> None:
    base = {
        "architecture": "arm64",
        "os": "linux",
        "config": {"Entrypoint": ["/x"], "Cmd": ["y"], "Volumes": {"/models": {}}, "User": "1"},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    config = json.loads(
        build_config(base, ["sha256:" + "a" * 64], {}, CREATED, "c", ("linux", "arm64"))
    )
    assert config["config"] == {"User": "1"}
    assert config["architecture"] == "arm64"
    with pytest.raises(PlatformNotFound):
        build_config(base, [], {}, CREATED, "c", ("linux", "amd64"))
    # Canonical: label order in, same bytes out.
    one = build_config(None, [], {"b": "2", "a": "1"}, CREATED, "c")
    two = build_config(None, [], {"a": "1", "b": "2"}, CREATED, "c")
    assert one == two and b" " not in one


def test_write_blob_verifies_and_skips(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "l").init()
    digest, size = layout.write_blob([b"abc", memoryview(b"def")])
    assert (digest, size) == ("sha256:" + hashlib.sha256(b"abcdef").hexdigest(), 6)

    def must_not_run() -> Iterator[bytes]:
        raise AssertionError("an existing blob must not be streamed again")
        yield b""

    assert layout.write_blob(must_not_run(), expected_digest=digest) == (digest, 6)
    with pytest.raises(BlobDigestMismatch):
        layout.write_blob([b"other"], expected_digest="sha256:" + "f" * 64)
    assert issubclass(BlobDigestMismatch, IntegrityError)
    assert sorted(p.name for p in layout.blobs.iterdir()) == [digest.split(":")[1]]
    with pytest.raises(ValueError):
        layout.blob_path("sha256:../../etc/passwd")


def test_add_manifest_replaces_tag(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "l").init()
    layout.add_manifest(b'{"schemaVersion":2,"n":1}', tag="t")
    layout.add_manifest(b'{"schemaVersion":2,"n":2}', tag="other")
    second = layout.add_manifest(b'{"schemaVersion":2,"n":3}', tag="t")
    entries = layout.index()["manifests"]
    assert [e["annotations"][ANNOTATION_REF_NAME] for e in entries] == ["other", "t"]
    descriptor, document = layout.read_manifest("t")
    assert descriptor.digest == second.digest and document["n"] == 3
    with pytest.raises(KeyError):
        layout.read_manifest("missing")
