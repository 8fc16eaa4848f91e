"""An engine's BuildRequest for a local model directory, as the CLI would make it, for
tests that call an engine directly (and for their child processes)."""

from __future__ import annotations

from pathlib import Path

from modelcar_builder.buildopts import BuildOptions
from modelcar_builder.engines import BuildRequest, RegistryOptions
from modelcar_builder.pipeline import resolve
from modelcar_builder.plan import Plan
from modelcar_builder.selection import Selection
from modelcar_builder.settings import registry_retry_window
from modelcar_builder.target import parse_target
from modelcar_builder.workspace import Workspace

THRESHOLD = 1 << 20  # 1 MiB: make_model's shards get a layer each


def request_for(
    model: Path,
    workspace: Path,
    target: str,
    base: str,
    registry: RegistryOptions | None = None,
    compression: str = "gzip",
    plan: Plan | None = None,
) -> BuildRequest:
    return BuildRequest(
        options=BuildOptions(str(model), target, base_image=base, compression=compression),
        plan=plan or resolve(str(model), Selection(), threshold=THRESHOLD).plan,
        files_dir=model,
        workspace=Workspace(workspace).ensure(),
        target=parse_target(target),
        # the outage window from the environment, as the CLI does (conftest keeps it short)
        registry=registry
        or RegistryOptions(tls_verify=False, retry_window=registry_retry_window()),
        compression=compression,
    )


def token_file(path: Path, token: str) -> str:
    """``token`` in a 0600 file at ``path``; returns the path as a string."""
    path.write_text(token)
    path.chmod(0o600)
    return str(path)
