"""`modelcar` run as separate processes, the way N pods of one Job run it: each its own
interpreter, environment and workspace (tests of `build --part K/N` and `assemble`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent.parent
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json"


def start_pod(*args: str, hub_endpoint: str | None = None, **env: str) -> subprocess.Popen[str]:
    """``python -m modelcar_builder ARGS`` in the background; ``env`` adds variables."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", **env}
    if hub_endpoint:
        full["HF_ENDPOINT"] = hub_endpoint
    return subprocess.Popen(
        [sys.executable, "-m", "modelcar_builder", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )


def finish(pod: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = pod.communicate(timeout=timeout)
    return pod.returncode, out, err


def run_pod(*args: str, hub_endpoint: str | None = None, **env: str) -> tuple[int, str, str]:
    return finish(start_pod(*args, hub_endpoint=hub_endpoint, **env))


def registry_digest(host: str, repo: str, reference: str) -> str:
    """The manifest digest the registry itself answers with (Docker-Content-Digest)."""
    resp = requests.head(f"http://{host}/v2/{repo}/manifests/{reference}",
                         headers={"Accept": MANIFEST_TYPES}, timeout=30)  # fmt: skip
    resp.raise_for_status()
    return resp.headers["Docker-Content-Digest"]
