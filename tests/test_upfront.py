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
from tests.support.clitools import assert_refused, run

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


# -- tokens: one line of printable ASCII, named by their source, never shown -----------------

HF_SECRET = "hf_upfrontSecretToken0123456789"
REPO = "acme/upfront"


@pytest.fixture
def hub_with_private(hub):
    hub.tokens.add(HF_SECRET)
    hub.add_repo(REPO, {"config.json": b"{}", "model.safetensors": b"\0" * 4096})
    hub.add_repo("acme/private", {"config.json": b"{}"}, private=True)
    return hub


@pytest.mark.parametrize(
    "token",
    [
        HF_SECRET[:6] + "\u00e9" + HF_SECRET[6:],
        HF_SECRET + "\n" + HF_SECRET,
        HF_SECRET[:12] + " " + HF_SECRET[12:],
    ],
    ids=["non-ascii", "two-lines", "space"],
)
@pytest.mark.parametrize("where", ["HF_TOKEN", "--hf-token-file"])
def test_a_malformed_hub_token_is_refused_before_any_request(
    hub_with_private, capsys, tmp_path, monkeypatch, token, where
):
    """Even for a public repo (the token is sent anyway): once a UnicodeEncodeError
    traceback, or "cannot reach the Hub" for a second line."""
    cmd = ["plan", f"hf://{REPO}@main"]
    if where == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", token)
        source = "HF_TOKEN"
    else:
        path = tmp_path / "hf-token"
        path.write_text(token + "\n", encoding="utf-8")
        cmd += ["--hf-token-file", str(path)]
        source = f"--hf-token-file {path}"
    res = run(capsys, *cmd)
    assert_refused(res, errors.AccessDenied.exit_code)
    assert f"error: the token from {source} is malformed" in res.err
    for part in token.split():
        assert part not in res.out + res.err
    assert hub_with_private.requests == []

    cmd[0] = "doctor"
    out, ws = tmp_path / "out", tmp_path / "ws"
    res = run(capsys, *cmd, "--engine", "native", "--base-image", "scratch",
              "--image", f"oci:{out}:v1", "--workspace", str(ws))  # fmt: skip
    assert_refused(res, errors.AccessDenied.exit_code)
    assert "FAIL  source" in res.out and f"the token from {source} is malformed" in res.out
    for part in token.split():
        assert part not in res.out + res.err
    assert hub_with_private.requests == []


def test_a_token_file_with_one_trailing_newline_is_fine(hub_with_private, capsys, tmp_path):
    path = tmp_path / "hf-token"
    path.write_text(HF_SECRET + "\n")
    res = run(capsys, "plan", "hf://acme/private@main", "--hf-token-file", str(path))
    assert res.code == 0, res.err
    assert "config.json" in res.out


@pytest.mark.slow
def test_a_two_line_registry_token_file_is_refused_before_the_download(
    hub_with_private, registry_htpasswd, capsys, tmp_path
):
    token = tmp_path / "token"
    token.write_text(f"{registry_htpasswd.password}\nsecond-line\n")
    image = f"{registry_htpasswd.host}/models/tiny:1"
    for command in ("build", "doctor"):
        res = run(capsys, command, f"hf://{REPO}@main", "--engine", "native",
                  "--base-image", "scratch", "--image", image, "--no-tls-verify",
                  "--workspace", str(tmp_path / "ws"),
                  "--registry-token-file", str(token))  # fmt: skip
        assert_refused(res, errors.MalformedToken.exit_code)
        assert f"error: the token from token file {token} is malformed" in res.err
        assert registry_htpasswd.password not in res.out + res.err
        assert "second-line" not in res.out + res.err
        assert not [r for r in hub_with_private.requests if "/resolve/" in r.path]
    assert "FAIL  registry" in res.out  # doctor's verdict
    assert registry_htpasswd.upload_requests() == []


# -- control characters in file names: refused at plan time, shown escaped -------------------

FORGED = "x\nmodelcar: pushed quay.io/x/y:1 with native: 1 model layers, sha256:0 verified"
ESCAPE = "clear\x1b[2Jscreen.json"


@pytest.mark.parametrize("name", [FORGED, ESCAPE], ids=["newline", "escape"])
def test_a_hub_file_name_with_a_control_character_is_refused(hub, capsys, tmp_path, name):
    hub.add_repo(REPO, {"config.json": b"{}", name: b"forged", "model.safetensors": b"\0" * 64})
    for cmd in (["plan"], ["fetch", "--workspace", str(tmp_path / "ws")]):
        res = run(capsys, cmd[0], f"hf://{REPO}@main", *cmd[1:])
        assert_refused(res, errors.UnsafeSource.exit_code)
        assert f"error: refusing file path {name!r}" in res.err  # escaped, repr-style
        assert "\x1b" not in res.out + res.err
        assert not any(line.startswith("modelcar: pushed") for line in res.err.splitlines())
        assert res.out == ""
    assert not [r for r in hub.requests if "/resolve/" in r.path]  # no byte moved


@pytest.mark.parametrize("name", [FORGED, ESCAPE], ids=["newline", "escape"])
def test_a_local_file_name_with_a_control_character_is_refused(capsys, tmp_path, name):
    name = name.replace("/", "-")  # one file, not directories
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / name).write_text("forged")
    res = run(capsys, "plan", str(model))
    assert_refused(res, errors.UnsafeSource.exit_code)
    assert f"error: refusing file path {'sub/' + name!r}" in res.err
    assert "\x1b" not in res.err and res.out == ""


