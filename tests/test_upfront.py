"""Issue #16: everything knowable up front fails up front, with one `error:` and one
`hint:` line, no traceback and the documented exit code: numbers out of range or not
finite, `--tls-verify=VALUE`, malformed tokens, control characters in file names, an
unwritable `oci:` layout, a base image of another platform. Real parts only: the
in-process CLI, the Hub imitation, real docker-registry instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelcar_builder import errors
from modelcar_builder.commands.options import spell_tls_verify
from tests.clitools import assert_refused, run

TINY = Path(__file__).parent.parent / "modelcar_builder" / "examples" / "tiny-model"


# -- numbers: finite and in range, options and tuning variables alike ------------------------

BAD_OPTIONS = [
    ("--read-timeout", "1e309"),  # float("1e309") is inf: an OverflowError once
    ("--read-timeout", "nan"),  # nan passes every comparison
    ("--read-timeout", "0"),
    ("--progress-interval", "-inf"),
    ("--fetch-jobs", "abc"),
    ("--connections", "0"),
    ("--attempts", "1e3"),
    ("--layer-threshold", "-5"),
    ("--max-layers", "128"),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_a_bad_number_is_refused_naming_the_option_and_its_range(capsys, tmp_path, option, value):
    ws = tmp_path / "ws"
    res = run(capsys, "fetch", str(TINY), "--workspace", str(ws), option, value)
    assert_refused(res, errors.UsageError.exit_code)
    assert f"error: {option} must be " in res.err and " from " in res.err, res.err
    assert repr(value) in res.err
    assert not ws.exists()  # refused while parsing, before the workspace is touched


BAD_VARIABLES = [
    ("MODELCAR_READ_TIMEOUT", "inf"),
    ("MODELCAR_FETCH_JOBS", "65"),
    ("MODELCAR_SEGMENT_SIZE", "abc"),  # a tuning variable, once ignored silently
    ("MODELCAR_SEGMENT_SIZE", "-5"),
    ("MODELCAR_REGISTRY_RETRY_WINDOW", "nan"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VARIABLES)
def test_a_bad_number_in_a_variable_is_refused_naming_the_variable(
    capsys, tmp_path, monkeypatch, name, value
):
    monkeypatch.setenv(name, value)
    ws = tmp_path / "ws"
    if name == "MODELCAR_REGISTRY_RETRY_WINDOW":  # read where a registry is set up
        cmd = ["build", str(TINY), "--engine", "native", "--base-image", "scratch",
               "--image", f"oci:{tmp_path / 'out'}:v1", "--workspace", str(ws)]  # fmt: skip
    else:
        cmd = ["fetch", str(TINY), "--workspace", str(ws)]
    res = run(capsys, *cmd)
    assert_refused(res, errors.UsageError.exit_code)
    assert f"error: {name} must be " in res.err and repr(value) in res.err, res.err
    assert f"hint: e.g. {name}=" in res.err
    assert not ws.exists()


def test_good_numbers_pass(capsys, tmp_path, monkeypatch):
    """The same rule lets the usual values through (and the bounds themselves)."""
    monkeypatch.setenv("MODELCAR_SEGMENT_SIZE", str(64 * 1024))
    res = run(capsys, "fetch", str(TINY), "--workspace", str(tmp_path / "ws"),
              "--read-timeout", "0.1", "--max-layers", "127", "--fetch-jobs", "64")  # fmt: skip
    assert res.code == 0, res.err


# -- --tls-verify=VALUE ----------------------------------------------------------------------


def test_tls_verify_takes_the_skopeo_spelling():
    assert spell_tls_verify(["--tls-verify=false", "IMG"]) == ["--no-tls-verify", "IMG"]
    assert spell_tls_verify(["--tls-verify=True"]) == ["--tls-verify"]
    assert spell_tls_verify(["--tls-verify=0", "--tls-verify"]) == [
        "--no-tls-verify",
        "--tls-verify",
    ]
    # after "--" everything is an argument, and other options are left alone
    assert spell_tls_verify(["--", "--tls-verify=false"]) == ["--", "--tls-verify=false"]
    assert spell_tls_verify(["--include=--tls-verify=x"]) == ["--include=--tls-verify=x"]


def test_tls_verify_with_a_bad_value_is_refused(capsys):
    res = run(capsys, "verify", "oci:/nonexistent:v1", "--tls-verify=maybe")
    assert_refused(res, errors.UsageError.exit_code)
    assert "--tls-verify takes true or false, not 'maybe'" in res.err


@pytest.mark.slow
def test_tls_verify_false_pushes_to_a_self_signed_registry(registry_tls, capsys, tmp_path):
    """The value is honoured both ways: =true checks the self-signed certificate and
    fails before the push (exit 50); =false pushes, and verify takes it too."""
    image = f"{registry_tls.host}/models/tiny:tls"
    cmd = ["build", str(TINY), "--engine", "native", "--base-image", "scratch",
           "--image", image, "--workspace", str(tmp_path / "ws")]  # fmt: skip
    res = run(capsys, *cmd, "--tls-verify=true")
    assert_refused(res, errors.RegistryUnreachable.exit_code)
    assert registry_tls.upload_requests() == []

    res = run(capsys, *cmd, "--tls-verify=false")
    assert res.code == 0, res.err
    pushed = res.last_line
    assert pushed.startswith(f"oci://{registry_tls.host}/models/tiny@sha256:")
    assert registry_tls.upload_requests() != []

    res = run(capsys, "verify", "--tls-verify=false", image)
    assert res.code == 0, res.err
    assert res.last_line == pushed
