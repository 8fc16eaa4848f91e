"""One model built by N pods, the manifests as shipped (README "Very large models"): the
kubernetes-parts overlay's Indexed Job (one pod per index, all at once, `--stream --part
index/N`, no volume) with its assemble Job, and the Tekton Pipeline modelcar-build-parts
(one pod per matrix entry, then the assemble Task), each pod made from the rendered
overlay and run with ``podman kube play`` (tests/support/kubeplay) as the cluster would
run it, from the Hub imitation to the loopback registry. The image the N pods give has the
digest a one-pod build of the same model gives, as the registry itself answers.

Slow: it shares the builder image of tests/test_deploy_run.py (tests/support/deploy_builder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy_builder import (
    OPENSHIFT_UID,
    Builder,
    registry_digest,
    results_dir,
    sa_token,
)
from tests.support.kubeplay import PodRun, StepPod, play, play_all, pod_manifest
from tests.support.models import MIB, model_files

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
REPO = "acme/parts"
THRESHOLD = str(MIB)  # each 2 MiB shard a layer of its own: 5 layers for the parts to share
EPOCH = "1700000000"


def _one_pod_digest(hub, tmp_path: Path, host: str, base: str, repo: str, epoch: str | None):
    """The same model built in one process, as one pod would: its digest, read back."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_ENDPOINT=hub.endpoint,
               MODELCAR_LAYER_THRESHOLD=THRESHOLD, MODELCAR_BASE_IMAGE=base,
               MODELCAR_TLS_VERIFY="false")  # fmt: skip
    env.pop("SOURCE_DATE_EPOCH", None)
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = epoch
    proc = subprocess.run(
        [sys.executable, "-m", "modelcar_builder", "build", f"hf://{REPO}@main",
         "--image", f"{host}/{repo}:v1", "--engine", "native",
         "--workspace", str(tmp_path / "one-pod")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return registry_digest(host, repo, "v1")


def _assert_all_succeeded(runs: list[PodRun], pods: list[dict]) -> None:
    for run in runs:
        assert run.exit_code == 0, f"{run.name}:\n{run.logs}"
    assert len(runs) == len(pods)


# -- the Indexed Job and the assemble Job -------------------------------------------------------


def _job_pod(builder: Builder, job: dict, name: str, config: dict[str, str],
             extra: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """A Job's pod as the kubelet makes it: configMapKeyRef variables filled from the
    ConfigMap's data, an optional Secret's variable left out, ``extra`` added."""
    spec = job["spec"]["template"]["spec"]
    container = dict(spec["containers"][0], imagePullPolicy="Never")
    assert container["image"] == builder.image  # the overlay's, pinned
    env = []
    for item in container["env"]:
        ref = item.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            assert ref["configMapKeyRef"]["name"] == "modelcar-parts"
            env.append({"name": item["name"], "value": config[ref["configMapKeyRef"]["key"]]})
        elif "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["optional"]  # no hf-token Secret here
        else:
            env.append(item)
    container["env"] = env + [{"name": k, "value": v} for k, v in extra.items()]
    return pod_manifest(name, [container], spec["volumes"], spec["securityContext"])


def test_indexed_job_parts_and_assemble_give_the_one_pod_digest(
    builder, hub, tmp_path, session_registry, base_image
):
    """N pods of the Indexed Job (JOB_COMPLETION_INDEX 0..N-1, as Kubernetes sets it) and
    the assemble Job's pod, all started at once: every part succeeds, the assemble waits
    for them and prints the image, whose digest is the one-pod build's."""
    hub.add_repo(REPO, model_files(n_shards=4, shard_size=2 * MIB))
    overlay = "kubernetes-parts"
    job = builder.named(overlay, "Job", "modelcar-build-parts")
    assemble = builder.named(overlay, "Job", "modelcar-assemble")
    config = dict(builder.named(overlay, "ConfigMap", "modelcar-parts")["data"])
    n = job["spec"]["completions"]
    assert n == job["spec"]["parallelism"] == int(config["parts"]) >= 2
    host = session_registry.host
    config.update(source=f"hf://{REPO}@main", image=f"{host}/parts/job:v1")
    # What points at the cluster, pointed at the test: the Hub, the base, plain HTTP; and
    # the 1 MiB threshold the one-pod build uses too.
    extra = {"HF_ENDPOINT": hub.endpoint, "MODELCAR_BASE_IMAGE": base_image.ref,
             "MODELCAR_TLS_VERIFY": "false", "MODELCAR_LAYER_THRESHOLD": THRESHOLD}  # fmt: skip
    pods = [
        _job_pod(builder, job, f"parts-job-{i}", config, dict(extra, JOB_COMPLETION_INDEX=str(i)))
        for i in range(n)
    ]
    pods.append(_job_pod(builder, assemble, "parts-assemble", config,
                         {"MODELCAR_TLS_VERIFY": "false"}))  # fmt: skip
    runs = play_all(builder.podman, pods, tmp_path, timeout=900)
    _assert_all_succeeded(runs, pods)
    digest = registry_digest(host, "parts/job", "v1")
    assert f"oci://{host}/parts/job@{digest}" in runs[-1].logs.splitlines(), runs[-1].logs
    one = _one_pod_digest(hub, tmp_path, host, base_image.ref, "parts/one-job", None)
    assert digest == one


# -- the Pipeline: a matrix over the part Task, then the assemble Task --------------------------


def _pipeline_task_params(pipe: dict, task: dict, run: dict[str, Any]) -> dict[str, Any]:
    """A pipeline task's params as Tekton resolves them: $(params.x) (and an array's
    [*]) from the run's params, else the Pipeline's defaults."""
    values = {p["name"]: p.get("default") for p in pipe["spec"]["params"]}
    values.update(run)

    def one(text: str) -> Any:
        whole = re.fullmatch(r"\$\(params\.([\w-]+)\[\*\]\)", text)
        if whole:
            return values[whole.group(1)]
        return re.sub(r"\$\(params\.([\w-]+)\)", lambda m: values[m.group(1)], text)

    out: dict[str, Any] = {}
    for p in task.get("params", []):
        value = p["value"]
        if isinstance(value, list):
            out[p["name"]] = [x for v in value for x in _as_list(one(v))]
        else:
            out[p["name"]] = one(value)
    return out


def _as_list(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def test_pipeline_matrix_of_parts_then_assemble_give_the_one_pod_digest(
    builder, hub, tmp_path, session_registry, base_image
):
    """The Pipeline's part task once per matrix value, all at once (each TaskRun a pod,
    the StepAction resolved), then its assemble task (runAfter): every part succeeds,
    the assemble writes the Tekton results, and the digest is the one-pod build's."""
    hub.add_repo(REPO, model_files(n_shards=4, shard_size=2 * MIB))
    host = session_registry.host
    pipe = builder.named("openshift", "Pipeline", "modelcar-build-parts")
    tasks = {t["name"]: t for t in pipe["spec"]["tasks"]}
    run_params = {"source": f"hf://{REPO}@main", "image": f"{host}/parts/tekton:v1",
                  "base-image": base_image.ref, "tls-verify": "false",
                  "hf-endpoint": hub.endpoint, "source-date-epoch": EPOCH,
                  "extra-args": ["--layer-threshold", THRESHOLD]}  # fmt: skip
    part_params = _pipeline_task_params(pipe, tasks["part"], run_params)
    (matrix,) = tasks["part"]["matrix"]["params"]
    numbers = _pipeline_task_params(pipe, {"params": [matrix]}, run_params)[matrix["name"]]
    assert numbers == [str(k) for k in range(1, int(part_params["parts"]) + 1)]
    token = sa_token(tmp_path / "token")
    part_task = builder.task(tasks["part"]["taskRef"]["name"])
    pods = []
    for k in numbers:
        step = StepPod(task=part_task, step_name="build", params=dict(part_params, part=k),
                       sa_token=token, run_as=(OPENSHIFT_UID, 0),
                       step_actions=builder.step_actions())  # fmt: skip
        pods.append(step.pod(f"parts-tekton-{k}"))
    assert pods[0]["spec"]["containers"][0]["image"] == builder.image
    _assert_all_succeeded(play_all(builder.podman, pods, tmp_path, timeout=900), pods)

    assert tasks["assemble"]["runAfter"] == ["part"]
    results = results_dir(tmp_path / "results")
    step = StepPod(task=builder.task(tasks["assemble"]["taskRef"]["name"]),
                   step_name="assemble",
                   params=_pipeline_task_params(pipe, tasks["assemble"], run_params),
                   results_dir=results, sa_token=token, run_as=(OPENSHIFT_UID, 0))  # fmt: skip
    run = play(builder.podman, step.pod("parts-tekton-assemble"), tmp_path)
    assert run.exit_code == 0, run.logs
    digest = registry_digest(host, "parts/tekton", "v1")
    assert (results / "IMAGE_URL").read_text() == f"{host}/parts/tekton:v1"
    assert (results / "IMAGE_DIGEST").read_text() == digest
    assert (results / "IMAGE_REF").read_text() == f"oci://{host}/parts/tekton@{digest}"
    one = _one_pod_digest(hub, tmp_path, host, base_image.ref, "parts/one-tekton", EPOCH)
    assert digest == one
