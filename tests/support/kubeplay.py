"""Run a Tekton step or a Job's pod template the way the cluster would, with
``podman kube play``: the manifest's own image reference replaced by the locally built
builder image, and everything else taken from the manifest as written (command, args, env,
securityContext, computeResources, volumes).

What the cluster would add is added here, as OpenShift does it:
- the pod ``securityContext`` restricted-v2 injects (``runAsUser`` from the namespace
  range, group 0) — or, for a Task that asks for a UID, that UID;
- the workspace volume as a ``hostPath`` directory owned by another UID, group-writable;
- ``/tekton/results`` (a ``hostPath`` the test reads back) and the service-account token
  at ``/var/run/secrets/kubernetes.io/serviceaccount/token``;
- Tekton's substitutions: ``$(params.x)`` (given or default; ``[*]`` expands an array),
  ``$(workspaces.x.path)`` (``""`` for an optional workspace left unbound) and
  ``$(results.x.path)``;
- an ``optional`` secretKeyRef whose Secret does not exist is dropped, as the kubelet does.

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
    image: str
    params: dict[str, str | list[str]] = field(default_factory=dict)
    workspaces: dict[str, Path] = field(default_factory=dict)  # bound ones, host dirs
    results_dir: Path | None = None
    sa_token: Path | None = None
    run_as: tuple[int, int] | None = (1000680000, 0)  # restricted-v2's injected UID:GID

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

    def pod(self, name: str) -> dict[str, Any]:
        spec = self.task["spec"]
        step = copy.deepcopy(next(s for s in spec["steps"] if s["name"] == self.step_name))
        container: dict[str, Any] = {"name": step["name"], "image": self.image,
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
            env.append({"name": item["name"], "value": self.substitute(item["value"])})
        container["env"] = env
        if "computeResources" in step:
            container["resources"] = step["computeResources"]
        container["securityContext"] = step.get("securityContext", {})
        mounts = [dict(m) for m in step.get("volumeMounts", [])]
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


def play(
    podman: Podman,
    manifest: dict[str, Any],
    workdir: Path,
    timeout: float = 600,
    wait_for: str | None = None,
) -> PodRun:
    """``podman kube play`` the pod, wait for one container (default: the first) to exit,
    collect its logs, remove the pod."""
    name = manifest["metadata"]["name"]
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    container = f"{name}-{wait_for or manifest['spec']['containers'][0]['name']}"
    args = ["kube", "play", "--replace"]
    if not manifest["spec"].get("hostNetwork"):
        args += ["--network", "none"]
    try:
        podman.run(*args, str(path))

        def exit_code() -> str | None:
            state = podman.run("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                               container).stdout.split()  # fmt: skip
            return state[1] if state[0] in ("exited", "stopped") else None

        code = int(wait_until(exit_code, f"{container} to exit", timeout, 0.5))
        logs = podman.run("logs", container, check=False)
        return PodRun(name, code, logs.stdout + logs.stderr)
    finally:
        podman.run("pod", "rm", "-f", name, check=False)
