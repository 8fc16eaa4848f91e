"""containers/image's own signature checks, configured in a private directory: a
policy.json that requires a sigstore signature by one public key for the test registry
or a namespace in it (and accepts anything else: the base image), and a registries.d
file that turns on sigstore attachments there. skopeo and podman read both; neither is ours.

Which skopeo and podman judge: the binary named by MODELCAR_TEST_SKOPEO /
MODELCAR_TEST_PODMAN (a path, e.g. an upstream build with sigstore support; Debian's
skopeo 1.9.3 and podman 4.3.1 have it cut out), else the one on PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.registry import private_containers_env

TOOL_VARIABLES = {"skopeo": "MODELCAR_TEST_SKOPEO", "podman": "MODELCAR_TEST_PODMAN"}


def judging_tool(name: str) -> str:
    """The ``skopeo`` or ``podman`` that checks signatures: the binary its
    MODELCAR_TEST_* variable names, else ``name`` from PATH. A variable naming no
    executable file is an error, not a quiet fallback to a tool that may skip."""
    variable = TOOL_VARIABLES[name]
    chosen = os.environ.get(variable, "")
    if not chosen:
        return name
    if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
        raise FileNotFoundError(f"{variable}={chosen} is not an executable file")
    return chosen


def tool_version(tool: str) -> str:
    """``skopeo version 1.13.3 (/usr/bin/skopeo)``: which tool judged, for the test log."""
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"{tool}: {exc.strerror}"
    return f"{out.stdout.strip()} ({shutil.which(tool) or tool})"


@dataclass(frozen=True)
class SigPolicy:
    policy: Path
    registries_d: Path
    env: dict[str, str]  # private containers env, HOME inside it

    def skopeo(self, *args: str, tool: str = "") -> subprocess.CompletedProcess[str]:
        """``skopeo args`` under this policy and registries.d; ``tool`` defaults to
        :func:`judging_tool`."""
        argv = [tool or judging_tool("skopeo"), "--policy", str(self.policy),
                "--registries.d", str(self.registries_d), *args]  # fmt: skip
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)

    def skopeo_copy(
        self, source: str, dest: str, tool: str = ""
    ) -> subprocess.CompletedProcess[str]:
        return self.skopeo("copy", "-q", "--src-tls-verify=false", source, dest, tool=tool)


def make_policy(directory: Path, scope: str, public_key: Path) -> SigPolicy:
    """``scope`` (a registry host, or ``host/namespace`` as README's snippet has it) needs
    a signature by ``public_key``, in policy.json and registries.d alike; everything else
    is accepted."""
    home = directory / "home"
    config = home / ".config" / "containers"
    registries_d = config / "registries.d"
    registries_d.mkdir(parents=True)
    policy = {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {
            "docker": {
                scope: [
                    {
                        "type": "sigstoreSigned",
                        "keyPath": str(public_key),
                        "signedIdentity": {"type": "matchRepoDigestOrExact"},
                    }
                ]
            }
        },
    }
    policy_file = config / "policy.json"
    policy_file.write_text(json.dumps(policy, indent=2))
    (registries_d / "modelcar-test.yaml").write_text(
        f"docker:\n  {scope}:\n    use-sigstore-attachments: true\n"
    )
    env = private_containers_env(directory / "containers")
    env["HOME"] = str(home)
    return SigPolicy(policy_file, registries_d, env)
