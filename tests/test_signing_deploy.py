"""The builder image's entrypoint with the signing-secret workspace/volume: a directory
laid out as Tekton Chains' signing-secrets (cosign.key, cosign.password) becomes
MODELCAR_SIGN_KEY and its password file; an unbound workspace ("") changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.clitools import run

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "containerfiles" / "entrypoint.sh"


def entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """containerfiles/entrypoint.sh, its `exec modelcar` reaching this checkout's CLI."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    launcher = bindir / "modelcar"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m modelcar_builder "$@"\n')
    launcher.chmod(0o755)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MODELCAR_", "COSIGN_"))}
    full.update(env, PATH=f"{bindir}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=full, capture_output=True,
                          text=True, check=False)  # fmt: skip


@pytest.mark.slow
def test_a_bound_signing_secret_signs_and_an_unbound_one_does_not(
    registry, base_image, capsys, tmp_path, monkeypatch
):
    secret = tmp_path / "signing-secrets"
    monkeypatch.setenv("COSIGN_PASSWORD", "chains-like-password")
    assert run(capsys, "keygen", str(secret)).code == 0
    monkeypatch.delenv("COSIGN_PASSWORD")
    (secret / "cosign.password").write_text("chains-like-password")
    image = base_image.copy_to(registry, "deploy/signed", "v1")

    unbound = entrypoint(tmp_path, {"SIGNING_SECRET_DIR": ""}, "sign", image, "--no-tls-verify")
    assert unbound.returncode == 2 and "--key" in unbound.stderr

    bound = entrypoint(tmp_path, {"SIGNING_SECRET_DIR": str(secret)}, "sign", image,
                       "--no-tls-verify")  # fmt: skip
    assert bound.returncode == 0, bound.stderr
    assert "chains-like-password" not in bound.stdout + bound.stderr
    check = run(capsys, "sign", "--verify", image, "--key", str(secret / "cosign.pub"),
                "--no-tls-verify")  # fmt: skip
    assert check.code == 0, check.err


def test_task_and_job_wire_the_signing_secret_to_the_entrypoint():
    task = yaml.safe_load((ROOT / "deploy/tekton/task-modelcar-build.yaml").read_text())
    (ws,) = [w for w in task["spec"]["workspaces"] if w["name"] == "signing-secret"]
    assert ws["optional"] and ws["readOnly"]
    env = {e["name"]: e.get("value") for e in task["spec"]["steps"][0]["env"]}
    assert env["SIGNING_SECRET_DIR"] == "$(workspaces.signing-secret.path)"
    job = yaml.safe_load((ROOT / "deploy/kubernetes/job-modelcar-build.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "signing"]
    assert volume["secret"]["optional"] is True
    container = pod["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "signing"]
    job_env = {e["name"]: e.get("value") for e in container["env"]}
    assert job_env["SIGNING_SECRET_DIR"] == mount["mountPath"]
    assert "SIGNING_SECRET_DIR" in ENTRYPOINT.read_text()
