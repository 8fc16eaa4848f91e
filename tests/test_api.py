"""The Python API: `plan`, `build` and `verify` called from Python give what the CLI gives
(the CLI calls them), and fail with the same typed errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelcar_builder import api, errors
from modelcar_builder.source.download import FetchOptions
from tests.support.clitools import run

TINY = Path(__file__).resolve().parent.parent / "modelcar_builder" / "examples" / "tiny-model"


def test_plan_build_verify_from_python_match_the_cli(tmp_path, capsys):
    planned = api.plan(str(TINY))
    assert [f.path for layer in planned.layers for f in layer.files] == [
        "README.md", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer/config.json", "tokenizer/tokenizer.json",
    ]  # fmt: skip
    options = api.BuildOptions(
        api.SourceOptions(str(TINY), source_url="urn:test:tiny"),
        f"oci:{tmp_path}/py:v1",
        workspace=str(tmp_path / "ws-py"),
        base_image="scratch",
        report_file=str(tmp_path / "report.json"),
    )
    built = api.build(options)
    assert built.image_url == f"oci:{tmp_path}/py@{built.digest}"
    assert json.loads((tmp_path / "report.json").read_text()) == built.report
    cli = run(capsys, "build", str(TINY), "--source-url", "urn:test:tiny", "--base-image",
              "scratch", "--image", f"oci:{tmp_path}/cli:v1", "--workspace",
              str(tmp_path / "ws-cli"))  # fmt: skip
    assert cli.code == 0, cli.err
    assert cli.last_line.endswith(built.digest)  # same options, same image
    checked = api.verify(api.VerifyOptions(f"oci:{tmp_path}/py:v1", deep=True,
                                           report_file=str(tmp_path / "report.json")))  # fmt: skip
    assert checked.result.digest == built.digest and checked.result.deep is not None


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        (dict(engine="bogus"), errors.UsageError, "--engine must be one of"),
        (dict(jobs=0), errors.UsageError, "--jobs must be"),
        (dict(fetch=FetchOptions(read_timeout=float("inf"))), errors.UsageError,
         "--read-timeout must be"),
        (dict(platform="linux/amd64,linux/arm64"), errors.UsageError, "pushed to a registry"),
    ],
)  # fmt: skip
def test_bad_options_raise_the_clis_errors(tmp_path, options, error, says):
    with pytest.raises(error) as raised:
        api.build(api.BuildOptions(str(TINY), f"oci:{tmp_path}/x:v1", base_image="scratch",
                                   workspace=str(tmp_path / "ws"), **options))  # fmt: skip
    assert says in raised.value.message and raised.value.exit_code == 2
    assert not (tmp_path / "ws").exists()  # refused before anything was written


def test_a_missing_image_is_image_not_found(tmp_path):
    with pytest.raises(errors.ImageNotFound) as raised:
        api.verify(f"oci:{tmp_path}/nothing:v1")
    assert raised.value.exit_code == 61


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (dict(image="reg.example:5000/m:v1", parts=0), "--parts must be"),
        (dict(image="reg.example:5000/m:v1", parts=2, wait=-1.0), "--wait must be"),
        (dict(image="oci:/tmp/x:v1", parts=2), "assemble writes a tag in a registry"),
    ],
)  # fmt: skip
def test_assemble_options_are_checked_by_the_clis_rules(options, says):
    """api.assemble takes the command's options and refuses what the CLI refuses, before
    any registry is asked (no registry listens at reg.example)."""
    with pytest.raises(errors.UsageError) as raised:
        api.assemble(api.AssembleOptions(**options))
    assert says in raised.value.message and raised.value.exit_code == 2
