"""`modelcar doctor` and the same checks at the start of `build`: everything that can be
checked before the download fails before it, in seconds. Real parts only: the Hub
imitation, real docker-registry (htpasswd, token, TLS), a real tmpfs, the in-process CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from modelcar_builder import errors
from tests.support.clitools import run
from tests.support.features import need, tmpfs_mount
from tests.support.models import MIB, REPO, shard

HF_SECRET = "hf_doctorTestSecretToken0123456789"


def args(command: str, image: str, ws: Path, *extra: str, base: str = "scratch") -> list[str]:
    return [
        command, f"hf://{REPO}@main", "--engine", "native", "--image", image,
        "--workspace", str(ws), "--base-image", base, "--layer-threshold", str(MIB), *extra,
    ]  # fmt: skip


def file_requests(hub) -> list[str]:
    """Requests for file bytes (resolve, CDN): none may happen before the checks pass."""
    return [r.path for r in hub.requests if "/resolve/" in r.path or r.path.startswith("/repos/")]


def checks(out: str) -> dict[str, list[str]]:
    """Doctor's text output: check name -> its statuses."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("PASS", "WARN", "FAIL", "INFO"):
            found.setdefault(parts[1], []).append(parts[0])
    return found


def test_wrong_registry_token_fails_the_build_before_the_download(
    hub_repo, registry_htpasswd, capsys, tmp_path
):
    token = tmp_path / "token"
    token.write_text("not-the-password\n")
    image = f"{registry_htpasswd.host}/models/llm:1"
    extra = ("--no-tls-verify", "--registry-token-file", str(token))
    res = run(capsys, *args("build", image, tmp_path / "ws", *extra))
    assert res.code == errors.RegistryAuthError.exit_code, res.err
    assert str(token) in res.err and "not-the-password" not in res.out + res.err
    assert file_requests(hub_repo) == []
    assert res.err.count("error:") == 1 and "hint:" in res.err

    res = run(capsys, *args("doctor", image, tmp_path / "ws", *extra))
    assert res.code == errors.RegistryAuthError.exit_code
    assert checks(res.out)["registry"] == ["FAIL"]
    assert "not-the-password" not in res.out + res.err and file_requests(hub_repo) == []


def test_no_preflight_skips_the_checks(hub_repo, registry_htpasswd, capsys, tmp_path, monkeypatch):
    """The same wrong token with MODELCAR_NO_PREFLIGHT: found only after the download."""
    token = tmp_path / "token"
    token.write_text("not-the-password")
    monkeypatch.setenv("MODELCAR_NO_PREFLIGHT", "1")
    image = f"{registry_htpasswd.host}/models/llm:1"
    res = run(capsys, *args("build", image, tmp_path / "ws", "--no-tls-verify",
                            "--registry-token-file", str(token)))  # fmt: skip
    assert res.code == errors.RegistryAuthError.exit_code, res.err
    assert file_requests(hub_repo) != []


def test_self_signed_registry_without_ca_file_fails_before_the_download(
    hub_repo, registry_tls, capsys, tmp_path
):
    image = f"{registry_tls.host}/models/llm:tls"
    res = run(capsys, *args("build", image, tmp_path / "ws"))
    assert res.code == errors.RegistryUnreachable.exit_code, res.err
    assert "TLS" in res.err and "system bundle" in res.err  # names the CAs it trusted
    assert file_requests(hub_repo) == []

    res = run(
        capsys, *args("doctor", image, tmp_path / "ws", "--ca-file", str(registry_tls.ca_file))
    )
    assert res.code == 0, res.out + res.err
    assert f"TLS trusted with CA {registry_tls.ca_file}" in res.out


def test_pull_only_credentials_fail_the_push_check(hub_repo, registry_token, capsys, tmp_path):
    """A token that may pull but not push: pinging works, the push check must not."""
    assert registry_token.token_server is not None
    registry_token.token_server.add_user("reader", "reader-secret-pw", ("pull",))
    auth = tmp_path / "reader.json"
    raw = base64_auth("reader", "reader-secret-pw")
    auth.write_text(json.dumps({"auths": {registry_token.host: {"auth": raw}}}))
    image = f"{registry_token.host}/models/llm:ro"
    res = run(capsys, *args("doctor", image, tmp_path / "ws", "--no-tls-verify",
                            "--authfile", str(auth)))  # fmt: skip
    assert res.code == errors.RegistryAuthError.exit_code, res.out + res.err
    assert checks(res.out)["registry"] == ["FAIL"]
    assert "push to models/llm" in res.out and str(auth) in res.out
    assert "reader-secret-pw" not in res.out + res.err and raw not in res.out + res.err

    writer = registry_token.write_authfile(tmp_path / "writer.json")
    mark = registry_token.mark()
    res = run(capsys, *args("doctor", image, tmp_path / "ws", "--no-tls-verify",
                            "--authfile", str(writer)))  # fmt: skip
    assert res.code == 0, res.out + res.err
    assert "may push to models/llm" in res.out
    # The push check started an upload and cancelled it (distribution asks the DELETE for
    # a token of its own first); nothing was written.
    uploads = registry_token.requests(since=mark, path_contains="/blobs/uploads/")
    assert (uploads[0].method, uploads[0].status) == ("POST", 202)
    assert (uploads[-1].method, uploads[-1].status) == ("DELETE", 204)
    assert registry_token.upload_requests(since=mark) == []
    assert registry_token.password not in res.out + res.err


