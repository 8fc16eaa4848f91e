"""Pure logic: SOURCE parsing, file selection, path safety, layer planning."""

import io

import pytest

from modelcar_builder.errors import UnsafeSource, UsageError
from modelcar_builder.plan import make_plan
from modelcar_builder.progress import Progress
from modelcar_builder.selection import Selection, check_repo_path, select_files
from modelcar_builder.snapshot import FileEntry, Snapshot
from modelcar_builder.source import parse_source


@pytest.mark.parametrize(
    ("text", "kind", "location", "revision"),
    [
        ("hf://org/name", "hub", "org/name", None),
        ("hf://org/name@main", "hub", "org/name", "main"),
        ("org/name@refs/pr/3", "hub", "org/name", "refs/pr/3"),
        ("hf://Org-1/na.me_2@" + "a" * 40, "hub", "Org-1/na.me_2", "a" * 40),
    ],
)
def test_parse_hub_sources(text, kind, location, revision):
    spec = parse_source(text)
    assert (spec.kind, spec.location, spec.revision) == (kind, location, revision)


@pytest.mark.parametrize(
    "text", ["", "hf://org", "hf://a/b/c", "org/name@", "s3://bucket/x", "a/../b"]
)
def test_malformed_sources_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_source(text)


def test_existing_directory_wins_over_repo_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    spec = parse_source("org/name")
    assert spec.kind == "local"
    assert spec.location == str(tmp_path / "org" / "name")


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", ""])
def test_unsafe_paths_refused(path):
    with pytest.raises(UnsafeSource):
        check_repo_path(path)


def _files(*names):
    return [FileEntry(n, 10) for n in names]


def test_duplicate_formats_skipped_when_safetensors_present():
    files = _files(
        "model.safetensors",
        "pytorch_model.bin",
        "pytorch_model-00001-of-00002.bin",
        "consolidated.pth",
        "tf_model.h5",
        "flax_model.msgpack",
        "original/params.json",
        ".gitattributes",
        "config.json",
        "sub/pytorch_model.bin",
    )
    kept, skipped = select_files(files, Selection())
    assert [f.path for f in kept] == ["config.json", "model.safetensors"]
    reasons = {s.path: s.reason for s in skipped}
    assert reasons[".gitattributes"] == "git metadata"
    assert "duplicate weight format" in reasons["pytorch_model.bin"]
    assert "duplicate weight format" in reasons["sub/pytorch_model.bin"]
    assert len(skipped) == 8


def test_bin_kept_without_safetensors_and_all_files_keeps_everything():
    kept, _ = select_files(_files("pytorch_model.bin", "config.json"), Selection())
    assert [f.path for f in kept] == ["config.json", "pytorch_model.bin"]
    files = _files("model.safetensors", "pytorch_model.bin", ".gitattributes")
    kept, skipped = select_files(files, Selection(all_files=True))
    assert len(kept) == 3 and not skipped


def test_include_and_exclude():
    files = _files("a/config.json", "config.json", "model.safetensors", "README.md")
    kept, skipped = select_files(files, Selection(include=("*.json",)))
    assert [f.path for f in kept] == ["a/config.json", "config.json"]
    assert {s.reason for s in skipped} == {"not matched by --include"}
    kept, _ = select_files(files, Selection(exclude=("a/*", "README.md")))
    assert [f.path for f in kept] == ["config.json", "model.safetensors"]


def _snapshot(files):
    return Snapshot("local", "/m", None, None, tuple(files))


def test_plan_small_files_together_large_alone_deterministic():
    files = [
        FileEntry("model-00002.safetensors", 200),
        FileEntry("config.json", 5),
        FileEntry("a/config.json", 6),
        FileEntry("model-00001.safetensors", 100),
    ]
    plan = make_plan(_snapshot(files), threshold=100)
    assert [[f.path for f in layer.files] for layer in plan.layers] == [
        ["model-00001.safetensors"],
        ["model-00002.safetensors"],
        ["a/config.json", "config.json"],  # last: config edits leave the shards cached
    ]
    assert [layer.name for layer in plan.layers] == ["layer-000", "layer-001", "layer-002"]
    again = make_plan(_snapshot(reversed(files)), threshold=100)
    assert again.layers == plan.layers


def test_plan_without_small_files():
    plan = make_plan(_snapshot([FileEntry("w.safetensors", 500)]), threshold=100)
    assert len(plan.layers) == 1 and plan.layers[0].files[0].path == "w.safetensors"


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_plain_lines_every_interval_with_rate_and_eta():
    out, clock = io.StringIO(), _Clock()
    p = Progress("fetch", 100 * 1024 * 1024, stream=out, interval=5, clock=clock)
    for _ in range(10):
        clock.t += 1
        p.advance(5 * 1024 * 1024)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at t=5 and t=10 only
    assert lines[-1] == "fetch: 50.0 MiB / 100.0 MiB (50%), 5.0 MiB/s, ETA 10s"
    assert "\r" not in out.getvalue()


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_one_line_on_a_tty():
    out, clock = _Tty(), _Clock()
    p = Progress("push", 10 * 1024 * 1024, stream=out, clock=clock)
    for _ in range(4):
        clock.t += 1
        p.advance(1024 * 1024)
    p.close()
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 5 and text.endswith("\n")
    assert "push: 4.0 MiB / 10.0 MiB (40%), 1.0 MiB/s, ETA 6s" in text


def test_progress_to_a_closed_stream_is_silent():
    """A download the build gave up on may still report after stderr is gone: its
    progress line is dropped, not an error (it once killed that thread with ValueError)."""
    out, clock = io.StringIO(), _Clock()
    p = Progress("fetch", 10 * 1024 * 1024, stream=out, interval=1, clock=clock)
    out.close()
    clock.t += 2
    p.advance(1024 * 1024)  # an interval has passed: it tries to write
    p.close()
    assert out.closed


def test_created_timestamp_is_fixed_unless_source_date_epoch():
    from modelcar_builder.settings import created_timestamp

    assert created_timestamp({}) == "1970-01-01T00:00:00Z"
    assert created_timestamp({"SOURCE_DATE_EPOCH": "1700000000"}) == "2023-11-14T22:13:20Z"
    with pytest.raises(UsageError):
        created_timestamp({"SOURCE_DATE_EPOCH": "yesterday"})


def test_disk_needed_per_engine():
    from modelcar_builder.engines.catalog import disk_needed

    files = [FileEntry(f"s{i}.safetensors", 100 * 2**20, sha256="0" * 64) for i in range(4)]
    plan = make_plan(Snapshot("hub", "o/n", "main", "a" * 40, tuple(files)), threshold=2**20)
    model = 400 * 2**20
    needed = disk_needed(plan, {})
    assert needed["native"] == model and needed["native --stream"] == 0
    # buildah: the fetched model plus a few copies of the largest layer only, on any driver
    assert model < needed["buildah"] <= model + 4 * 100 * 2**20
    # podman and docker answer too (the registry asks every engine): podman's store holds
    # the layers once more; the docker daemon's store is not on the workspace
    assert needed["podman"] == 2 * model and needed["docker"] == model
    assert set(needed) == {"native", "native --stream", "buildah", "podman", "docker"}
