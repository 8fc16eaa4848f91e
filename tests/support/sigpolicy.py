"""containers/image's own signature checks, configured in a private directory: a
policy.json that requires a sigstore signature by one public key for the test registry
(and accepts anything else: the base image), and a registries.d file that turns on
sigstore attachments for that registry. skopeo and podman read both; neither is ours."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.registry import private_containers_env


@dataclass(frozen=True)
class SigPolicy:
    policy: Path
    registries_d: Path
    env: dict[str, str]  # private containers env, HOME inside it

    def skopeo_copy(self, source: str, dest: str) -> subprocess.CompletedProcess[str]:
        argv = ["skopeo", "--policy", str(self.policy), "--registries.d", str(self.registries_d),
                "copy", "-q", "--src-tls-verify=false", source, dest]  # fmt: skip
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)


def make_policy(directory: Path, host: str, public_key: Path) -> SigPolicy:
    """``host`` needs a signature by ``public_key``; everything else is accepted."""
    home = directory / "home"
    config = home / ".config" / "containers"
    registries_d = config / "registries.d"
    registries_d.mkdir(parents=True)
    policy = {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {
            "docker": {
                host: [
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
        f"docker:\n  {host}:\n    use-sigstore-attachments: true\n"
    )
    env = private_containers_env(directory / "containers")
    env["HOME"] = str(home)
    return SigPolicy(policy_file, registries_d, env)