def base64_auth(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.skipif(not shutil.which("buildah"), reason="buildah not installed")
def test_workspace_too_small_for_buildah_fails_before_the_download(
    hub_repo, registry, capsys, tmp_path
):
    """7 MiB holds the 4 MiB model (native fits) but not buildah's per-layer peak
    (3 copies of the largest layer on top): exit 31 before any shard moves."""
    need(tmpfs_mount)
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(ws)], check=True)
    try:
        image = f"{registry.host}/models/llm:small"
        buildah = args("build", image, ws, "--no-tls-verify")
        buildah[buildah.index("native")] = "buildah"
        res = run(capsys, *buildah)
        assert res.code == errors.InsufficientSpace.exit_code, res.err
        assert "the volume must be at least" in res.err
        assert file_requests(hub_repo) == []

        res = run(capsys, *args("doctor", image, ws, "--no-tls-verify"))
        assert res.code == 0, res.out + res.err  # the native engine fits
        assert set(checks(res.out)["disk"]) == {"PASS"}  # workspace and TMPDIR
        assert "native needs" in res.out
    finally:
        subprocess.run(["umount", str(ws)], check=True)


def test_results_dir_is_created_or_refused_before_the_download(
    hub_repo, registry, capsys, tmp_path
):
    image = f"{registry.host}/models/llm:res"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = run(capsys, *args("build", image, tmp_path / "ws", "--no-tls-verify",
                            "--results-dir", str(blocker / "results")))  # fmt: skip
    assert res.code == errors.OutputNotWritable.exit_code, res.err
    assert "--results-dir" in res.err and file_requests(hub_repo) == []

    results = tmp_path / "new" / "results"
    report = tmp_path / "reports" / "build.json"
    res = run(capsys, *args("build", image, tmp_path / "ws", "--no-tls-verify",
                            "--results-dir", str(results), "--report", str(report)))  # fmt: skip
    assert res.code == 0, res.err
    assert res.last_line.startswith(f"oci://{registry.host}/models/llm@sha256:")
    assert (results / "IMAGE_DIGEST").read_text() in res.last_line
    assert json.loads(report.read_text())


def test_healthy_setup_passes_and_moves_nothing(hub_repo, registry, base_image, capsys, tmp_path):
    image = f"{registry.host}/models/llm:ok"
    mark = registry.mark()
    extra = ("--no-tls-verify", "--results-dir", str(tmp_path / "results"))
    res = run(capsys, *args("doctor", image, tmp_path / "ws", *extra, base=base_image.ref))
    assert res.code == 0, res.out + res.err
    found = checks(res.out)
    for name in ("image", "base", "source", "workspace", "outputs", "engine", "registry", "disk"):
        assert found[name] and set(found[name]) == {"PASS"}, (name, res.out)
    assert set(found["identity"]) == {"INFO"}
    assert "doctor: 0 FAIL, 0 WARN" in res.out
    assert file_requests(hub_repo) == []
    assert registry.upload_requests(since=mark) == []
    assert not (tmp_path / "results").exists()  # doctor changes nothing but the workspace


def test_doctor_json(hub_repo, registry_htpasswd, capsys, tmp_path):
    token = tmp_path / "token"
    token.write_text(registry_htpasswd.password + "\n")
    hf_token = tmp_path / "hf-token"
    hf_token.write_text(HF_SECRET)
    hub_repo.tokens.add(HF_SECRET)
    hub_repo.add_repo("acme/private", {"config.json": b"{}", "w.safetensors": shard(9, 2 * MIB)},
                      private=True)  # fmt: skip
    image = f"{registry_htpasswd.host}/models/llm:json"
    cmd = args("doctor", image, tmp_path / "ws", "--no-tls-verify", "--registry-token-file",
               str(token), "--hf-token-file", str(hf_token), "--json")  # fmt: skip
    cmd[1] = "hf://acme/private@main"
    res = run(capsys, *cmd)
    doc = json.loads(res.out)
    assert res.code == 0 and doc["ok"] is True and doc["exit_code"] == 0, res.out + res.err
    by_name = {c["check"]: c for c in doc["checks"]}
    assert set(by_name) >= {"identity", "image", "base", "source", "workspace", "outputs",
                            "engine", "registry", "disk"}  # fmt: skip
    assert by_name["base"]["status"] == "WARN" and by_name["base"]["fix"]  # scratch
    assert f"--hf-token-file {hf_token}" in by_name["source"]["message"]
    assert f"token file {token}" in by_name["registry"]["message"]
    for secret in (HF_SECRET, registry_htpasswd.password):
        assert secret not in res.out + res.err

    # The same repo without the token: FAIL with the source's own exit code.
    cmd.remove("--hf-token-file")
    cmd.remove(str(hf_token))
    res = run(capsys, *cmd)
    doc = json.loads(res.out)
    failed = [c for c in doc["checks"] if c["status"] == "FAIL"]
    assert [c["check"] for c in failed] == ["source"]
    assert res.code == doc["exit_code"] == errors.SourceNotFound.exit_code
    assert failed[0]["fix"] and "token: none" in failed[0]["message"]
