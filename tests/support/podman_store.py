"""A private podman store for the workstation engine tests and the consumer tests: its
storage and config under tmp (CONTAINERS_* variables, which the podman engine inherits),
as a fixture registered in tests/conftest.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_CONF = '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n'


@dataclass
class PodmanStore:
    """A podman whose storage and config live under ``root`` (CONTAINERS_* variables,
    which the podman engine inherits: nothing podman-specific in our code)."""

    root: Path
    env: dict[str, str]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.stderr.strip()}")
        return proc


def podman_env(root: Path, insecure: tuple[str, ...] = ()) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    (root / "containers.conf").write_text(_CONF)
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n'
    )
    regs = "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n' for h in insecure)
    (root / "registries.conf").write_text(regs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERS_", "REGISTRY_"))}
    env.update(
        CONTAINERS_CONF=str(root / "containers.conf"),
        CONTAINERS_STORAGE_CONF=str(root / "storage.conf"),
        CONTAINERS_REGISTRIES_CONF=str(root / "registries.conf"),
        TMPDIR=str(root / "tmp"),
    )
    return env


@pytest.fixture
def podman_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PodmanStore]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are needed (scripts/install-deps.sh installs them)")
    store = PodmanStore(tmp_path / "podman", podman_env(tmp_path / "podman"))
    for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF"):
        monkeypatch.setenv(key, store.env[key])
    yield store
    store("rm", "-a", "-f", check=False)
    store("rmi", "-a", "-f", check=False)
