"""The builder image's entrypoint with the signing-secret workspace/volume: a directory
laid out as Tekton Chains' signing-secrets (cosign.key, cosign.password) becomes
MODELCAR_SIGN_KEY and its password file; an unbound workspace ("") changes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.clitools import run
from tests.support.kubeplay import PodRun, StepPod, play
from tests.support.signing import PASSWORD, extracted_tree_verifies, make_keypair, raw_manifest

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


# -- the Tasks as the cluster runs them (podman kube play) -------------------------------------

TEKTON = ROOT / "deploy" / "components" / "tekton"
TINY = ROOT / "modelcar_builder" / "examples" / "tiny-model"


def _secret_like(directory: Path, capsys, monkeypatch) -> Path:
    """A directory laid out as a Secret volume with Chains' signing-secrets keys: files
    0644 (the kubelet's defaultMode), so any UID of the pod reads them."""
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    make_keypair(capsys, directory)
    monkeypatch.delenv("COSIGN_PASSWORD")
    (directory / "cosign.password").write_text(PASSWORD)
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory


OPENSHIFT_UID = 1000680000  # what restricted-v2 injects: no passwd entry, group 0


def _run_task(builder, tmp_path: Path, registry, base_image, task_name: str, repo: str,
              signing: Path | None) -> tuple[PodRun, str, Path]:  # fmt: skip
    """A Task's build step, from deploy/ as written (the native Task's StepAction
    resolved), on a PVC-like volume holding the tiny model (another owner, group 0
    writable); ``signing`` binds the signing-secret workspace. The native Task runs as
    restricted-v2's arbitrary UID, the buildah Task as the UID 0 it asks for."""
    podman, image = builder.podman, builder.image  # tests/support/deploy_builder: one per session
    task = yaml.safe_load((TEKTON / f"task-{task_name}.yaml").read_text())
    action = yaml.safe_load((TEKTON / "stepaction-modelcar-build.yaml").read_text())
    volume = tmp_path / "pvc"
    shutil.copytree(TINY, volume / "models" / "tiny")
    for path in [volume, *volume.rglob("*")]:
        os.chown(path, 4242, 0)
        path.chmod(0o2775 if path.is_dir() else 0o664)
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o777)
    workspaces = {"source": volume, **({"signing-secret": signing} if signing else {})}
    step = StepPod(
        task=task,
        step_name="build",
        image=image,
        params={
            "source": "models/tiny",
            "image": f"{registry.host}/{repo}:v1",
            "base-image": base_image.ref,
            "tls-verify": "false",
        },
        workspaces=workspaces,
        results_dir=results,
        run_as=(OPENSHIFT_UID, 0),  # injected only where the step sets no runAsUser
        step_actions={"modelcar-build": action},
    )
    pod = play(podman, step.pod(repo.replace("/", "-")), tmp_path)
    assert pod.exit_code == 0, pod.logs
    assert PASSWORD not in pod.logs
    return pod, (results / "IMAGE_DIGEST").read_text(), volume / "modelcar" / "report.json"


def _check_signed(capsys, registry, repo: str, digest: str, report: Path, public: Path,
                  tmp_path: Path) -> None:  # fmt: skip
    """verify --deep --key (every file against the report, the provenance and model.sig)
    and model_signing's own verify of the extracted tree."""
    image = f"{registry.host}/{repo}@{digest}"
    check = run(capsys, "verify", image, "--deep", "--report", str(report), "--key",
                str(public), "--no-tls-verify")  # fmt: skip
    assert check.code == 0, check.err
    files = sum(1 for p in TINY.rglob("*") if p.is_file())
    assert f"ok: {files} files = the provenance; " in check.out
    extracted_tree_verifies(f"docker://{image}", tmp_path / "check", public)


@pytest.mark.slow
def test_buildah_task_with_the_signing_secret_signs_and_without_it_does_not(
    builder, session_registry, base_image, capsys, tmp_path, monkeypatch
):
    secret = _secret_like(tmp_path / "signing-secret", capsys, monkeypatch)
    pod, digest, report = _run_task(
        builder,
        tmp_path / "signed",
        session_registry,
        base_image,
        "modelcar-build-buildah",
        "tekton/signed-buildah",
        secret,
    )
    assert "with buildah" in pod.logs, pod.logs
    _check_signed(capsys, session_registry, "tekton/signed-buildah", digest, report,
                  secret / "cosign.pub", tmp_path)  # fmt: skip

    # unbound: the same Task builds, unsigned (no model.sig, no signature)
    _, plain, _ = _run_task(builder, tmp_path / "plain", session_registry, base_image,
                            "modelcar-build-buildah", "tekton/plain-buildah", None)  # fmt: skip
    unsigned = f"{session_registry.host}/tekton/plain-buildah@{plain}"
    assert run(capsys, "verify", unsigned, "--no-tls-verify").code == 0
    refused = run(capsys, "verify", unsigned, "--key", str(secret / "cosign.pub"),
                  "--no-tls-verify")  # fmt: skip
    assert refused.code == 60 and "no signature" in refused.err
    top = raw_manifest(session_registry, "tekton/plain-buildah", plain)["layers"][-1]
    assert top["annotations"]["org.cncf.model.filepath"] != "/models/model.sig"


def test_the_pipeline_binds_the_signing_secret_to_the_task_it_runs():
    """The deploy Pipeline's optional signing-secret reaches its build Task's workspace of
    that name (the native Task's step then sets SIGNING_SECRET_DIR, as checked above)."""
    pipeline = yaml.safe_load((TEKTON / "pipeline-modelcar-deploy.yaml").read_text())
    (ws,) = [w for w in pipeline["spec"]["workspaces"] if w["name"] == "signing-secret"]
    assert ws["optional"] is True
    build = next(t for t in pipeline["spec"]["tasks"] if t["name"] == "build")
    bound = {w["name"]: w["workspace"] for w in build["workspaces"]}
    assert bound["signing-secret"] == "signing-secret"
    task = yaml.safe_load((TEKTON / f"task-{build['taskRef']['name']}.yaml").read_text())
    (declared,) = [w for w in task["spec"]["workspaces"] if w["name"] == "signing-secret"]
    assert declared["optional"] and declared["readOnly"]


@pytest.mark.slow
def test_native_task_signs_as_an_arbitrary_uid_with_a_read_only_root(
    builder, session_registry, base_image, capsys, tmp_path, monkeypatch
):
    """The native Task (its StepAction: restricted-v2's UID, no capability, read-only
    root fs) with the signing-secret bound, as the deploy Pipeline binds it."""
    secret = _secret_like(tmp_path / "signing-secret", capsys, monkeypatch)
    pod, digest, report = _run_task(
        builder,
        tmp_path / "signed",
        session_registry,
        base_image,
        "modelcar-build",
        "tekton/signed-native",
        secret,
    )
    assert "signed " in pod.logs, pod.logs
    _check_signed(capsys, session_registry, "tekton/signed-native", digest, report,
                  secret / "cosign.pub", tmp_path)  # fmt: skip
