"""Proven by running it, as shipped: scripts/builder-image.sh builds the builder image from
containerfiles/Containerfile (on a Debian root fs made offline with mmdebstrap, itself
served by the loopback registry), pushes it there and pins its digest into a copy of
deploy/; each overlay of that copy is rendered with `kubectl kustomize`, and the Tekton
steps and the Job's pod template *from the rendered overlay* run as the cluster would run
them (``podman kube play``, tests/support/kubeplay), pushing to the loopback registry; then
the pushed ModelCar runs the way KServe runs it.

Slow (minutes on first run: the Debian tar and the wheels are cached in
~/.cache/modelcar-builder/ afterwards). Skips, saying why, only when mmdebstrap cannot
reach the Debian mirror or pip the package index."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from tests.support.deploy_builder import (
    MANIFEST_TYPES,
    OPENSHIFT_UID,
    TINY,
    registry_digest,
    results_dir,
    sa_token,
    volume_dir,
)
from tests.support.kubeplay import StepPod, play, pod_manifest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_builder_image_script_pins_the_pushed_digest_into_every_overlay(builder, session_registry):
    """scripts/builder-image.sh against the loopback registry: the digest it pins is the one
    the registry serves, every overlay renders it wherever the builder image goes, and no
    placeholder or committed default is left."""
    repo, digest = builder.image.split("@")
    assert repo == f"{session_registry.host}/modelcar/builder"
    assert digest == registry_digest(session_registry.host, "modelcar/builder", "test")
    images = set()
    for overlay, docs in builder.rendered.items():
        text = yaml.safe_dump_all(docs)
        assert "quay.io/modelcar" not in text and "sha256:" + "0" * 64 not in text, overlay
        for doc in docs:
            if doc["kind"] == "Job":
                images |= {c["image"] for c in doc["spec"]["template"]["spec"]["containers"]}
            if doc["kind"] in ("StepAction", "Task", "Pipeline"):
                param = next(p for p in doc["spec"]["params"] if p["name"] == "builder-image")
                images.add(param["default"])
    assert images == {builder.image}
    # the checkout it ran in was a copy: the worktree's deploy/ still names the release tag
    pinned = (builder.build.checkout / "deploy/components/images/kustomization.yaml").read_text()
    assert f"digest: {digest}" in pinned
    assert digest not in (ROOT / "deploy/components/images/kustomization.yaml").read_text()


def test_builder_image_labels_base_digest_and_file_modes(builder, session_registry):
    """The Containerfile as built by the script: full OCI labels, the base's digest as its
    registry serves it, /etc/passwd not group-writable (nss_wrapper covers arbitrary UIDs),
    and no package manager run on a base that has everything (the build is offline)."""
    podman = builder.podman
    labels = json.loads(podman.run("image", "inspect", "--format", "{{json .Labels}}",
                                   builder.image).stdout)  # fmt: skip
    base_repo, base_tag = builder.base.rsplit(":", 1)
    base_digest = registry_digest(session_registry.host, base_repo.split("/", 1)[1], base_tag)
    prefix = "org.opencontainers.image."
    assert labels[prefix + "base.digest"] == base_digest
    assert labels[prefix + "base.name"] == builder.base
    assert labels[prefix + "source"] == labels[prefix + "url"] == "https://example.invalid/modelcar"
    assert labels[prefix + "version"] == "0.1.0" and labels[prefix + "created"]
    for key in ("title", "description", "licenses", "revision"):
        assert labels[prefix + key], key
    # the RUN line's own text is echoed in STEP n/m; its output would start a line
    assert "\nmodelcar-builder: installing" not in builder.build.log
    assert "modelcar-builder: installing $need" in builder.build.log  # the check ran
    script = "stat -c %a /etc/passwd; ls -l /usr/local/lib/libnss_wrapper.so"
    run = podman.run("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh",
                     builder.image, "-c", script)  # fmt: skip
    mode, lib = run.stdout.splitlines()
    assert mode == "644" and "libnss_wrapper.so ->" in lib


def _tiny_digests() -> dict[str, str]:
    return {
        p.relative_to(TINY).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in TINY.rglob("*")
        if p.is_file()
    }


def _check_results(results: Path, registry_host: str, repo: str, tag: str) -> str:
    url = (results / "IMAGE_URL").read_text()
    digest = (results / "IMAGE_DIGEST").read_text()
    ref = (results / "IMAGE_REF").read_text()
    assert url == f"{registry_host}/{repo}:{tag}"
    assert digest.startswith("sha256:") and len(digest) == 71
    assert ref == f"oci://{registry_host}/{repo}@{digest}"
    return digest


def _run_task(builder, tmp_path, session_registry, base_image, task_name, repo, run_as,
              params=None):  # fmt: skip
    podman = builder.podman
    task = builder.task(task_name)
    volume = volume_dir(tmp_path / "pvc")
    results = results_dir(tmp_path / "results")
    step = StepPod(
        task=task,
        step_name="build",
        params={
            "source": "models/tiny",
            "image": f"{session_registry.host}/{repo}:v1",
            "base-image": base_image.ref,
            "tls-verify": "false",
            "source-date-epoch": "1700000000",
            **(params or {}),
        },
        workspaces={"source": volume},
        results_dir=results,
        sa_token=sa_token(tmp_path / "token"),
        run_as=run_as,
        step_actions=builder.step_actions(),
    )
    pod = step.pod(repo.replace("/", "-"))
    assert pod["spec"]["containers"][0]["image"] == builder.image  # the overlay's, pinned
    run = play(podman, pod, tmp_path)
    assert run.exit_code == 0, run.logs
    digest = _check_results(results, session_registry.host, repo, "v1")
    assert (volume / "modelcar" / "report.json").is_file()
    return run, digest, results


def test_native_task_runs_as_arbitrary_uid_read_only_no_capabilities(
    builder, tmp_path, session_registry, base_image
):
    """The Task modelcar-build from the rendered openshift overlay: its step is the
    StepAction modelcar-build (no capability, read-only root, any UID)."""
    task = builder.task("modelcar-build")
    assert task["spec"]["steps"][0]["ref"] == {"name": "modelcar-build"}
    sc = builder.step_actions()["modelcar-build"]["spec"]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    run, digest, results = _run_task(builder, tmp_path, session_registry, base_image,
                                     "modelcar-build", "tekton/native",
                                     (OPENSHIFT_UID, 0))  # fmt: skip
    assert not (results / "MODEL_SOURCE_ARTIFACT_INPUTS").exists()  # a directory source
    assert "oci://" in run.logs
    ref = f"{session_registry.host}/tekton/native@{digest}"
    _kserve_contract(builder, tmp_path, ref, base_image.ref)
    # The same-UID rule (README): a server with another UID cannot read through /proc/PID/root.
    _kserve_contract(builder, tmp_path, ref, base_image.ref, server_uid=OPENSHIFT_UID + 1)


def _kserve_contract(
    builder, tmp_path, ref: str, reader_image: str, server_uid: int | None = None
) -> None:
    """KServe's modelcar mode for real: the init check, then the sidecar's /proc link in a
    pod with a shared PID namespace and an emptyDir at /mnt, read by another container
    with the same UID, every file's sha256 checked."""
    podman = builder.podman
    podman.pull(ref)
    podman.pull(reader_image)
    sc = {"runAsUser": OPENSHIFT_UID, "runAsGroup": 0, "runAsNonRoot": True}
    init = pod_manifest(
        "kserve-init",
        [{"name": "storage-initializer", "image": ref, "imagePullPolicy": "Never",
          "command": ["/bin/sh", "-c", '[ -d /models ] && [ "$(ls -A /models)" ]']}],
        [], sc, host_network=False,
    )  # fmt: skip
    assert play(podman, init, tmp_path).exit_code == 0
    wait = (
        "i=0; while [ ! -e /mnt/models/config.json ] && [ $i -lt 300 ]; "
        "do sleep 0.1; i=$((i+1)); done"
    )
    read = f"{wait}; cd /mnt/models/ && find . -type f -exec sha256sum {{}} +"
    pod = pod_manifest(
        "kserve-modelcar",
        [
            {"name": "modelcar", "image": ref, "imagePullPolicy": "Never",
             "command": ["/bin/sh", "-c", "ln -sf /proc/$$/root/models /mnt/ && sleep infinity"],
             "volumeMounts": [{"name": "mnt", "mountPath": "/mnt"}]},
            {"name": "server", "image": reader_image, "imagePullPolicy": "Never",
             "command": ["/bin/sh", "-c", read],
             "volumeMounts": [{"name": "mnt", "mountPath": "/mnt"}]},
        ],
        [{"name": "mnt", "emptyDir": {}}], sc, host_network=False,
    )  # fmt: skip
    pod["spec"]["shareProcessNamespace"] = True
    if server_uid is not None:
        pod["spec"]["containers"][1]["securityContext"] = {"runAsUser": server_uid}
        run = play(podman, pod, tmp_path, wait_for="server")
        # the link is there, but resolving /proc/PID/root of another UID's process fails
        assert run.exit_code != 0 and "config.json" not in run.logs, run.logs
        return
    run = play(podman, pod, tmp_path, wait_for="server")
    assert run.exit_code == 0, run.logs
    seen = {}
    for line in run.logs.splitlines():
        digest, _, path = line.partition("  ")
        if path.startswith("./"):
            seen[path[2:]] = digest
    assert seen == _tiny_digests()


