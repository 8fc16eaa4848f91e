"""`modelcar build`: fetch -> engine -> verify, as one resumable run.

Each stage skips what a previous run finished: verified files are not downloaded again,
layers the target already holds are not uploaded again, and verification always reads
back from the target rather than trusting what the push reported.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from modelcar_builder.buildopts import BuildOptions
from modelcar_builder.engines import BuildRequest, BuildResult, Engine
from modelcar_builder.engines.catalog import (
    DEFAULT_ENGINE,
    check_stream,
    default_compression,
    make_engine,
)
from modelcar_builder.engines.part import PartEngine, PartJob
from modelcar_builder.errors import (
    ImageNotFound,
    Interrupted,
    ModelcarError,
    UsageError,
)
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.pipeline import Resolved
from modelcar_builder.plan import LayerPlan, Plan
from modelcar_builder.settings import RegistryOptions, created_timestamp
from modelcar_builder.source.download import FetchOptions, FetchResult, fetch
from modelcar_builder.source.stream import HubStreams
from modelcar_builder.state import BuildState
from modelcar_builder.target import RegistryTarget, Target
from modelcar_builder.verify import (
    DeepOptions,
    VerifyResult,
    resolve_layout,
    verify_layout,
    verify_push,
)
from modelcar_builder.workspace import Workspace

if TYPE_CHECKING:
    from modelcar_builder.source.hub import HubAccess

log = logging.getLogger("modelcar.run")
STOP_WAIT = 2.0  # seconds a stopped download gets to finish its chunk


@dataclass(frozen=True)
class BuildOutcome:
    result: BuildResult
    verified: VerifyResult
    image_url: str  # oci://registry/repo@sha256:... (KServe storageUri) or oci:PATH@sha256
    downloaded_bytes: int
    timings: dict[str, float] = field(default_factory=dict)
    # path -> sha256 of each file whose sha256 the source does not give. Computed on the
    # first call only, and only where asked (the report, the provenance): it may have to
    # read a local model's files again (see file_sha256s)
    file_sha256: Callable[[], dict[str, str]] = dict


def engine_line(engine: str, compression: str) -> str:
    """The one line a build announces its engine with: the layers' compression, and
    that another choice gives the same model another digest."""
    native = engine == DEFAULT_ENGINE
    chosen = f"{engine} (the default)" if native else engine
    layers = layers_of(compression)
    if native and compression == "none":
        other = "gzip layers (buildah, podman, docker, or --compression gzip) give"
    elif compression == "none" or native:
        other = f"its default, {layers_of(default_compression(engine))}, gives"
    else:
        other = f"the default engine ({DEFAULT_ENGINE}, uncompressed tar layers) gives"
    return f"engine: {chosen}, {layers}; {other} the same model another digest"


def layers_of(compression: str) -> str:
    return "uncompressed tar layers" if compression == "none" else f"{compression} layers"


def load_store(load: str, engine: str) -> str:
    """Which local store ``--load`` fills: podman and docker build in their own; the
    others load into podman when it is installed, else into docker."""
    if engine in ("podman", "docker"):
        if load not in ("auto", engine):
            raise UsageError(
                f"--engine {engine} builds in {engine}'s store; it cannot --load {load}",
                hint=f"--load alone, or --engine native --load {load}",
            )
        return engine
    if load == "auto":
        return "podman" if shutil.which("podman") else "docker"
    return load


def run_build(
    resolved: Resolved,
    workspace: Workspace,
    target: Target,
    options: BuildOptions,
    *,
    registry: RegistryOptions,
    platforms: tuple[tuple[str, ...], ...] = (("linux", "amd64"),),
    mount_from: tuple[str, ...] = (),
    part: PartJob | None = None,
) -> BuildOutcome:
    """Fetch, build, push and verify as ``options`` ask. What the caller derived from
    them once comes along: the ``target`` and its ``registry`` settings, the parsed
    ``platforms``, ``mount_from`` as repositories of the target's registry, and with
    --part the share to build and its record (``part``)."""
    plan = resolved.plan
    fetch_opts = options.fetch
    push = options.target_image()[1]
    timings: dict[str, float] = {}
    if options.stream:
        check_stream(options.engine, plan.snapshot.kind, load=options.load is not None)
    if not push and not options.load:
        raise UsageError("nothing to do: no push and no --load", hint="add --load")
    compression = options.compression or default_compression(options.engine)
    # start_part refused every engine but native: a part is native on its share
    engine: Engine = PartEngine(part) if part is not None else make_engine(options.engine)
    engine.check_compression(compression)  # before the download, with or without the preflight
    log.info("%s", engine_line(options.engine, compression))
    store = None
    if options.load:
        from modelcar_builder.engines.archive import open_store

        # before the download too: a missing podman or an absent daemon fails now
        store = open_store(load_store(options.load, options.engine))
    if push or engine.builds_locally:
        engine.preflight(workspace)  # before the download: a build that cannot work fails now

    created = created_timestamp()  # a bad SOURCE_DATE_EPOCH fails before the download
    t0 = time.monotonic()
    files_dir, downloaded, streams, background = None, 0, None, None
    state = workspace.state(plan.snapshot)  # one record for the download and the engine
    # Overlap: an engine that can push a layer as soon as its own files are verified
    # does so while the rest still download (the manifest still waits for every layer).
    # --load without a push reads every file at once: it waits for the whole download.
    overlap = engine.pushes_while_fetching and push and not options.load
    if options.stream:
        # check_stream passed: a Hub source, which always has its access and commit
        access, commit = cast("HubAccess", resolved.access), cast(str, plan.snapshot.commit)
        streams = HubStreams(access, plan.snapshot.location, commit, fetch_opts)
    elif overlap:
        background = BackgroundFetch(plan, workspace, resolved.access, fetch_opts, state)
        files_dir = workspace.files_dir(plan.snapshot)
    else:
        fetched = fetch(plan, workspace, resolved.access, fetch_opts, state=state)
        files_dir, downloaded = fetched.files_dir, fetched.downloaded_bytes
    timings["fetch"] = time.monotonic() - t0

    request = BuildRequest(
        options=options,
        plan=plan,
        files_dir=files_dir,
        workspace=workspace,
        target=target,
        registry=registry,
        compression=compression,
        platform=platforms[0],
        platforms=platforms,
        push=push,
        mount_from=mount_from,
        chunk_bytes=options.chunk_size * 1024 * 1024,
        created=created,
        streams=streams,
        state=state,
        ready=background.wait if background else None,
        give_up=background.give_up if background else None,
    )
    try:
        result, verified = _build_and_verify(engine, request, store, timings)
    except BaseException:
        if background is not None:
            background.stop()  # no download outlives the build that wanted it
            background.raise_failure()  # the download's own error explains more
        raise
    finally:
        if streams is not None:
            streams.close()
        if store is not None:
            store.close()
    if background is not None:
        downloaded = background.result().downloaded_bytes
        timings["fetch"] = background.seconds
    timings["total"] = time.monotonic() - t0
    url = image_url(target, result.manifest_digest) if push else str(target)
    if streams is not None:  # kept for a rerun that finds the layers already pushed
        with state.locked():
            state.sha256.update(streams.sha256)
        state.save()
    hashed = dict(state.sha256)
    return BuildOutcome(
        result, verified, url, downloaded, timings,
        functools.cache(functools.partial(file_sha256s, plan, files_dir, hashed)),
    )  # fmt: skip


def file_sha256s(plan: Plan, files_dir: Path | None, hashed: Mapping[str, str]) -> dict[str, str]:
    """path -> sha256 of every file whose sha256 the source does not give: a git-stored
    Hub file was hashed as its blob id was checked (download or stream; ``hashed`` maps
    blob id -> sha256), so only what is left is read here: a local directory's files (no
    step of every engine reads them whole) and Hub files checked by an older version."""
    out: dict[str, str] = {}
    for f in plan.snapshot.files:
        if f.sha256:
            continue
        known = hashed.get(f.blob_id) if f.blob_id else None
        if known is None and files_dir is not None:
            known = _sha256_of(files_dir / f.path)
        if known is not None:
            out[f.path] = known
    return out


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _build_and_verify(
    engine: Engine, request: BuildRequest, store, timings: dict[str, float]
) -> tuple[BuildResult, VerifyResult]:
    """Build and push, then verify by digest from the target; with ``store`` (--load)
    the image ends up in that local store too, checked there."""
    from modelcar_builder.engines.archive import load_model
    from modelcar_builder.engines.workstation import local_name
    from modelcar_builder.verify import check_local_image

    labels = request.plan.snapshot.image_labels
    local = engine.builds_locally
    t1 = time.monotonic()
    if not request.push and not local:  # native/buildah, load only: no engine run at all
        result, verified = load_model(request, store, local_name(request))
        timings["build_push"] = time.monotonic() - t1
        return result, verified
    result = engine.build(request)
    timings["build_push"] = time.monotonic() - t1
    t2 = time.monotonic()
    if isinstance(engine, PartEngine):  # a part's record, not an image
        verified = engine.verify(request, result)
    elif request.push:
        verified = verify_target(request.target, result.manifest_digest, labels, request.registry)
    else:
        name = local_name(request)
        count = result.base_layers + len(result.layers)
        verified = check_local_image(store.inspect(name), name, None, labels, count)
    timings["verify"] = time.monotonic() - t2
    if store is not None and request.push and not local:
        t3 = time.monotonic()
        load_model(request, store, local_name(request))
        timings["load"] = time.monotonic() - t3
    return result, verified


class BackgroundFetch:
    """The download, run in a thread while an engine pushes; the engine waits per layer.

    A failed download wakes every waiter with its error, so the build stops with the
    download's own message (exit code and hint) rather than a secondary one."""

    def __init__(self, plan: Plan, workspace: Workspace, access, opts: FetchOptions,
                 state: BuildState) -> None:  # fmt: skip
        self._verified: set[str] = set()
        self._cond = threading.Condition()
        self._outcome: FetchResult | ModelcarError | None = None
        self._failed = False
        self._started = time.monotonic()
        self.seconds = 0.0
        self._cancel = threading.Event()
        opts = dataclasses.replace(opts, cancel=self._cancel)
        self._thread = threading.Thread(
            target=self._run, args=(plan, workspace, access, opts, state), daemon=True
        )
        self._thread.start()

    def _run(self, plan, workspace, access, opts, state) -> None:
        try:
            outcome: FetchResult | ModelcarError = fetch(
                plan, workspace, access, opts, state=state, on_verified=self._verified_one
            )
        except ModelcarError as exc:
            outcome = exc
        except OSError as exc:  # disk full, permissions: surfaced like any I/O error
            outcome = ModelcarError(f"download failed: {exc}", hint="rerun with --debug")
        except Exception as exc:  # never leave the waiters without an outcome: they would hang
            log.debug("the download thread failed", exc_info=True)
            outcome = ModelcarError(f"download failed: {exc!r}", hint="rerun with --debug")
        with self._cond:
            self._outcome = outcome
            # A failure of its own, not the stop() that the build's end asked for.
            self._failed = isinstance(outcome, ModelcarError) and not self._cancel.is_set()
            self.seconds = time.monotonic() - self._started
            self._cond.notify_all()

    def _verified_one(self, path: str) -> None:
        with self._cond:
            self._verified.add(path)
            self._cond.notify_all()

    def wait(self, layer: LayerPlan) -> None:
        """Return once every file of ``layer`` is verified; raise if the download failed."""
        wanted = {f.path for f in layer.files}
        with self._cond:
            while not wanted <= self._verified:
                if isinstance(self._outcome, ModelcarError):
                    raise self._outcome
                if self._outcome is not None:
                    missing = ", ".join(sorted(wanted - self._verified))
                    raise ModelcarError(f"the download ended without {missing}")
                if self._cancel.is_set():
                    raise Interrupted("the build stopped waiting for the download")
                self._cond.wait()

    def give_up(self) -> None:
        """The engine failed: wake every waiter now (they raise) and stop the workers at
        their next chunk, without waiting for them."""
        with self._cond:
            self._cancel.set()
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop the workers at their next chunk and wait for them a little: one blocked
        on a stalled connection would hold the exit until its read timeout. A daemon
        thread left behind loses nothing (its partial file and record are on disk)."""
        self.give_up()
        self._thread.join(timeout=STOP_WAIT)

    def raise_failure(self) -> None:
        with self._cond:
            if self._failed and isinstance(self._outcome, ModelcarError):
                raise self._outcome

    def result(self) -> FetchResult:
        self._thread.join()
        if isinstance(self._outcome, ModelcarError):
            raise self._outcome
        if self._outcome is None:
            raise ModelcarError("the download thread ended without a result")
        return self._outcome


def verify_target(
    target: Target,
    digest: str | None,
    labels: dict[str, str],
    registry: RegistryOptions,
    deep: DeepOptions | None = None,
) -> VerifyResult:
    """Read the image back from the target and check it; ``digest`` None checks whatever
    the tag (or the reference's own digest) points to now (`modelcar verify`). The build's
    own check is never ``deep``: it just streamed every byte it pushed through sha256."""
    if isinstance(target, RegistryTarget):
        ref = target.ref
        reference = ref.digest or target.tag
        with registry.client_for(ref) as client:
            if digest is None:
                info = client.head_manifest(ref.repository, reference)
                if info is None:
                    raise ImageNotFound(f"{ref} does not exist")
                digest = info.digest
            return verify_push(client, ref.repository, reference, digest, labels, deep)
    layout = OciLayout(target.path)
    if digest is None:
        digest = resolve_layout(layout, target.tag).digest
    return verify_layout(layout, target.tag, digest, labels, deep)


def verify_image(
    target: Target, registry: RegistryOptions, labels: dict[str, str],
    deep: DeepOptions | None = None,
) -> VerifyResult:  # fmt: skip
    return verify_target(target, None, labels, registry, deep)


def image_url(target: Target, digest: str) -> str:
    if isinstance(target, RegistryTarget):
        return f"oci://{target.ref.registry}/{target.ref.repository}@{digest}"
    return f"oci:{target.path}@{digest}"


def write_results(outcome: BuildOutcome, target: Target, results_dir: Path) -> None:
    """Tekton results: IMAGE_URL and IMAGE_DIGEST (the names Tekton Chains reads), and
    IMAGE_REF, the oci://…@sha256:… an InferenceService's storageUri takes."""
    write_image_results(target, outcome.result.manifest_digest, results_dir)


def write_image_results(target: Target, digest: str, results_dir: Path) -> None:
    """The three results for the image ``digest`` at ``target`` (build and assemble)."""
    if isinstance(target, RegistryTarget):
        url = f"{target.ref.registry}/{target.ref.repository}:{target.tag}"
    else:
        url = str(target)
    (results_dir / "IMAGE_URL").write_text(url)
    (results_dir / "IMAGE_DIGEST").write_text(digest)
    (results_dir / "IMAGE_REF").write_text(image_url(target, digest))
