"""What one buildah build needs, resolved once by the engine for the builder, and
the small helpers it uses."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from modelcar_builder.auth import Credentials
from modelcar_builder.engines import BuildRequest
from modelcar_builder.engines.buildah.cache import BuildahCache
from modelcar_builder.engines.buildah.choices import ENGINE_NAME, BuildahSettings, check_compression
from modelcar_builder.engines.buildah.runner import Buildah
from modelcar_builder.engines.catalog import check_stream
from modelcar_builder.errors import UsageError
from modelcar_builder.oci import DOCKER_MANIFEST
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST as OCI_MANIFEST
from modelcar_builder.plan import Plan
from modelcar_builder.progress import Progress
from modelcar_builder.registry import RegistryClient
from modelcar_builder.state import BuildState

MANIFEST_ACCEPT = (OCI_MANIFEST, DOCKER_MANIFEST)  # what a tag may hold already


@dataclass
class BuildRun:
    """Everything one build needs, resolved once."""

    request: BuildRequest
    settings: BuildahSettings
    buildah: Buildah
    files_dir: Path
    context_dirs: tuple[Path, ...]
    state: BuildState
    timestamp: int
    client: RegistryClient | None = None  # ours, for a registry target (pinged first)
    base_creds: Credentials | None = None  # our own client loads the base with them
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def plan(self) -> Plan:
        return self.request.plan

    @property
    def cache(self) -> BuildahCache:
        return BuildahCache(self.state)

    def target_client(self) -> RegistryClient:
        """Our client for the registry target; only registry targets call this."""
        if self.client is None:
            raise RuntimeError(f"no registry client for {self.request.target}")
        return self.client


def check_request(request: BuildRequest) -> Path:
    """The model files' directory; what buildah cannot do fails here, before any work."""
    if request.files_dir is None:  # streamed: check_stream's own error for buildah
        check_stream(ENGINE_NAME, request.plan.snapshot.kind)
        raise UsageError("the buildah engine was given no model files")
    check_compression(request.compression)
    return request.files_dir


def file_chunks(
    path: Path, progress: Progress | None = None, chunk: int = 1 << 20
) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(chunk):
            if progress is not None:
                progress.advance(len(data))
            yield data
