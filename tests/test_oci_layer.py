"""oci/layer.py: deterministic tar streams, exact sizes, strict sources, gzip, annotations."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from modelcar_builder.errors import IntegrityError, UnsafeSource, UsageError
from modelcar_builder.oci import (
    ANNOTATION_FILE_SHA256,
    ANNOTATION_FILEPATH,
    ANNOTATION_FILES,
    ANNOTATION_TITLE,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
)
from modelcar_builder.oci.layer import (
    CHUNK_SIZE,
    DigestingIterator,
    LayerEntry,
    TarLayer,
    file_header,
    gzip_chunks,
    layer_annotations,
    layer_media_type,
)
from modelcar_builder.snapshot import FileEntry

GIB = 1024**3


def write(root: Path, rel: str, data: bytes) -> LayerEntry:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return LayerEntry(rel, len(data), path)


def stream_bytes(layer: TarLayer, open_entry=None) -> bytes:
    # bytes() each chunk: data chunks are views of a reused buffer.
    return b"".join(bytes(chunk) for chunk in layer.chunks(open_entry))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    contents = {
        "config.json": b'{"top": true}',
        "a/config.json": b'{"nested": true}',
        "a.txt": b"x" * 513,
        "weights/model-00001.safetensors": os.urandom(CHUNK_SIZE + 1000),
        "empty": b"",
        "d/e/f/deep.bin": os.urandom(512),
    }
    for rel, data in contents.items():
        write(tmp_path / "src", rel, data)
    return contents


def entries_of(root: Path, files: dict[str, bytes]) -> list[LayerEntry]:
    return [LayerEntry(rel, len(data), root / "src" / rel) for rel, data in files.items()]


def test_stream_has_expected_members_modes_owners(tmp_path: Path, files) -> None:
    layer = TarLayer(entries_of(tmp_path, files))
    data = stream_bytes(layer)
    assert len(data) == layer.size
    assert data.endswith(b"\0" * 1024) and len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == [
            "models",
            "models/a.txt",
            "models/a",
            "models/a/config.json",
            "models/config.json",
            "models/d",
            "models/d/e",
            "models/d/e/f",
            "models/d/e/f/deep.bin",
            "models/empty",
            "models/weights",
            "models/weights/model-00001.safetensors",
        ]
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)
            assert m.mode == (0o755 if m.isdir() else 0o644)
            if m.isfile():
                assert tar.extractfile(m).read() == files[m.name.removeprefix("models/")]
    assert layer.digest() == "sha256:" + hashlib.sha256(data).hexdigest()


def test_same_files_same_digest_whatever_order_or_mtime(tmp_path: Path, files) -> None:
    entries = entries_of(tmp_path, files)
    first = TarLayer(entries).digest()
    for entry in entries:
        os.utime(entry.source, (12345, 67890))
    assert TarLayer(list(reversed(entries))).digest() == first


def test_size_needs_no_file(tmp_path: Path) -> None:
    # Sources that do not exist: size must come from headers and declared sizes only.
    layer = TarLayer([LayerEntry("x/big.safetensors", 9 * GIB, tmp_path / "missing")])
    expected = 512 * 3 + 9 * GIB + 1024  # models/, models/x/, one file header
    pax = len(file_header("models/x/big.safetensors", 9 * GIB)) - 512
    assert pax > 0  # 9 GiB needs the PAX "size" record
    assert layer.size == expected + pax


def test_9_gib_header_reads_back() -> None:
    header = file_header("models/model-00001-of-00002.safetensors", 9 * GIB)
    with tarfile.open(fileobj=io.BytesIO(header + b"\0" * 1024)) as tar:
        member = tar.next()
        assert member is not None
        assert member.name == "models/model-00001-of-00002.safetensors"
        assert member.size == 9 * GIB
        assert member.mode == 0o644 and member.uid == 0 and member.gid == 0


def test_long_and_non_ascii_paths_round_trip(tmp_path: Path) -> None:
    long_rel = "/".join(["deeply-nested-directory"] * 6) + "/tokenizer.json"
    entries = [write(tmp_path, long_rel, b"long"), write(tmp_path, "modèle/日本.txt", b"u")]
    with tarfile.open(fileobj=io.BytesIO(stream_bytes(TarLayer(entries)))) as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(names[f"models/{long_rel}"]).read() == b"long"
        assert tar.extractfile(names["models/modèle/日本.txt"]).read() == b"u"


def test_open_entry_supplies_bytes() -> None:
    payload = {"a.bin": os.urandom(3000), "b/c.bin": b"hello"}
    layer = TarLayer(LayerEntry(p, len(d), None) for p, d in payload.items())

    class Trickle(io.RawIOBase):
        """Returns at most 7 bytes per read, like a slow socket."""

        def __init__(self, data: bytes):
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            chunk = self._data.read(min(7, len(b)))
            b[: len(chunk)] = chunk
            return len(chunk)

    data = stream_bytes(layer, lambda e: Trickle(payload[e.path]))
    assert len(data) == layer.size
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("models/a.bin").read() == payload["a.bin"]
        assert tar.extractfile("models/b/c.bin").read() == b"hello"
    # A stream without readinto works too.
    assert stream_bytes(layer, lambda e: io.BytesIO(payload[e.path])) == data


def test_short_and_long_sources_raise(tmp_path: Path) -> None:
    entry = write(tmp_path, "w.bin", b"0123456789")
    with pytest.raises(IntegrityError, match="ended after 10 of 11"):
        stream_bytes(TarLayer([LayerEntry("w.bin", 11, entry.source)]))
    with pytest.raises(IntegrityError, match="more than 9"):
        stream_bytes(TarLayer([LayerEntry("w.bin", 9, entry.source)]))
    with pytest.raises(IntegrityError):
        TarLayer([LayerEntry("w.bin", 11, None)]).digest(lambda e: io.BytesIO(b"short"))


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", ".wh.a"])
def test_unsafe_paths_refused(bad: str) -> None:
    with pytest.raises(UnsafeSource):
        TarLayer([LayerEntry(bad, 1, None)])


def test_duplicate_or_file_as_directory_refused() -> None:
    with pytest.raises(UnsafeSource):
        TarLayer([LayerEntry("a", 1, None), LayerEntry("a", 1, None)])
    with pytest.raises(UnsafeSource):
        TarLayer([LayerEntry("a", 1, None), LayerEntry("a/b", 1, None)])


def test_kept_chunks_fail_loudly(tmp_path: Path) -> None:
    entry = write(tmp_path, "f.bin", os.urandom(1000))
    kept = list(TarLayer([entry]).chunks())
    data_chunk = kept[2]  # models/ header, file header, file data
    assert isinstance(data_chunk, memoryview)
    with pytest.raises(ValueError, match="released"):
        bytes(data_chunk)


def test_digesting_iterator(tmp_path: Path, files) -> None:
    layer = TarLayer(entries_of(tmp_path, files))
    it = DigestingIterator(layer.chunks())
    with pytest.raises(RuntimeError):
        _ = it.digest
    consumed = sum(len(chunk) for chunk in it)
    assert it.size == consumed == layer.size
    assert it.digest == layer.digest()


def test_gzip_is_deterministic_and_round_trips(tmp_path: Path, files) -> None:
    layer = TarLayer(entries_of(tmp_path, files))
    raw = stream_bytes(layer)
    first = b"".join(gzip_chunks(layer.chunks(), level=1))
    assert first == b"".join(gzip_chunks(layer.chunks(), level=1))
    assert first[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"  # mtime 0, no name, OS 255
    assert gzip.decompress(first) == raw
    # diff_id and blob digest in one pass, as an engine does it.
    tar_side = DigestingIterator(layer.chunks())
    gz_side = DigestingIterator(gzip_chunks(tar_side))
    assert b"".join(gz_side) == b"".join(gzip_chunks(layer.chunks()))
    assert tar_side.digest == layer.digest()
    assert gz_side.digest != tar_side.digest


def test_media_types() -> None:
    assert layer_media_type("none") == MEDIA_TYPE_LAYER
    assert layer_media_type("gzip") == MEDIA_TYPE_LAYER_GZIP
    with pytest.raises(UsageError):  # a user's --compression: typed, with its hint
        layer_media_type("zstd")


def test_layer_annotations() -> None:
    sha = "ab" * 32
    one = layer_annotations([FileEntry("sub/model.safetensors", 10, sha256=sha)])
    assert one == {
        ANNOTATION_TITLE: "model.safetensors",
        ANNOTATION_FILEPATH: "/models/sub/model.safetensors",
        ANNOTATION_FILE_SHA256: sha,
    }
    no_sha = layer_annotations([FileEntry("config.json", 2, blob_id="c" * 40)])
    assert ANNOTATION_FILE_SHA256 not in no_sha
    many = layer_annotations([FileEntry("b.json", 1), FileEntry("a/c.json", 1)])
    assert many[ANNOTATION_TITLE] == "small-files"
    assert many[ANNOTATION_FILEPATH] == "/models"
    assert json.loads(many[ANNOTATION_FILES]) == ["a/c.json", "b.json"]


def test_chunks_from_any_offset_equals_the_stream_tail(tmp_path):
    from modelcar_builder.oci.layer import LayerEntry, TarLayer

    (tmp_path / "a").mkdir()
    sizes = {"a/x.bin": 1000, "b.bin": 513, "c.json": 7}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(bytes(range(256)) * (size // 256) + b"z" * (size % 256))
    layer = TarLayer(LayerEntry(n, s, tmp_path / n) for n, s in sizes.items())
    whole = b"".join(bytes(c) for c in layer.chunks())
    assert len(whole) == layer.size
    for offset in [
        0,
        1,
        511,
        512,
        1023,
        1536,
        2000,
        2560,
        layer.size - 1025,
        layer.size - 1,
        layer.size,
    ]:
        assert b"".join(bytes(c) for c in layer.chunks_from(offset)) == whole[offset:], offset