def test_buildah_task_runs_with_exactly_the_capabilities_it_declares(
    builder, tmp_path, session_registry, base_image
):
    task = builder.task("modelcar-build-buildah")
    sc = task["spec"]["steps"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_CHROOT", "DAC_OVERRIDE"]}
    run, digest, _ = _run_task(builder, tmp_path, session_registry, base_image,
                               "modelcar-build-buildah", "tekton/buildah", None)  # fmt: skip
    assert "with buildah" in run.logs, run.logs
    _kserve_contract(builder, tmp_path, f"{session_registry.host}/tekton/buildah@{digest}",
                     base_image.ref)  # fmt: skip


def test_job_pod_template_runs_as_openshift_would(builder, tmp_path, session_registry, base_image):
    """The Job's pod template as the openshift overlay renders it (its image the pinned
    builder); only what points at the cluster is pointed at the test instead (source,
    image, base, plain-HTTP registry; the PVC is a hostPath)."""
    podman = builder.podman
    (job,) = builder.objects("openshift", "Job")
    spec = job["spec"]["template"]["spec"]
    volume = volume_dir(tmp_path / "pvc")
    target = f"{session_registry.host}/job/tiny:v1"
    assert spec["containers"][0]["image"] == builder.image
    container = dict(spec["containers"][0], imagePullPolicy="Never")
    local = {"MODELCAR_SOURCE": "/work/models/tiny", "MODELCAR_IMAGE": target,
             "MODELCAR_BASE_IMAGE": base_image.ref, "MODELCAR_TLS_VERIFY": "false"}  # fmt: skip
    env = [e for e in container["env"] if e["name"] not in local and "valueFrom" not in e]
    container["env"] = env + [{"name": k, "value": v} for k, v in local.items()]
    volumes = [
        {"name": "work", "hostPath": {"path": str(volume), "type": "Directory"}}
        if v["name"] == "work" else v
        for v in spec["volumes"]
    ]  # fmt: skip
    pod_sc = dict(spec["securityContext"], runAsUser=OPENSHIFT_UID, runAsGroup=0)
    run = play(podman, pod_manifest("job-build", [container], volumes, pod_sc), tmp_path)
    assert run.exit_code == 0, run.logs
    # stdout's one line is the storageUri (the logs interleave stderr's progress lines)
    urls = [line for line in run.logs.splitlines() if line.startswith("oci://")]
    assert len(urls) == 1, run.logs
    last = urls[0]
    assert last.startswith(f"oci://{session_registry.host}/job/tiny@sha256:"), run.logs
    assert (volume / "modelcar" / "report.json").is_file()
    _kserve_contract(builder, tmp_path, last.removeprefix("oci://"), base_image.ref)


def test_native_task_from_the_hub_gives_chains_its_input_artifact(
    builder, hub, tmp_path, session_registry, base_image
):
    """A Hub source through the Task's params (hf-endpoint: the Hub imitation on the
    host network): the step writes MODEL_SOURCE_ARTIFACT_INPUTS, the repo at the commit
    built, beside IMAGE_URL/IMAGE_DIGEST."""
    files = {p.relative_to(TINY).as_posix(): p.read_bytes() for p in TINY.rglob("*") if p.is_file()}
    hub.add_repo("acme/tiny", files)
    _, digest, results = _run_task(builder, tmp_path, session_registry, base_image,
                                   "modelcar-build", "tekton/hub", (OPENSHIFT_UID, 0),
                                   {"source": "hf://acme/tiny@main",
                                    "hf-endpoint": hub.endpoint})  # fmt: skip
    artifact = json.loads((results / "MODEL_SOURCE_ARTIFACT_INPUTS").read_text())
    assert artifact == {
        "uri": f"{hub.endpoint}/acme/tiny",
        "digest": f"sha1:{hub.head('acme/tiny')}",
    }
    assert digest == registry_digest(session_registry.host, "tekton/hub", "v1")


def test_kubernetes_overlay_job_runs_as_its_image_user_with_its_fsgroup(
    builder, tmp_path, session_registry, base_image
):
    """The kubernetes overlay's Job (fsGroup added, no runAsUser: the image's USER 1001),
    run with its pod securityContext as rendered."""
    (job,) = builder.objects("kubernetes", "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["securityContext"]["fsGroup"] == 1001
    volume = volume_dir(tmp_path / "pvc")
    target = f"{session_registry.host}/job/k8s:v1"
    container = dict(spec["containers"][0], imagePullPolicy="Never")
    assert container["image"] == builder.image
    local = {"MODELCAR_SOURCE": "/work/models/tiny", "MODELCAR_IMAGE": target,
             "MODELCAR_BASE_IMAGE": base_image.ref, "MODELCAR_TLS_VERIFY": "false"}  # fmt: skip
    env = [e for e in container["env"] if e["name"] not in local and "valueFrom" not in e]
    container["env"] = env + [{"name": k, "value": v} for k, v in local.items()]
    volumes = [
        {"name": "work", "hostPath": {"path": str(volume), "type": "Directory"}}
        if v["name"] == "work" else v
        for v in spec["volumes"]
    ]  # fmt: skip
    run = play(builder.podman, pod_manifest("job-k8s", [container], volumes,
                                            spec["securityContext"]), tmp_path)  # fmt: skip
    assert run.exit_code == 0, run.logs
    urls = [line for line in run.logs.splitlines() if line.startswith("oci://")]
    digest = registry_digest(session_registry.host, "job/k8s", "v1")
    assert urls == [f"oci://{session_registry.host}/job/k8s@{digest}"], run.logs


# -- the workstation one-liners (README "Workstation"), run as written ----------------------


def _readme_one_liner(tool: str) -> tuple[str, str]:
    """README's `mkdir` line and its `TOOL run ...` command (continuation lines joined)."""
    section = (ROOT / "README.md").read_text().split("### Workstation", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    lines = [" ".join(line.split()) for line in block.splitlines() if line.strip()]
    (mkdir,) = [line for line in lines if line.startswith("mkdir")]
    (command,) = [line for line in lines if line.startswith(f"{tool} run ")]
    return mkdir, command


def _as_test(command: str, tool_prefix: str, image: str, target: str, base: str) -> str:
    """The README command with only its placeholders swapped (each must be there) and what
    reaching a plain-HTTP loopback registry takes."""
    swaps = {
        "quay.io/YOU/modelcar-builder:0.1.0": image,
        "hf://ORG/NAME@REV": "models/tiny",
        "--image quay.io/YOU/model:v1": f"--image {target} --no-tls-verify --base-image {base}",
    }
    for old, new in swaps.items():
        assert command.count(old) == 1, f"README one-liner lost {old!r}: {command}"
        command = command.replace(old, new)
    _, rest = command.split(" run ", 1)
    return f"{tool_prefix} run --network host {rest}"


def _workstation_dir(tmp_path: Path) -> dict[str, str]:
    """An ordinary host directory (made by README's own mkdir, umask 022, owned by whoever
    runs the test) holding the model, and the auth files the one-liners mount."""
    xdg = tmp_path / "xdg"
    (xdg / "containers").mkdir(parents=True)
    (xdg / "containers" / "auth.json").write_text('{"auths": {}}')
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text('{"auths": {}}')
    return {"XDG_RUNTIME_DIR": str(xdg), "HOME": str(home)}


def _run_one_liner(tmp_path: Path, mkdir: str, command: str, env: dict[str, str]):
    subprocess.run(["bash", "-c", f"umask 022; {mkdir}"], cwd=tmp_path, check=True)
    work = tmp_path / "work"
    assert work.stat().st_mode & 0o777 == 0o755 and work.stat().st_uid == os.getuid()
    shutil.copytree(TINY, work / "models" / "tiny")
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    return work, proc


def test_workstation_podman_one_liner_runs_as_written(builder, tmp_path, session_registry,
                                                      base_image):  # fmt: skip
    mkdir, command = _readme_one_liner("podman")
    target = f"{session_registry.host}/workstation/podman:v1"
    line = _as_test(command, shlex.join(builder.podman.argv()), builder.image, target,
                    base_image.ref)  # fmt: skip
    env = dict(builder.podman.env, **_workstation_dir(tmp_path))
    work, proc = _run_one_liner(tmp_path, mkdir, line, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    digest = registry_digest(session_registry.host, "workstation/podman", "v1")
    assert (
        proc.stdout.strip().splitlines()[-1]
        == f"oci://{session_registry.host}/workstation/podman@{digest}"
    )
    assert (work / "modelcar-work").is_dir()
    assert (work / "modelcar-work").stat().st_uid == os.getuid()  # the files stay yours


def test_workstation_docker_one_liner_runs_as_written(
    builder,
    dockerd,
    tmp_path,
    session_registry,
    base_image,
):
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed (Debian docker.io, scripts/install-deps.sh)")
    mkdir, command = _readme_one_liner("docker")
    tagged = f"{session_registry.host}/modelcar/builder:test"  # what the script built
    archive = tmp_path / "builder.tar"
    builder.podman.run("save", "--format", "docker-archive", "-o", str(archive), tagged)
    denv = dict(os.environ, DOCKER_HOST=dockerd)
    subprocess.run(["docker", "load", "-q", "-i", str(archive)], env=denv, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    archive.unlink()
    target = f"{session_registry.host}/workstation/docker:v1"
    line = _as_test(command, "docker", tagged, target, base_image.ref)
    env = dict(denv, **_workstation_dir(tmp_path))
    work, proc = _run_one_liner(tmp_path, mkdir, line, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    digest = registry_digest(session_registry.host, "workstation/docker", "v1")
    assert (
        proc.stdout.strip().splitlines()[-1]
        == f"oci://{session_registry.host}/workstation/docker@{digest}"
    )
    assert (work / "modelcar-work").stat().st_uid == os.getuid()


def test_indexed_job_builds_the_line_of_its_index(builder, tmp_path, session_registry,
                                                  base_image):  # fmt: skip
    """The kubernetes-indexed overlay's pod template, its shell as written: index 1 takes
    line 2 of the list and puts the pod's namespace in for @NAMESPACE@. What Kubernetes
    adds is added: JOB_COMPLETION_INDEX, NAMESPACE (the fieldRef), the ConfigMap volume (a
    directory with the list here)."""
    (job,) = builder.objects("kubernetes-indexed", "Job")
    (config,) = builder.objects("kubernetes-indexed", "ConfigMap")
    assert "@NAMESPACE@" in config["data"]["list"]
    spec = job["spec"]["template"]["spec"]
    volume = volume_dir(tmp_path / "pvc")
    models = tmp_path / "models-list"
    models.mkdir()
    host = session_registry.host
    (models / "list").write_text(f"/work/nothing {host}/wrong/line:v1\n"
                                 f"/work/models/tiny {host}/@NAMESPACE@/indexed:v1\n")  # fmt: skip
    container = dict(spec["containers"][0], imagePullPolicy="Never")
    assert container["image"] == builder.image
    given = {"JOB_COMPLETION_INDEX": "1", "NAMESPACE": "team-a",
             "MODELCAR_BASE_IMAGE": base_image.ref, "MODELCAR_TLS_VERIFY": "false"}  # fmt: skip
    env = [e for e in container["env"] if "valueFrom" not in e]
    container["env"] = env + [{"name": k, "value": v} for k, v in given.items()]
    hostpaths = {"work": volume, "models": models}
    volumes = [
        {"name": v["name"], "hostPath": {"path": str(hostpaths[v["name"]]), "type": "Directory"}}
        if v["name"] in hostpaths else v
        for v in spec["volumes"]
    ]  # fmt: skip
    pod_sc = dict(spec["securityContext"], runAsUser=OPENSHIFT_UID, runAsGroup=0)
    pod_sc.pop("fsGroup", None)
    run = play(builder.podman, pod_manifest("job-indexed", [container], volumes, pod_sc), tmp_path)
    assert run.exit_code == 0, run.logs
    digest = registry_digest(host, "team-a/indexed", "v1")
    assert f"oci://{host}/team-a/indexed@{digest}" in run.logs.splitlines()
    assert (volume / "model-1" / "report.json").is_file()


def _ca_directory(directory: Path, ca_file: Path, name: str) -> Path:
    """A directory holding the registry's CA as ``name``, readable by the pod's UID."""
    directory.mkdir()
    shutil.copyfile(ca_file, directory / name)
    directory.chmod(0o755)
    (directory / name).chmod(0o644)
    return directory


def test_native_task_trusts_the_bundle_openshift_pipelines_injects(
    builder, tmp_path, session_registry_tls
):
    """A registry behind a CA the system does not know, TLS verified, no ca-bundle
    workspace and no ca-file: the pod gets what OpenShift Pipelines adds to every step, the
    cluster's trusted bundle at /tekton-custom-certs/ca-bundle.crt and SSL_CERT_DIR naming
    it, and the build trusts it."""
    reg = session_registry_tls
    certs = _ca_directory(tmp_path / "tekton-custom-certs", reg.ca_file, "ca-bundle.crt")
    volume = volume_dir(tmp_path / "pvc")
    results = results_dir(tmp_path / "results")
    step = StepPod(
        task=builder.task("modelcar-build"),
        step_name="build",
        params={"source": "models/tiny", "image": f"{reg.host}/tekton/tls:v1",
                "base-image": "scratch", "source-date-epoch": "1700000000"},  # TLS: the push
        workspaces={"source": volume},
        results_dir=results,
        sa_token=sa_token(tmp_path / "token"),
        step_actions=builder.step_actions(),
    )  # fmt: skip
    pod = step.pod("tekton-tls")
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODELCAR_TLS_VERIFY"] == "true" and env["MODELCAR_CA_FILE"] == ""
    assert env["CA_BUNDLE_DIR"] == ""  # the ca-bundle workspace is not bound
    cert_dirs = "/tekton-custom-certs:/etc/ssl/certs:/etc/pki/tls/certs"
    container["env"].append({"name": "SSL_CERT_DIR", "value": cert_dirs})
    mount = {"name": "custom-certs", "mountPath": "/tekton-custom-certs", "readOnly": True}
    container["volumeMounts"].append(mount)
    certs_dir = {"path": str(certs), "type": "Directory"}
    pod["spec"]["volumes"].append({"name": "custom-certs", "hostPath": certs_dir})
    run = play(builder.podman, pod, tmp_path)
    assert run.exit_code == 0, run.logs
    digest = (results / "IMAGE_DIGEST").read_text()
    assert (results / "IMAGE_REF").read_text() == f"oci://{reg.host}/tekton/tls@{digest}"


def test_native_task_trusts_the_ca_bundle_workspace(builder, tmp_path, session_registry_tls):
    """The same TLS registry, its CA given the Tekton way: the ca-bundle workspace bound
    (a ConfigMap with ca.crt), through the Task's step param to the StepAction's
    CA_BUNDLE_DIR and the entrypoint's MODELCAR_CA_FILE; no SSL_CERT_DIR."""
    reg = session_registry_tls
    bundle = _ca_directory(tmp_path / "ca-bundle", reg.ca_file, "ca.crt")
    volume = volume_dir(tmp_path / "pvc")
    results = results_dir(tmp_path / "results")
    step = StepPod(
        task=builder.task("modelcar-build"),
        step_name="build",
        params={
            "source": "models/tiny",
            "image": f"{reg.host}/tekton/cabundle:v1",
            "base-image": "scratch",
        },
        workspaces={"source": volume, "ca-bundle": bundle},
        results_dir=results,
        sa_token=sa_token(tmp_path / "token"),
        step_actions=builder.step_actions(),
    )
    pod = step.pod("tekton-cabundle")
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["CA_BUNDLE_DIR"] == "/workspace/ca-bundle" and "SSL_CERT_DIR" not in env
    run = play(builder.podman, pod, tmp_path)
    assert run.exit_code == 0, run.logs
    digest = registry_digest_tls(reg, "tekton/cabundle", "v1")
    assert (results / "IMAGE_REF").read_text() == f"oci://{reg.host}/tekton/cabundle@{digest}"


def registry_digest_tls(reg, repo: str, reference: str) -> str:
    resp = requests.head(f"https://{reg.host}/v2/{repo}/manifests/{reference}",
                         headers={"Accept": MANIFEST_TYPES}, verify=str(reg.ca_file),
                         timeout=30)  # fmt: skip
    resp.raise_for_status()
    return resp.headers["Docker-Content-Digest"]
