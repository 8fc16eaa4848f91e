"""Real podman (Debian's), for tests that must *run* an image the way CRI-O would: pull it
from the loopback registry into private storage, create a container, start it, read files.

This sandbox refuses setrlimit inside containers and crun refuses its cgroups, so podman
runs with a containers.conf that sets no default ulimits and picks runc
(docs/architecture.md §7)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_CONF = """[containers]
default_ulimits = []
[engine]
runtime = "runc"
"""


@dataclass
class Podman:
    root: Path
    driver: str  # "overlay" when this machine mounts it, else "vfs"
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [
            "podman", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
            "--storage-driver", self.driver, *args,
        ]  # fmt: skip

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def close(self) -> None:
        """Remove containers and images, so no overlay mount outlives the test."""
        self.run("rm", "-a", "-f", check=False)
        self.run("rmi", "-a", "-f", check=False)

    def pull(self, ref: str) -> None:
        self.run("pull", "-q", "--tls-verify=false", ref)

    def start(self, image: str, script: str) -> subprocess.CompletedProcess[str]:
        """Create and start a container running ``sh -c script``, no network, and wait."""
        return self.run("run", "--rm", "--network", "none", image, "/bin/sh", "-c", script)


def podman_available() -> str | None:
    """None when podman and runc are here, else why not (for pytest.skip)."""
    for tool in ("podman", "runc"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/install-deps.sh installs it)"
    return None


def make_podman(directory: Path) -> Podman:
    """A private podman; overlay if a real import into overlay storage works here (it
    needs SYS_ADMIN and a backing filesystem overlay accepts), else vfs."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "containers.conf"
    conf.write_text(_CONF)
    # Real root, no rootless tricks (unlike buildah's private env): podman must not
    # think it runs rootless, or it would enter a user namespace to run the container.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERS_", "REGISTRY_"))}
    (directory / "tmp").mkdir(exist_ok=True)
    env.update(CONTAINERS_CONF=str(conf), TMPDIR=str(directory / "tmp"))
    probe = Podman(directory / "probe", "overlay", env)
    empty = directory / "empty.tar"
    subprocess.run(["tar", "-cf", str(empty), "-T", os.devnull], check=True)
    works = probe.run("import", "-q", str(empty), "localhost/probe:1", check=False)
    driver = "overlay" if works.returncode == 0 else "vfs"
    probe.run("rmi", "-a", "-f", check=False)
    return Podman(directory / driver, driver, env)
