"""verify/layertar.py on layer tars made here: how `verify --deep` finds /models in a layer
without our annotation (a Containerfile build's COPY, a base layer), whiteouts, hard links,
and the 0:0 / 0644 / 0755 every engine promises."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from modelcar_builder.errors import VerificationFailed
from modelcar_builder.verify.layertar import LayerFiles, union, walk_layer


def entry(name: str, data: bytes | None = None, **attrs) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.mode = 0o755 if data is None else 0o644
    info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
    info.size = 0 if data is None else len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def layer_tar(*entries: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    out.seek(0)
    return out


def walk(number: int, *entries, annotated: bool = False) -> LayerFiles:
    stream = layer_tar(*entries)
    return walk_layer(stream, number, annotated, frozenset(), f"layer {number}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_base_layer_is_no_model_layer_even_with_an_empty_models_dir_of_its_own():
    base = walk(1, entry("bin"), entry("bin/sh", b"\x7fELF", mode=0o755),
                entry("etc/passwd", b"root:x:0:0", uid=0), entry("models", mode=0o775))  # fmt: skip
    assert base.files == [] and base.removed == [] and not base.touches_models


def test_a_containerfile_copy_layer_is_found_by_its_tar():
    data = b"weights" * 100
    layer = walk(2, entry("models"), entry("models/a"), entry("models/a/w.bin", data),
                 entry("models/top.json", b"{}"))  # fmt: skip
    assert layer.touches_models
    assert {(f.path, f.layer, f.size, f.sha256) for f in layer.files} == {
        ("a/w.bin", 2, len(data), sha(data)), ("top.json", 2, 2, sha(b"{}"))
    }  # fmt: skip


def test_docker_tar_names_and_a_hard_link_in_the_same_layer():
    # dockerd's tar writer: "./" prefixes and uname "root" (the ids are what count).
    layer = walk(2, entry("./models/", uname="root", gname="root"),
                 entry("./models/x", b"abc", uname="root", gname="root"),
                 entry("./models/y", None, type=tarfile.LNKTYPE, linkname="./models/x", size=0,
                       mode=0o644))  # fmt: skip
    assert {f.path: f.sha256 for f in layer.files} == {"x": sha(b"abc"), "y": sha(b"abc")}


def test_whiteouts_remove_what_the_layers_below_put_under_models():
    lower = walk(1, entry("models/a", b"1"), entry("models/d/b", b"2"), entry("models/e/c", b"3"))
    upper = walk(2, entry("models/.wh.a", b""), entry("models/d/.wh..wh..opq", b""),
                 entry("models/d/new", b"4"))  # fmt: skip
    assert sorted(upper.removed) == ["a", "d"]
    found, problems = union([lower, upper])
    assert sorted(found) == ["d/new", "e/c"] and problems == []
    assert found["d/new"].layer == 2
    gone = walk(3, entry(".wh.models", b""))
    assert union([lower, upper, gone])[0] == {}


def test_a_file_two_layers_add_without_a_whiteout_is_a_problem():
    found, problems = union([walk(1, entry("models/a", b"1")), walk(2, entry("models/a", b"2"))])
    assert problems == ["models/a is in layers 1 and 2"]
    assert found["a"].sha256 == sha(b"2")  # what a runtime would see: the upper one


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (entry("models/w", b"x", mode=0o600), "models/w has mode 0600, expected 0644"),
        (entry("models/w", b"x", uid=1000), "models/w is owned by 1000:0, every engine writes 0:0"),
        (entry("models/d", mode=0o700), "models/d has mode 0700, expected 0755"),
        (entry("models/l", None, type=tarfile.SYMTYPE, linkname="/etc/passwd", mode=0o777),
         "models/l is not a regular file or directory"),
        (entry("models/h", None, type=tarfile.LNKTYPE, linkname="bin/sh", size=0, mode=0o644),
         "models/h is a hard link to bin/sh"),
    ],
)  # fmt: skip
def test_what_no_engine_writes_under_models_is_refused(bad, message):
    with pytest.raises(VerificationFailed, match="layer 2: " + message.replace("(", r"\(")):
        walk(2, entry("models"), entry("models/ok", b"1"), bad)


def test_an_annotated_layer_holds_models_and_nothing_else():
    with pytest.raises(VerificationFailed, match="etc/x lies outside /models"):
        walk(3, entry("models/a", b"1"), entry("etc/x", b"2"), annotated=True)
    # Our tar writer writes no whiteout: a file of that name is a file (and not expected).
    ours = walk(3, entry("models/.wh.a", b""), annotated=True)
    assert ours.removed == [] and [f.path for f in ours.files] == [".wh.a"]
