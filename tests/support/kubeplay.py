"""Run a Tekton step or a Job's pod template the way the cluster would, with
``podman kube play``: everything taken from the manifest as written (image, command, args,
env, securityContext, computeResources, volumes); the tests render the manifests from an
overlay whose images point at the builder image they built and pushed.

What the cluster would add is added here, as OpenShift does it:
- the pod ``securityContext`` restricted-v2 injects (``runAsUser`` from the namespace
  range, group 0) — or, for a Task that asks for a UID, that UID;
- the workspace volume as a ``hostPath`` directory owned by another UID, group-writable;
- ``/tekton/results`` (a ``hostPath`` the test reads back) and the service-account token
  at ``/var/run/secrets/kubernetes.io/serviceaccount/token``;
- Tekton's substitutions: ``$(params.x)`` (given or default; ``[*]`` expands an array),
  ``$(workspaces.x.path)`` (``""`` for an optional workspace left unbound) and
  ``$(results.x.path)``;
- a step that references a StepAction (``ref: {name: ...}``) resolved as Tekton's
  resolveStepRef does: the StepAction's image, command, args, env, workingDir,
  volumeMounts and securityContext, its ``$(params.x)`` replaced by the step's params
  (themselves substituted with the Task's) or the StepAction's defaults;
- an ``optional`` secretKeyRef whose Secret does not exist is dropped, and an ``optional``
  Secret volume whose Secret does not exist is an empty directory, as the kubelet does
  (podman kube play refuses both).

The pod joins the host network only to reach the test registry on 127.0.0.1 (a pod on a
cluster reaches its registry by the pod network); ``podman kube play --network none``
works for everything else."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.podman import Podman
from tests.support.waiting import wait_until

WORKSPACE_ROOT = "/workspace"
RESULTS_DIR = "/tekton/results"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_REF = re.compile(r"\$\((params|workspaces|results)\.([A-Za-z0-9_.\-\[\]\*]+)\)")


@dataclass
class PodRun:
    name: str
    exit_code: int
    logs: str


@dataclass
class StepPod:
    """One Tekton step as the pod Tekton would make for it."""

    task: dict[str, Any]
    step_name: str
    image: str | None = None  # None: the step's own image (substituted)
    params: dict[str, str | list[str]] = field(default_factory=dict)
    workspaces: dict[str, Path] = field(default_factory=dict)  # bound ones, host dirs
    results_dir: Path | None = None
    sa_token: Path | None = None
    run_as: tuple[int, int] | None = (1000680000, 0)  # restricted-v2's injected UID:GID
    step_actions: dict[str, dict[str, Any]] = field(default_factory=dict)  # by name

    def substitute(self, text: str) -> str | list[str]:
        """Tekton's variable substitution for one string; an array param alone in the
        string (``$(params.x[*])``) gives a list."""
        spec = self.task["spec"]
        whole = re.fullmatch(r"\$\(params\.([A-Za-z0-9_\-]+)\[\*\]\)", text)
        if whole:
            return list(self._param(whole.group(1), spec))

        def one(m: re.Match[str]) -> str:
            kind, rest = m.group(1), m.group(2)
            if kind == "params":
                value = self._param(rest, spec)
                assert isinstance(value, str), f"array param {rest} used as a string"
                return value
            if kind == "workspaces":
                name, _, attr = rest.partition(".")
                declared = {w["name"]: w for w in spec.get("workspaces", [])}
                assert name in declared, f"workspace {name} is not declared"
                if attr == "bound":
                    return "true" if name in self.workspaces else "false"
                assert attr == "path", rest
                return f"{WORKSPACE_ROOT}/{name}" if name in self.workspaces else ""
            name, _, attr = rest.partition(".")
            assert attr == "path", rest
            return f"{RESULTS_DIR}/{name}"

        return _REF.sub(one, text)

    def _param(self, name: str, spec: dict[str, Any]) -> str | list[str]:
        declared = {p["name"]: p for p in spec.get("params", [])}
        assert name in declared, f"param {name} is not declared"
        if name in self.params:
            return self.params[name]
        assert "default" in declared[name], f"param {name} has no default and was not given"
        return declared[name]["default"]

    def resolve_step(self) -> dict[str, Any]:
        """The step as written, or, for a ``ref``, merged with its StepAction."""
        spec = self.task["spec"]
        step = copy.deepcopy(next(s for s in spec["steps"] if s["name"] == self.step_name))
        if "ref" not in step:
            return step
        action = self.step_actions[step["ref"]["name"]]["spec"]
        declared = {p["name"]: p for p in action.get("params", [])}
        given = {p["name"]: p["value"] for p in step.get("params", [])}
        assert set(given) <= set(declared), (
            f"step params not in the StepAction: {set(given) - set(declared)}"
        )
        values = {}
        for name, p in declared.items():
            assert name in given or "default" in p, f"StepAction param {name} not given"
            values[name] = given.get(name, p.get("default"))

        def sub(text: str) -> str | list[str]:
            whole = re.fullmatch(r"\$\(params\.([A-Za-z0-9_\-]+)\[\*\]\)", text)
            if whole:
                value = values[whole.group(1)]
                assert isinstance(value, list), text
                return list(value)

            def one(m: re.Match[str]) -> str:
                assert m.group(1) in values, f"StepAction param {m.group(1)} not declared"
                value = values[m.group(1)]
                assert isinstance(value, str), f"array param {m.group(1)} used as a string"
                return value

            return re.sub(r"\$\(params\.([A-Za-z0-9_\-]+)\)", one, text)

        def walk(node: Any) -> Any:
            if isinstance(node, str):
                return sub(node)
            if isinstance(node, list):
                return (
                    _flatten(walk(v) for v in node)
                    if all(isinstance(v, str) for v in node)
                    else [walk(v) for v in node]
                )
            if isinstance(node, dict):
                return {k: walk(v) for k, v in node.items()}
            return node

        resolved = {k: v for k, v in step.items() if k not in ("ref", "params")}
        for key in ("image", "command", "args", "script", "workingDir", "env", "volumeMounts",
                    "securityContext"):  # fmt: skip
            if key in action:
                resolved[key] = walk(copy.deepcopy(action[key]))
        return resolved

    def pod(self, name: str) -> dict[str, Any]:
        spec = self.task["spec"]
        step = self.resolve_step()
        image = self.image or self.substitute(step["image"])
        assert isinstance(image, str)
        container: dict[str, Any] = {"name": step["name"], "image": image,
                                     "imagePullPolicy": "Never"}  # fmt: skip
        for key in ("command", "args"):
            if key in step:
                container[key] = _flatten(self.substitute(a) for a in step[key])
        if "workingDir" in step:
            container["workingDir"] = self.substitute(step["workingDir"])
        env = []
        for item in step.get("env", []):
            if "valueFrom" in item:
                ref = item["valueFrom"].get("secretKeyRef", {})
                assert ref.get("optional"), f"env {item['name']} needs a Secret this test lacks"
                continue  # optional Secret absent: the kubelet leaves the variable unset
            value = self.substitute(item["value"])
            assert isinstance(value, str), item
            env.append({"name": item["name"], "value": value})
        container["env"] = env
        if "computeResources" in step:
            container["resources"] = step["computeResources"]
        container["securityContext"] = step.get("securityContext", {})
        mounts = [{k: self.substitute(v) if isinstance(v, str) else v for k, v in m.items()}
                  for m in step.get("volumeMounts", [])]  # fmt: skip
        volumes = [copy.deepcopy(v) for v in spec.get("volumes", [])]
        for ws, host in self.workspaces.items():
            mounts.append({"name": f"ws-{ws}", "mountPath": f"{WORKSPACE_ROOT}/{ws}"})
            volumes.append({"name": f"ws-{ws}",
                            "hostPath": {"path": str(host), "type": "Directory"}})  # fmt: skip
        if self.results_dir is not None:
            mounts.append({"name": "tekton-results", "mountPath": RESULTS_DIR})
            results = {"path": str(self.results_dir), "type": "Directory"}
            volumes.append({"name": "tekton-results", "hostPath": results})
        if self.sa_token is not None:
            mounts.append({"name": "sa-token", "mountPath": f"{SA_DIR}/token", "readOnly": True})
            volumes.append({"name": "sa-token",
                            "hostPath": {"path": str(self.sa_token), "type": "File"}})  # fmt: skip
        container["volumeMounts"] = mounts
        pod_sc: dict[str, Any] = {}
        if self.run_as is not None and "runAsUser" not in container["securityContext"]:
            pod_sc = {"runAsUser": self.run_as[0], "runAsGroup": self.run_as[1]}
        return pod_manifest(name, [container], volumes, pod_sc)


def _flatten(items) -> list[str]:
    out: list[str] = []
    for item in items:
        out.extend(item if isinstance(item, list) else [item])
    return out


def pod_manifest(
    name: str,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    security_context: dict[str, Any],
    host_network: bool = True,
) -> dict[str, Any]:
    volumes = [_absent_optional_secret(v) for v in volumes]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "hostNetwork": host_network,
            "securityContext": security_context,
            "containers": containers,
            "volumes": volumes,
        },
    }


def _absent_optional_secret(volume: dict[str, Any]) -> dict[str, Any]:
    """The kubelet mounts an optional Secret that does not exist as an empty directory
    (the tests create no Secret)."""
    secret = volume.get("secret")
    if secret is None:
        return volume
    assert secret.get("optional"), f"volume {volume['name']} needs a Secret this test lacks"
    return {"name": volume["name"], "emptyDir": {}}


def play(
    podman: Podman,
    manifest: dict[str, Any],
    workdir: Path,
    timeout: float = 600,
    wait_for: str | None = None,
) -> PodRun:
    """``podman kube play`` the pod, wait for one container (default: the first) to exit,
    collect its logs, remove the pod."""
    (run,) = play_all(podman, [manifest], workdir, timeout, wait_for)
    return run


def play_all(
    podman: Podman,
    manifests: list[dict[str, Any]],
    workdir: Path,
    timeout: float = 600,
    wait_for: str | None = None,
) -> list[PodRun]:
    """Every pod started before any is waited for (as a Job's pods, or a matrix's
    TaskRuns, run at once), then each one's container (``wait_for``, default its first)
    waited for to exit in order, its logs collected, up to the first that fails (the
    runs returned end there); every pod removed at the end."""
    started: list[tuple[str, str]] = []
    volumes: list[str] = []
    try:
        for manifest in manifests:
            manifest, owned = _own_empty_dirs(manifest)
            volumes += owned
            name = manifest["metadata"]["name"]
            path = workdir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(manifest, sort_keys=False))
            container = f"{name}-{wait_for or manifest['spec']['containers'][0]['name']}"
            args = ["kube", "play", "--replace"]
            if not manifest["spec"].get("hostNetwork"):
                args += ["--network", "none"]
            started.append((name, container))
            podman.run(*args, str(path))
        runs: list[PodRun] = []
        for name, container in started:
            runs.append(_wait_exit(podman, name, container, timeout))
            if runs[-1].exit_code != 0:
                break  # the later pods may wait for this one (an assemble for its parts)
        return runs
    finally:
        for name, _ in started:
            podman.run("pod", "rm", "-f", name, check=False)
        if volumes:
            podman.run("volume", "rm", "-f", *volumes, check=False)


def _own_empty_dirs(manifest: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The pod with each emptyDir renamed after it: podman kube play makes an emptyDir a
    named volume shared by every pod that names it, where the kubelet gives each pod its
    own (pods run at once would share /work). Returns the volume names to remove."""
    pod = copy.deepcopy(manifest)
    prefix = pod["metadata"]["name"]
    renamed = {v["name"]: f"{prefix}-{v['name']}" for v in pod["spec"]["volumes"]
               if "emptyDir" in v}  # fmt: skip
    for v in pod["spec"]["volumes"]:
        v["name"] = renamed.get(v["name"], v["name"])
    for c in pod["spec"]["containers"]:
        for m in c.get("volumeMounts", []):
            m["name"] = renamed.get(m["name"], m["name"])
    return pod, list(renamed.values())


def _wait_exit(podman: Podman, name: str, container: str, timeout: float) -> PodRun:
    def exit_code() -> str | None:
        state = podman.run("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                           container).stdout.split()  # fmt: skip
        return state[1] if state[0] in ("exited", "stopped") else None

    code = int(wait_until(exit_code, f"{container} to exit", timeout, 0.5))
    logs = podman.run("logs", container, check=False)
    return PodRun(name, code, logs.stdout + logs.stderr)
