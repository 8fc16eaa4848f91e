"""Build engines behind one small interface: take a BuildRequest, put an image at the
target, return a BuildResult. The run does not care which engine ran; it reaches them
through the registry (``engines.catalog``) and the ``Engine`` Protocol below."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from modelcar_builder.plan import LayerPlan, Plan
from modelcar_builder.progress import Progress
from modelcar_builder.settings import DEFAULT_CREATED, RegistryOptions
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.state import BuildState
from modelcar_builder.target import Target
from modelcar_builder.workspace import Workspace

if TYPE_CHECKING:  # buildopts imports engines.catalog, which imports this package
    from modelcar_builder.buildopts import BuildOptions


class StreamOpener(Protocol):
    """Opens one model file as a stream that checks its own bytes (``--stream``): the
    pipeline hands it in, so engines never reach for the Hub themselves."""

    def __call__(self, entry: FileEntry, progress: Progress | None) -> io.RawIOBase: ...


@dataclass(frozen=True)
class BuildRequest:
    """What an engine is asked to build: the build's options as given (``options``, the
    one carrier from the CLI), and what the run derived from them once or holds while
    it runs. Engines read an option through ``options``, never a copy of it."""

    options: BuildOptions
    plan: Plan
    files_dir: Path | None  # None: stream the bytes straight from the Hub (native only)
    workspace: Workspace
    target: Target
    registry: RegistryOptions = field(default_factory=RegistryOptions)  # the target's
    compression: str = "none"  # --compression, or the engine's default
    platform: tuple[str, ...] = ("linux", "amd64")  # OS, ARCH[, VARIANT]: --platform's first
    platforms: tuple[tuple[str, ...], ...] = ()  # several: an image index (engines/multiarch)
    push: bool = True  # False: `--load` of a local name; engines building locally skip the push
    # --mount-from as repositories of the target's registry a layer blob may be mounted
    # from (besides where the workspace's record says it was pushed)
    mount_from: tuple[str, ...] = ()
    chunk_bytes: int = 64 * 1024 * 1024  # --chunk-size (MiB) in bytes: a chunked PATCH's size
    created: str = DEFAULT_CREATED
    streams: StreamOpener | None = None  # for files_dir None: where the bytes come from
    # While the download still runs (engines that can push early): the shared workspace
    # record, and a wait that returns once every file of a layer is verified.
    state: BuildState | None = None
    ready: Callable[[LayerPlan], None] | None = None
    give_up: Callable[[], None] | None = None  # stops the download and every wait_for

    def build_state(self) -> BuildState:
        return self.state if self.state is not None else self.workspace.state(self.plan.snapshot)

    def wait_for(self, layer: LayerPlan) -> None:
        if self.ready is not None:
            self.ready(layer)

    @property
    def upload_chunk(self) -> int | None:
        """PATCH size when every blob we upload goes in chunks (--upload chunked)."""
        return self.chunk_bytes if self.options.upload == "chunked" else None

    def stop_waiting(self) -> None:
        """An engine whose push failed says so at once: its other threads' wait_for
        raise Interrupted and the download stops, so a registry that refuses layer 0
        fails the build now, not once the rest of the model is downloaded."""
        if self.give_up is not None:
            self.give_up()


@dataclass(frozen=True)
class BuiltLayer:
    """One planned layer as it sits in the target, while an engine works: its blob, its
    uncompressed digest (diff_id), and whether this run had to send it."""

    digest: str
    size: int
    diff_id: str
    uploaded: bool = True
    mounted: bool = False  # placed by a cross-repository mount: no byte sent


@dataclass(frozen=True)
class LayerResult:
    digest: str
    size: int
    diff_id: str
    media_type: str
    files: tuple[str, ...]  # paths under /models; empty for base layers
    uploaded: bool  # False when the target already had it
    mounted: bool = False  # mounted from another repository of the same registry


def layer_results(
    plan: Plan, built: Sequence[BuiltLayer], media_type: str
) -> tuple[LayerResult, ...]:
    """What an engine that pushed ``built`` (one per planned layer, in plan order) reports
    for each: native and its multi-arch index give the same model layers."""
    return tuple(
        LayerResult(
            b.digest,
            b.size,
            b.diff_id,
            media_type,
            tuple(f.path for f in lp.files),
            b.uploaded,
            b.mounted,
        )
        for lp, b in zip(plan.layers, built, strict=True)
    )


@dataclass(frozen=True)
class BuildResult:
    engine: str
    target: str
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerResult, ...]  # the model layers, in plan order
    base_layers: int
    bytes_uploaded: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Readiness:
    """What an engine's preflight found here: how it will run (``message``), and when it
    may not run as deployed, a ``warning`` with its ``fix`` (doctor's WARN line)."""

    message: str
    warning: str = ""
    fix: str = ""


class Engine(Protocol):
    name: str
    # True: build() may start while the download runs; it calls request.wait_for(layer)
    # (and request.stop_waiting() when a push fails while other layers still wait)
    # before reading (or linking) a layer's files, and for every layer before the
    # manifest; an engine that needs all files at once waits for every layer first.
    # False: it gets every file verified up front.
    pushes_while_fetching: bool
    # True: the image is in the engine's own local store after build() (podman, docker),
    # so `--load` without a push still runs it; False: it only writes to the target.
    builds_locally: bool

    def check_compression(self, compression: str) -> None:
        """Raise a UsageError, before the download, for a --compression this engine
        cannot write."""
        ...

    def preflight(self, workspace: Workspace) -> Readiness:
        """Fail before the model is downloaded when the build cannot work here; else say
        how it will run (and warn when it may not, as deployed)."""
        ...

    def disk_needed(self, plan: Plan, env: Mapping[str, str]) -> dict[str, int]:
        """Extra workspace bytes a build of ``plan`` needs, by a label naming the engine
        (and its mode), for ``plan`` and the up-front space check; ``env`` holds the
        engine's settings."""
        ...

    def build(self, request: BuildRequest) -> BuildResult: ...


def fetched_bytes(plan: Plan) -> int:
    """Workspace bytes the fetched model files take: Hub files are downloaded, local
    sources are read in place."""
    return plan.total_bytes if plan.snapshot.kind == "hub" else 0
