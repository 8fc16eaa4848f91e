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
from tests.support.kubeplay import StepPod

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


@pytest.mark.parametrize(
    "task_file", ["task-modelcar-build.yaml", "task-modelcar-build-buildah.yaml"]
)
@pytest.mark.parametrize("job_file", ["job/job-modelcar-build.yaml",
                                      "job-indexed/job-modelcar-build-indexed.yaml"])  # fmt: skip
def test_task_and_job_wire_the_signing_secret_to_the_entrypoint(task_file, job_file):
    components = ROOT / "deploy" / "components"
    task = yaml.safe_load((components / "tekton" / task_file).read_text())
    action = yaml.safe_load((components / "tekton" / "stepaction-modelcar-build.yaml").read_text())
    (ws,) = [w for w in task["spec"]["workspaces"] if w["name"] == "signing-secret"]
    assert ws["optional"] and ws["readOnly"]
    # the native Task's step is the StepAction: resolved as Tekton does
    step = StepPod(task, "build", step_actions={"modelcar-build": action}).resolve_step()
    env = {e["name"]: e.get("value") for e in step["env"]}
    assert env["SIGNING_SECRET_DIR"] == "$(workspaces.signing-secret.path)"
    docs = [d for d in yaml.safe_load_all((components / job_file).read_text()) if d]
    (job,) = [d for d in docs if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "signing"]
    assert volume["secret"]["optional"] is True
    container = pod["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "signing"]
    job_env = {e["name"]: e.get("value") for e in container["env"]}
    assert job_env["SIGNING_SECRET_DIR"] == mount["mountPath"]
    assert "SIGNING_SECRET_DIR" in ENTRYPOINT.read_text()
