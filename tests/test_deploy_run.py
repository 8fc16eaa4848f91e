"""Proven by running it: the builder image built from containerfiles/Containerfile (on a
Debian root fs made offline with mmdebstrap), then each Tekton step and the Job's pod
template run as the cluster would run them (``podman kube play``, tests/support/kubeplay),
pushing to the loopback registry; then the pushed ModelCar run the way KServe runs it.

Slow (minutes on first run: the Debian tar and the wheels are cached in
~/.cache/modelcar-builder/ afterwards). Skips, saying why, only when mmdebstrap cannot
reach the Debian mirror or pip the package index."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support import builder_image
from tests.support.kubeplay import StepPod, play, pod_manifest
from tests.support.podman import make_podman, podman_available
from tests.support.registry import sa_like_token

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "modelcar_builder" / "examples" / "tiny-model"
OPENSHIFT_UID = 1000680000  # what restricted-v2 assigns: a UID with no passwd entry, group 0
VOLUME_OWNER = 4242  # the PVC belongs to someone else; group 0 may write (setgid dir)


def _load(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d]


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    why = podman_available()
    if why:
        pytest.skip(why)
    tar = builder_image.debian_base_tar()
    if isinstance(tar, str):
        print(f"skipping: {tar}")
        pytest.skip(tar)
    wheels = builder_image.wheelhouse()
    if isinstance(wheels, str):
        print(f"skipping: {wheels}")
        pytest.skip(wheels)
    podman = make_podman(tmp_path_factory.mktemp("podman"))
    try:
        base = builder_image.import_base(podman, tar)
        image = builder_image.build_builder_image(podman, base, wheels)
        yield podman, image
    finally:
        podman.close()


def _volume(path: Path, model: bool = True) -> Path:
    """A PVC-like directory owned by another UID, group 0, setgid, group-writable, with
    the tiny model in models/tiny (owned by that UID too)."""
    path.mkdir(parents=True)
    if model:
        shutil.copytree(TINY, path / "models" / "tiny")
    for p in [path, *path.rglob("*")]:
        os.chown(p, VOLUME_OWNER, 0, follow_symlinks=False)
        if p.is_dir():
            p.chmod(0o2775)
    return path


def _results_dir(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o777)  # Tekton's /tekton/results is writable by the step's UID
    return path


def _sa_token(path: Path) -> Path:
    path.write_text(sa_like_token())
    path.chmod(0o644)
    return path


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


def _run_task(builder, tmp_path, session_registry, base_image, task_file, repo, run_as):
    podman, image = builder
    task = _load(task_file)[0]
    volume = _volume(tmp_path / "pvc")
    results = _results_dir(tmp_path / "results")
    step = StepPod(
        task=task,
        step_name="build",
        image=image,
        params={
            "source": "models/tiny",
            "image": f"{session_registry.host}/{repo}:v1",
            "base-image": base_image.ref,
            "tls-verify": "false",
            "source-date-epoch": "1700000000",
        },
        workspaces={"source": volume},
        results_dir=results,
        sa_token=_sa_token(tmp_path / "token"),
        run_as=run_as,
    )
    run = play(podman, step.pod(repo.replace("/", "-")), tmp_path)
    assert run.exit_code == 0, run.logs
    digest = _check_results(results, session_registry.host, repo, "v1")
    assert (volume / "modelcar" / "report.json").is_file()
    return run, digest


def test_native_task_runs_as_arbitrary_uid_read_only_no_capabilities(
    builder, tmp_path, session_registry, base_image
):
    task = _load("deploy/tekton/task-modelcar-build.yaml")[0]
    sc = task["spec"]["steps"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    run, digest = _run_task(builder, tmp_path, session_registry, base_image,
                            "deploy/tekton/task-modelcar-build.yaml", "tekton/native",
                            (OPENSHIFT_UID, 0))  # fmt: skip
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
    podman, _ = builder
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
    task = _load("deploy/tekton/task-modelcar-build-buildah.yaml")[0]
    sc = task["spec"]["steps"][0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_CHROOT", "DAC_OVERRIDE"]}
    run, digest = _run_task(builder, tmp_path, session_registry, base_image,
                            "deploy/tekton/task-modelcar-build-buildah.yaml", "tekton/buildah",
                            None)  # fmt: skip
    assert "with buildah" in run.logs, run.logs
    _kserve_contract(builder, tmp_path, f"{session_registry.host}/tekton/buildah@{digest}",
                     base_image.ref)  # fmt: skip


def test_job_pod_template_runs_as_openshift_would(builder, tmp_path, session_registry, base_image):
    """The Job's pod template as written; only what points at the cluster is pointed at the
    test instead (source, image, base, plain-HTTP registry; the PVC is a hostPath)."""
    podman, image = builder
    job = _load("deploy/kubernetes/job-modelcar-build.yaml")[0]
    spec = job["spec"]["template"]["spec"]
    volume = _volume(tmp_path / "pvc")
    target = f"{session_registry.host}/job/tiny:v1"
    container = dict(spec["containers"][0], image=image, imagePullPolicy="Never")
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
