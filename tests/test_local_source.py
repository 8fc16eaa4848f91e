"""Local directories as sources: used in place, subdirectories kept, links checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

from modelcar_builder import errors
from tests.support.clitools import run
from tests.support.models import SMALL_MODEL, make_model


def plan_paths(res) -> list[str]:
    doc = json.loads(res.out)
    return [f["path"] for layer in doc["layers"] for f in layer["files"]]


def test_local_plan_keeps_subdirectories(capsys, tmp_path):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    res = run(capsys, "plan", str(model), "--json")
    assert res.code == 0, res.err
    assert sorted(plan_paths(res)) == ["a/config.json", "config.json", "model.safetensors"]
    assert json.loads(res.out)["commit"] is None


def test_symlink_leaving_the_directory_is_refused(capsys, tmp_path):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    (tmp_path / "secret").write_text("outside")
    os.symlink(tmp_path / "secret", model / "leak.json")
    res = run(capsys, "plan", str(model))
    assert res.code == errors.UnsafeSource.exit_code
    assert "points outside the source directory" in res.err and "Traceback" not in res.err


def test_symlinks_inside_the_directory_are_followed(capsys, tmp_path):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    os.symlink("config.json", model / "alias.json")
    os.symlink("a", model / "b")
    res = run(capsys, "plan", str(model), "--json")
    assert res.code == 0, res.err
    assert sorted(plan_paths(res)) == [
        "a/config.json", "alias.json", "b/config.json", "config.json", "model.safetensors",
    ]  # fmt: skip


def test_local_prepare_uses_files_in_place(capsys, tmp_path):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    res = run(capsys, "prepare", str(model), "--workspace", str(tmp_path / "ws"))
    assert res.code == 0, res.err
    assert not any((tmp_path / "ws" / "files").iterdir())  # no download, no copy
    linked = Path(res.last_line) / "layer-000" / "model.safetensors"
    assert os.path.samefile(linked, model / "model.safetensors")


def test_file_with_other_mode_is_copied_not_chmodded(capsys, tmp_path):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    os.chmod(model / "config.json", 0o600)
    res = run(capsys, "prepare", str(model), "--workspace", str(tmp_path / "ws"))
    assert res.code == 0, res.err
    assert (model / "config.json").stat().st_mode & 0o777 == 0o600  # the user's file untouched
    copy = Path(res.last_line) / "layer-000" / "config.json"
    assert copy.stat().st_mode & 0o777 == 0o644


def test_empty_selection_is_a_clear_error(capsys, tmp_path):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    res = run(capsys, "plan", str(model), "--include", "*.gguf")
    assert res.code == errors.EmptySelection.exit_code
    assert "no files selected" in res.err and "hint:" in res.err


def test_options_read_modelcar_environment(capsys, tmp_path, monkeypatch):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    monkeypatch.setenv("MODELCAR_EXCLUDE", "a/*")
    monkeypatch.setenv("MODELCAR_LAYER_THRESHOLD", "1000")
    res = run(capsys, "plan", str(model), "--json")
    doc = json.loads(res.out)
    assert plan_paths(res) == ["model.safetensors", "config.json"]
    assert [len(layer["files"]) for layer in doc["layers"]] == [1, 1]


def test_build_to_a_digest_reference_is_refused(capsys, tmp_path):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    image = "127.0.0.1:5000/m/x@sha256:" + "a" * 64
    ws = str(tmp_path / "ws")
    res = run(
        capsys, "build", str(model), "--engine", "native", "--workspace", ws, "--image", image
    )
    assert res.code == errors.UsageError.exit_code
    assert "a push needs a tag" in res.err


def test_debug_shows_the_traceback_and_plain_runs_do_not(tmp_path):
    import subprocess
    import sys

    missing = str(tmp_path / "nope")
    base = [sys.executable, "-m", "modelcar_builder"]
    plain = subprocess.run([*base, "plan", missing], capture_output=True, text=True)
    assert plain.returncode == errors.SourceNotFound.exit_code
    assert plain.stderr.count("\n") == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run([*base, "--debug", "plan", missing], capture_output=True, text=True)
    assert debug.returncode == errors.SourceNotFound.exit_code  # --debug adds, changes nothing
    assert "Traceback" in debug.stderr and "SourceNotFound" in debug.stderr
    assert debug.stderr.splitlines()[-2:] == plain.stderr.splitlines()
    env_debug = subprocess.run([*base, "plan", missing], capture_output=True, text=True,
                               env={**os.environ, "MODELCAR_DEBUG": "1"})  # fmt: skip
    assert env_debug.returncode == errors.SourceNotFound.exit_code
    assert "Traceback" in env_debug.stderr


def test_click_usage_errors_are_one_line_with_a_hint(capsys, tmp_path):
    res = run(capsys, "build", str(tmp_path), "--image", "oci:x", "--engine", "bogus")
    assert res.code == errors.UsageError.exit_code
    lines = res.err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: Invalid value for '--engine'")
    assert lines[1].startswith("hint: see --help")
    # numbers have a rule of their own (tests/test_upfront.py), also one line + a hint
    bad = run(capsys, "fetch", str(tmp_path), "--attempts", "abc")
    assert bad.code == 2 and bad.err.startswith("error: --attempts must be an integer from 1")


def test_verify_catches_a_layout_image_with_an_entrypoint(capsys, tmp_path):
    from modelcar_builder.oci.layout import OciLayout

    model = make_model(tmp_path / "m", SMALL_MODEL)
    out = tmp_path / "out"
    ws = str(tmp_path / "ws")
    built = run(capsys, "build", str(model), "--engine", "native", "--workspace", ws,
                "--base-image", "scratch", "--image", f"oci:{out}:v1")  # fmt: skip
    assert built.code == 0, built.err
    assert run(capsys, "verify", f"oci:{out}:v1").code == 0
    layout = OciLayout(out)
    _desc, manifest = layout.read_manifest("v1")
    config = json.loads(layout.read_blob(manifest["config"]["digest"]))
    config["config"]["Entrypoint"] = ["/bin/sh"]
    digest, size = layout.write_blob_bytes(json.dumps(config).encode())
    manifest["config"] = {**manifest["config"], "digest": digest, "size": size}
    layout.add_manifest(json.dumps(manifest).encode(), manifest["mediaType"], tag="v1")
    res = run(capsys, "verify", f"oci:{out}:v1")
    assert res.code == errors.VerificationFailed.exit_code
    assert "Entrypoint" in res.err


def test_source_url_makes_local_builds_independent_of_the_path(capsys, tmp_path):
    digests = []
    for where in ("one", "two/deeper"):
        model = make_model(tmp_path / where / "m", SMALL_MODEL)
        ws = str(tmp_path / where / "ws")
        res = run(capsys, "build", str(model), "--engine", "native", "--workspace", ws,
                  "--base-image", "scratch", "--image", f"oci:{tmp_path / where / 'out'}:v1",
                  "--source-url", "s3://models/m")  # fmt: skip
        assert res.code == 0, res.err
        digests.append(res.last_line.rsplit("@", 1)[1])
    assert digests[0] == digests[1]
    from modelcar_builder.oci.layout import OciLayout

    layout = OciLayout(tmp_path / "one" / "out")
    config = json.loads(layout.read_blob(layout.read_manifest("v1")[1]["config"]["digest"]))
    assert config["config"]["Labels"]["org.opencontainers.image.source"] == "s3://models/m"
    plan = json.loads(run(capsys, "plan", str(model), "--json", "--source-url", "s3://m").out)
    assert plan["source"] == str(model)


def test_link_loops_and_links_to_a_parent_are_refused(tmp_path, capsys):
    for name, make in {
        "loop": lambda m: (m / "x").symlink_to("y") or (m / "y").symlink_to("x"),
        "parent": lambda m: (m / "sub").mkdir() or (m / "sub" / "up").symlink_to(".."),
        "self": lambda m: (m / "here").symlink_to("."),
    }.items():
        model = make_model(tmp_path / name, SMALL_MODEL)
        make(model)
        res = run(capsys, "plan", str(model))
        assert res.code == errors.UnsafeSource.exit_code, (name, res.err)
        assert res.err.startswith("error: refusing symlink"), res.err
        assert "Traceback" not in res.err


def test_dangling_links_and_fifos_are_reported_not_shipped(tmp_path, capsys):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    (model / "gone.json").symlink_to("missing.json")
    os.mkfifo(model / "pipe")
    res = run(capsys, "plan", str(model), "--json")
    assert res.code == 0, res.err
    skipped = {s["path"]: s["reason"] for s in json.loads(res.out)["skipped"]}
    assert skipped["gone.json"] == "dangling symlink"
    assert skipped["pipe"].startswith("not a regular file")
    assert "skipping gone.json: dangling symlink" in res.err


def test_bad_image_references_fail_before_reading_the_source(tmp_path, capsys):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    for image in ("127.0.0.1:99999/x", "UPPER/case"):
        res = run(capsys, "build", str(model), "--image", image, "--workspace", str(tmp_path))
        assert res.code == errors.UsageError.exit_code, res.err
        assert res.err.startswith(f"error: invalid image reference '{image}'")
        assert "\nhint: " in res.err


def test_build_help_names_every_environment_setting(capsys):
    from modelcar_builder.settings import ENVIRONMENT

    res = run(capsys, "build", "--help")
    assert res.code == 0
    for name in ENVIRONMENT:
        assert name in res.out, name
    assert "MODELCAR_BUILDAH_OVERLAP" in res.out and "[env var: MODELCAR_IMAGE" in res.out
    assert "MODELCAR_BUILDAH_MODE" not in res.out  # one buildah mode: nothing to choose


def test_an_in_process_run_gives_the_callers_sigterm_handler_back(capsys):
    """main() turns SIGTERM into 'interrupted, rerun to continue' while it runs; run
    in-process (these tests, an embedding program), the caller's own handler must be
    back afterwards, or the caller's stop signal becomes a KeyboardInterrupt anywhere."""
    import signal

    def mine(signum, frame):  # pragma: no cover - never delivered
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert run(capsys, "--version").code == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
