"""The engine registry answers for every engine through the Engine Protocol: no caller
needs an engine's class, and no attribute is read that the Protocol does not declare."""

from __future__ import annotations

import pytest

from modelcar_builder.engines.catalog import (
    DEFAULT_ENGINE,
    ENGINES,
    default_compression,
    disk_needed,
    make_engine,
)
from modelcar_builder.errors import UsageError
from modelcar_builder.plan import make_plan
from modelcar_builder.snapshot import FileEntry, Snapshot
from modelcar_builder.workspace import Workspace

MIB = 1 << 20


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_answers_the_protocol(name: str):
    engine = make_engine(name)
    assert engine.name == name
    assert isinstance(engine.builds_locally, bool)
    assert isinstance(engine.pushes_while_fetching, bool)
    files = (FileEntry("w.safetensors", 8 * MIB, sha256="0" * 64),)
    plan = make_plan(Snapshot("hub", "o/n", "main", "a" * 40, files), threshold=MIB)
    labels = engine.disk_needed(plan, {})
    assert labels and all(k == name or k.startswith(f"{name} ") for k in labels)
    assert all(n >= 0 for n in labels.values())


def test_only_the_workstation_engines_build_locally():
    local = {name for name in ENGINES if make_engine(name).builds_locally}
    assert local == {"podman", "docker"}
    assert DEFAULT_ENGINE == "native" and DEFAULT_ENGINE in ENGINES


def test_disk_needed_asks_every_engine():
    files = (FileEntry("w.safetensors", 8 * MIB, sha256="0" * 64),)
    plan = make_plan(Snapshot("hub", "o/n", "main", "a" * 40, files), threshold=MIB)
    assert {label.split(" ")[0] for label in disk_needed(plan, {})} == set(ENGINES)


def test_an_unknown_engine_is_a_usage_error_naming_the_choices():
    with pytest.raises(UsageError) as caught:
        make_engine("kaniko")
    assert "native, buildah, podman, docker" in (caught.value.hint or "")


def test_every_engine_says_which_compressions_it_writes_before_the_download():
    writes = {}
    for name in ENGINES:
        engine = make_engine(name)
        engine.check_compression(default_compression(name))  # its own default: accepted
        writes[name] = set()
        for compression in ("none", "gzip", "zstd"):
            try:
                engine.check_compression(compression)
            except UsageError:
                continue
            writes[name].add(compression)
    assert writes == {"native": {"none", "gzip"}, "buildah": {"none", "gzip"},
                      "podman": {"gzip", "zstd"}, "docker": {"gzip"}}  # fmt: skip


def test_the_native_preflight_says_how_it_runs(tmp_path):
    ready = make_engine("native").preflight(Workspace(tmp_path).ensure())
    assert "no daemon" in ready.message and not ready.warning
