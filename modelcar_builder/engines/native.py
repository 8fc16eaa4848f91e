"""The native engine: no daemon, no buildah, no privilege, no root.

Each planned layer is a deterministic tar streamed from the fetched files (or, with
--stream, straight from the Hub) into the target; no layer tar is ever written to disk
and no file is held in memory. Layer digests are cached in the workspace state so a rerun
asks the target what it has (HEAD) before reading a single model byte.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from modelcar_builder.engines import (
    BuildRequest,
    BuildResult,
    BuiltLayer,
    Readiness,
    fetched_bytes,
    layer_results,
)
from modelcar_builder.engines.assemble import assemble_image
from modelcar_builder.engines.base_image import BaseSource, copy_base, load_base
from modelcar_builder.engines.catalog import check_stream
from modelcar_builder.engines.multiarch import build_multiarch
from modelcar_builder.engines.sinks import LayoutSink, RegistrySink, Sink
from modelcar_builder.errors import (
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
    UsageError,
)
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.layer import (
    DigestingIterator,
    LayerEntry,
    TarLayer,
    gzip_chunks,
    layer_media_type,
)
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.parallel import run_parallel
from modelcar_builder.plan import LayerPlan, Plan
from modelcar_builder.progress import HighWater, Progress, counted
from modelcar_builder.registry import RegistryClient
from modelcar_builder.state import BuildState, LayerRecord, layer_key
from modelcar_builder.target import LayoutTarget, RegistryTarget
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar.engines.native")
LAYER_RESTARTS = 3  # a streamed layer the registry dropped is sent again this many times


def open_sink(request: BuildRequest) -> tuple[Sink, RegistryClient | None]:
    target = request.target
    if isinstance(target, LayoutTarget):
        return LayoutSink(OciLayout(target.path)), None
    client = request.registry.client_for(target.ref)
    client.ping()  # fail on auth/TLS before reading any model byte
    return RegistrySink(client, target.ref.repository, request.upload_chunk), client


class NativeEngine:
    name = "native"
    pushes_while_fetching = True  # each layer waits for its own files only
    builds_locally = False  # it writes to the target only: --load reads the pushed image

    def check_compression(self, compression: str) -> None:
        layer_media_type(compression)  # none or gzip: oci.layer's one rule

    def preflight(self, workspace: Workspace) -> Readiness:
        """Nothing to check: no privilege, no daemon, any filesystem."""
        return Readiness(
            "native: no daemon, no capability, no root needed; a read-only root filesystem "
            "and the restricted SCC are fine"
        )

    def disk_needed(self, plan: Plan, env: Mapping[str, str]) -> dict[str, int]:
        """The fetched files; with --stream nothing but small state files."""
        return {self.name: fetched_bytes(plan), f"{self.name} --stream": 0}

    def build(self, request: BuildRequest) -> BuildResult:
        self.check_compression(request.compression)
        if len(request.platforms) > 1:
            return build_multiarch(self, request)
        timings: dict[str, float] = {}
        started = time.monotonic()
        sink, client = open_sink(request)
        base = load_base(request.options.base_image, request.platform, request.registry)
        try:
            copy_base(base, sink)
            timings["base"] = time.monotonic() - started
            state = request.build_state()
            pushed = self.push_layers(request, sink, state)
            for layer in request.plan.layers:
                request.wait_for(layer)  # the manifest waits until every file is verified
            timings["layers"] = time.monotonic() - started - timings["base"]
            manifest_digest, config_digest = self._push_manifest(request, sink, base, pushed)
        finally:
            base.close()
            if client is not None:
                client.close()
        timings["total"] = time.monotonic() - started
        media_type = layer_media_type(request.compression)
        layers = layer_results(request.plan, pushed, media_type)
        return BuildResult(
            engine=self.name,
            target=str(request.target),
            manifest_digest=manifest_digest,
            config_digest=config_digest,
            layers=layers,
            base_layers=len(base.image.layers) if base.image else 0,
            bytes_uploaded=sink.bytes_uploaded,
            timings=timings,
        )

    # -- model layers -----------------------------------------------------------------------

    def push_layers(
        self,
        request: BuildRequest,
        sink: Sink,
        state: BuildState,
        on_pushed: Callable[[LayerPlan, BuiltLayer], None] | None = None,
    ) -> list[BuiltLayer]:
        """Every planned layer into ``sink``, ``request.jobs`` at once, in plan order;
        ``on_pushed`` hears of each as soon as it is there (a part records its progress)."""
        total = sum(_tar_for(request, layer).size for layer in request.plan.layers)
        progress = Progress("push", total, interval=request.options.fetch.progress_interval)
        failed: list[BaseException] = []

        def one(layer: LayerPlan) -> BuiltLayer:
            try:
                built = self._push_one(request, sink, layer, state, progress)
                if on_pushed is not None:
                    on_pushed(layer, built)
                return built
            except BaseException as exc:
                failed.append(exc)  # before stop_waiting: the first failure is the cause
                request.stop_waiting()
                raise

        try:
            results = run_parallel(one, request.plan.layers, request.options.jobs)
        except BaseException:
            if failed:
                raise failed[0] from None  # not a waiter's Interrupted that it caused
            raise
        finally:
            progress.close()
            state.save()
        return results

    def _push_one(self, request, sink, layer: LayerPlan, state, progress) -> BuiltLayer:
        key = layer_key(layer, request.compression, request.files_dir)
        cached = state.layer(key)
        if cached and sink.has_blob(cached.digest, cached.size):
            log.info("%s already in the target (%s)", layer.name, cached.digest[:19])
            _record_push(request, state, cached.digest)
            return BuiltLayer(cached.digest, cached.size, cached.diff_id, uploaded=False)
        if cached and _mount(request, sink, state, layer, cached.digest):
            return BuiltLayer(cached.digest, cached.size, cached.diff_id, False, mounted=True)
        request.wait_for(layer)  # its files may still be downloading
        cached = state.layer(key)  # the download may just have hashed it
        tar = _tar_for(request, layer)
        open_entry = _stream_opener(request) if request.files_dir is None else None
        # Each attempt (a retried PUT, a resumed chunked upload, a layer sent again) reads
        # the tar again; the mark shows each byte once: a registry restart mid-push once
        # showed `1.8 GiB / 1.1 GiB (161%)`.
        shown = HighWater(progress)

        def tar_chunks():
            return counted(tar.chunks(open_entry), shown)

        def tar_chunks_from(offset: int):
            return counted(tar.chunks_from(offset), shown, offset)

        if request.compression == "none" and request.files_dir is not None:
            # Known size, digest by one read pass: a monolithic PUT works on every registry.
            digest = cached.digest if cached else tar.digest()
            there = sink.has_blob(digest, tar.size)  # e.g. pushed from another workspace
            mounted = not there and _mount(request, sink, state, layer, digest)
            if there:
                log.info("%s already in the target (%s)", layer.name, digest[:19])
            elif mounted:
                pass
            elif request.options.upload == "chunked":
                sink.put_resumable(digest, tar.size, tar_chunks_from, request.chunk_bytes)
            else:
                sink.put_blob(digest, tar.size, tar_chunks)
            sent = not (there or mounted)
            pushed = BuiltLayer(digest, tar.size, digest, uploaded=sent, mounted=mounted)
        else:
            # Digest unknown until the last byte (gzip, or bytes still arriving from the
            # Hub): one streaming upload that hashes as it goes.
            pushed = _stream_layer(request, sink, layer, tar_chunks, tar.size)
        state.remember_layer(key, LayerRecord(pushed.digest, pushed.size, pushed.diff_id))
        _record_push(request, state, pushed.digest)
        return pushed

    # -- config and manifest ------------------------------------------------------------------

    def _push_manifest(self, request, sink: Sink, base: BaseSource, pushed) -> tuple[str, str]:
        docs = assemble_image(request, base, pushed, layer_media_type(request.compression))
        if not sink.has_blob(docs.config_digest, len(docs.config)):
            sink.put_blob(docs.config_digest, len(docs.config), lambda: [docs.config])
        digest = sink.put_manifest(docs.manifest, MEDIA_TYPE_MANIFEST, request.target.tag)
        return digest, docs.config_digest


def _mount(
    request: BuildRequest, sink: Sink, state: BuildState, layer: LayerPlan, digest: str
) -> bool:
    """Mount ``digest`` into the target repository from another repository of the same
    registry that holds it: first where the workspace's record says it was pushed, then
    each --mount-from. No byte of the layer is sent; False when no source has it."""
    target = request.target
    if not isinstance(target, RegistryTarget):
        return False
    host, repo = target.ref.api_host, target.ref.repository
    sources = [r for r in state.pushed_to(digest, host) if r != repo]
    sources += [r for r in request.mount_from if r != repo and r not in sources]
    for source in sources:
        if sink.mount(digest, host, source):
            log.info("%s mounted from %s (%s)", layer.name, source, digest[:19])
            _record_push(request, state, digest)
            return True
    return False


def _record_push(request: BuildRequest, state: BuildState, digest: str) -> None:
    target = request.target
    if isinstance(target, RegistryTarget):
        state.remember_push(digest, target.ref.api_host, target.ref.repository)


def _stream_layer(
    request: BuildRequest, sink: Sink, layer: LayerPlan, tar_chunks, tar_size: int
) -> BuiltLayer:
    """One streaming upload; a registry that drops it mid-layer (a cut, a restart, a 5xx)
    gets the layer again from its first byte: a stream cannot be replayed or resumed
    where the registry lost it. The Hub side keeps its own retries (source/stream.py)."""
    for attempt in range(1, LAYER_RESTARTS + 1):
        # Uncompressed, the blob is the tar: its digest (hashed by the upload) is the
        # diff_id too. Hashing the tar again here cost --stream one more sha256 of the
        # model on the thread that feeds the upload.
        plain = DigestingIterator(tar_chunks()) if request.compression == "gzip" else None
        body = gzip_chunks(plain) if plain is not None else tar_chunks()
        try:
            # Uncompressed, the size is known: sent with Content-Length, not chunked.
            digest, size = sink.put_stream(body, None if plain is not None else tar_size)
        except (RegistryUnreachable, RegistryError) as exc:
            if attempt == LAYER_RESTARTS or isinstance(exc, RegistryAuthError):
                raise
            wait = min(30.0, 2.0**attempt)  # a restarting registry needs a moment
            log.warning(
                "%s: the registry dropped the upload (%s); sending the layer again in "
                "%.0f s (attempt %d of %d)", layer.name, exc, wait, attempt + 1, LAYER_RESTARTS,
            )  # fmt: skip
            time.sleep(wait)
            continue
        return BuiltLayer(digest, size, plain.digest if plain else digest, uploaded=True)
    raise RegistryError(f"{layer.name}: upload failed")  # unreachable: the loop returns


def _tar_for(request: BuildRequest, layer: LayerPlan) -> TarLayer:
    base_dir = request.files_dir
    return TarLayer(
        LayerEntry(f.path, f.size, base_dir / f.path if base_dir is not None else None)
        for f in layer.files
    )


def _stream_opener(request: BuildRequest):
    if request.streams is None:  # no files and no streams: only a Hub source streams
        check_stream("native", request.plan.snapshot.kind)
        raise UsageError("a --stream build was started without its Hub streams")
    files = {f.path: f for f in request.plan.snapshot.files}
    streams = request.streams
    # No progress of its own: the layer's tar bytes are counted, once, by _push_one
    # (a layer sent again re-reads the Hub and would count its bytes twice).
    return lambda entry: streams(files[entry.path], None)
