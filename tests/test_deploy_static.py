"""deploy/ checked without a cluster: Kubernetes objects against the bundled schemas
(kubernetes-validate --strict), Tekton references against their declarations, and every
MODELCAR_* variable and CLI argument the manifests pass against the click command itself."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from modelcar_builder.cli import cli
from modelcar_builder.context import DEFAULT_BASE_IMAGE
from modelcar_builder.engines.buildah import choices as buildah_settings
from scripts.freeze_constraints import closure
from tests.support.kubeplay import StepPod

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
BUILDER = "modelcar-builder@sha256:"
CORE_GROUPS = ("v1", "batch/v1", "apps/v1", "rbac.authorization.k8s.io/v1")
_TEKTON_REF = re.compile(
    r"\$\((params|workspaces|results)\.([A-Za-z0-9_\-]+)(?:\[\*\])?([.\w-]*)\)"
)
# Engine settings read from the environment only (README "Engines"), not click options.
ENGINE_SETTINGS = {v for k, v in vars(buildah_settings).items() if k.startswith("ENV_")}
_TASK_RESULT = re.compile(r"\$\(tasks\.([A-Za-z0-9_\-]+)\.results\.([A-Za-z0-9_\-]+)\)")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


ALL = [(p, d) for p in MANIFESTS for d in _docs(p)]


def _of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in ALL if d["kind"] == kind]


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


# -- Kubernetes schemas -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "doc"),
    [(p, d) for p, d in ALL if d["apiVersion"] in CORE_GROUPS],
    ids=lambda v: v.name if isinstance(v, Path) else v["kind"] if isinstance(v, dict) else "",
)
def test_kubernetes_objects_validate_strictly(path, doc):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(doc, "1.37", strict=True)


def _tasks() -> list[tuple[str, dict]]:
    """Every Task: the Task files, and each Pipeline's inline taskSpecs."""
    out = [(d["metadata"]["name"], d) for _, d in _of_kind("Task")]
    for _, pipe in _of_kind("Pipeline"):
        for t in pipe["spec"]["tasks"]:
            if "taskSpec" in t:
                out.append((f"{pipe['metadata']['name']}/{t['name']}", {"spec": t["taskSpec"]}))
    return out


def test_task_steps_make_pods_that_validate_strictly(tmp_path):
    """The pod a step becomes (tests/support/kubeplay, as the run tests play it)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for _, task in _of_kind("Task"):
        for step in task["spec"]["steps"]:
            params = {p["name"]: "x" for p in task["spec"]["params"] if "default" not in p}
            pod = StepPod(task, step["name"], "img", params, {"source": tmp_path},
                          tmp_path, tmp_path / "token").pod("p")  # fmt: skip
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
            if "matrix" not in t:
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
        for text in _strings(pipe["spec"].get("results", [])):
            for other, result in _TASK_RESULT.findall(text):
                task = tasks[by_name[other]["taskRef"]["name"]]
                assert result in {r["name"] for r in task["results"]}, (other, result)


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
    for _, task in _of_kind("Task"):
        results = {r["name"]: r for r in task["spec"]["results"]}
        assert set(results) == {"IMAGE_URL", "IMAGE_DIGEST", "IMAGE_REF"}
        assert all(r.get("description") for r in results.values())
        assert "oci://" in results["IMAGE_REF"]["description"]


# -- the CLI the manifests call -----------------------------------------------------------------


def _builder_containers() -> list[tuple[str, dict]]:
    out = []
    for path, doc in ALL:
        if doc["kind"] == "Task":
            out += [(f"{path.name}/{s['name']}", s) for s in doc["spec"]["steps"]]
        elif doc["kind"] == "Job":
            pod = doc["spec"]["template"]["spec"]
            out += [(f"{path.name}/{c['name']}", c) for c in pod["containers"]]
    return [(n, c) for n, c in out if BUILDER in c["image"]]


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


def test_builder_image_is_pinned_by_digest_everywhere():
    images = [s for p, d in ALL for s in _strings(d) if re.match(r"^[\w.-]+\.\w+/\S+$", s)]
    refs = [i for i in images if "modelcar-builder" in i]
    assert refs and all(BUILDER in i for i in refs), refs


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
    for _, doc in ALL:
        for text in [yaml.safe_dump(doc)]:
            assert "fsGroup: 0" not in text  # restricted-v2 rejects it


def test_task_defaults_match_the_cli():
    for _, task in _of_kind("Task"):
        params = {p["name"]: p for p in task["spec"]["params"]}
        assert params["base-image"]["default"] == DEFAULT_BASE_IMAGE
        platform = next(p for p in cli.commands["build"].params if p.name == "platform")
        assert params["platform"]["default"] == platform.default


def test_jobs_do_not_retry_bad_input():
    readme = _exit_codes_in_readme()
    retryable = {1, 20, 21, 50, 52, 60, 130}
    assert retryable <= readme
    for path, job in _of_kind("Job"):
        spec = job["spec"]
        pod = spec["template"]["spec"]
        assert pod["serviceAccountName"] == "modelcar-builder", path
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "fsGroup" not in pod["securityContext"]
        rule = spec["podFailurePolicy"]["rules"][0]
        codes = set(rule["onExitCodes"]["values"])
        assert codes <= readme and not codes & retryable
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