# -- an oci: layout that cannot be created: a real mkdir, not os.access ----------------------


@pytest.mark.slow
def test_an_oci_layout_that_cannot_be_created_fails_before_the_download(
    hub_with_private, capsys, tmp_path
):
    """Root passes os.access on /proc; the mkdir there fails (ENOENT). Once the whole
    model was downloaded first and the run ended in exit 1."""
    cmd = [f"hf://{REPO}@main", "--engine", "native", "--base-image", "scratch",
           "--image", "oci:/proc/modelcar-x:v1", "--workspace", str(tmp_path / "ws")]  # fmt: skip
    res = run(capsys, "build", *cmd)
    assert_refused(res, errors.OutputNotWritable.exit_code)
    assert "error: OCI layout /proc/modelcar-x: cannot create /proc/modelcar-x" in res.err
    assert not [r for r in hub_with_private.requests if "/resolve/" in r.path]

    res = run(capsys, "doctor", *cmd)
    assert_refused(res, errors.OutputNotWritable.exit_code)
    assert "FAIL  outputs" in res.out

    # A layout whose parents are missing but can be made passes, and the probe is gone.
    cmd[cmd.index("oci:/proc/modelcar-x:v1")] = f"oci:{tmp_path / 'new' / 'dir' / 'out'}:v1"
    res = run(capsys, "doctor", *cmd)
    assert res.code == 0, res.out + res.err
    assert "build creates it" in res.out and not (tmp_path / "new").exists()


# -- the base image's platform: read from its config before the Hub, FAIL in doctor ---------


@pytest.mark.slow
def test_a_base_of_another_platform_fails_before_the_hub_and_the_push(
    hub_with_private, registry, base_image, capsys, tmp_path
):
    """The busybox base is linux/amd64 (one manifest, no index). Once the mismatch was
    found after the whole model was pushed."""
    image = f"{registry.host}/models/tiny:arm"
    cmd = [f"hf://{REPO}@main", "--engine", "native", "--image", image, "--no-tls-verify",
           "--workspace", str(tmp_path / "ws"), "--platform", "linux/arm64"]  # fmt: skip
    for base in (base_image.ref, base_image.oci_ref):  # registry and layout bases alike
        mark, base_mark = registry.mark(), base_image.registry.mark()
        asked = len(hub_with_private.requests)
        res = run(capsys, "build", *cmd, "--base-image", base)
        assert_refused(res, errors.PlatformNotFound.exit_code)
        assert f"error: base image {base} is linux/amd64, not linux/arm64" in res.err
        assert "hint: pass --platform linux/amd64" in res.err
        assert len(hub_with_private.requests) == asked  # the Hub was not even asked for metadata
        assert registry.upload_requests(since=mark) == []
        # of the base, its config at most (a registry base): its one layer was not read
        blobs = base_image.registry.requests(since=base_mark, path_contains="/blobs/")
        assert len(blobs) <= 1, blobs

        res = run(capsys, "doctor", *cmd, "--base-image", base)
        assert_refused(res, errors.PlatformNotFound.exit_code)
        assert "FAIL  base" in res.out and "is linux/amd64, not linux/arm64" in res.out
    assert not [
        r for r in hub_with_private.requests if "/resolve/" in r.path
    ]  # doctor: metadata only

    res = run(capsys, "doctor", *cmd[:-1], "linux/amd64", "--base-image", base_image.ref)
    assert res.code == 0, res.out + res.err  # the same base for its own platform passes


@pytest.mark.parametrize(
    ("platform", "words"),
    [("linux/amd64,linux/arm64", "an image index is pushed to a registry"),
     ("linux", "bad --platform"), ("linux//amd64", "bad --platform")],
)  # fmt: skip
def test_a_platform_list_or_a_malformed_platform_is_refused(
    hub_with_private, capsys, tmp_path, platform, words
):
    cmd = [f"hf://{REPO}@main", "--engine", "native", "--base-image", "scratch",
           "--image", f"oci:{tmp_path / 'out'}:v1", "--workspace", str(tmp_path / "ws"),
           "--platform", platform]  # fmt: skip
    res = run(capsys, "build", *cmd)
    assert_refused(res, errors.UsageError.exit_code)
    assert words in res.err
    assert hub_with_private.requests == []  # refused before the Hub is asked anything
    res = run(capsys, "doctor", *cmd)
    assert_refused(res, errors.UsageError.exit_code)
    assert "FAIL  image" in res.out


@pytest.mark.parametrize("value", ["1e309", "-5", "soon"])
def test_a_bad_source_date_epoch_fails_before_the_download(
    hub_with_private, capsys, tmp_path, monkeypatch, value
):
    """Read when the image config is made, once after the whole download."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    out, ws = tmp_path / "out", tmp_path / "ws"
    cmd = [f"hf://{REPO}@main", "--engine", "native", "--base-image", "scratch",
           "--image", f"oci:{out}:v1", "--workspace", str(ws)]  # fmt: skip
    res = run(capsys, "build", *cmd)
    assert_refused(res, errors.UsageError.exit_code)
    assert "error: SOURCE_DATE_EPOCH must be an integer from 0 to" in res.err
    assert hub_with_private.requests == []  # refused before the Hub is asked anything
    res = run(capsys, "doctor", *cmd)
    assert_refused(res, errors.UsageError.exit_code)
    assert "FAIL  image" in res.out
