"""The buildah engine's builder: each planned layer committed alone by buildah, its
blob sent to the target by our client, config and manifest written as native writes them.

For each layer: ``buildah from scratch``, ``copy --chown 0:0 layer-NNN/ /models/``,
``commit --rm`` to an OCI layout in TMPDIR; the one blob and its diff_id are read from
that layout and sent (HEAD first, or a mount from a repository an earlier run pushed it
to; a hard link into an ``oci:`` target), and the layout is deleted. Nothing stays in
buildah's storage, so the peak is a few copies of the largest layer on any driver. With
overlap (registry targets) layer i is uploaded in a thread while layer i+1 is built.
Buildah never talks to a registry here, so it never sees credentials.

The download may still run (``BuildRequest.wait_for``): a layer the target lacks waits
for its own files, then its context directory gets their hard links and it is built while
later files download. The manifest waits for every file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from modelcar_builder.context import link_layer
from modelcar_builder.engines import BuildResult, BuiltLayer, LayerResult
from modelcar_builder.engines.assemble import assemble_image
from modelcar_builder.engines.base_image import BaseSource, base_from_registry, copy_base, load_base
from modelcar_builder.engines.buildah.cache import per_layer_key
from modelcar_builder.engines.buildah.choices import ENGINE_NAME, overlaps
from modelcar_builder.engines.buildah.credentials import registry_base
from modelcar_builder.engines.buildah.failures import BUILD_HINT
from modelcar_builder.engines.buildah.runner import image_id
from modelcar_builder.engines.buildah.session import MANIFEST_ACCEPT, BuildRun, file_chunks
from modelcar_builder.engines.sinks import LayoutSink, RegistrySink
from modelcar_builder.errors import (
    BuildFailed,
    Interrupted,
    ModelcarError,
    RegistryAuthError,
)
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.image import Descriptor
from modelcar_builder.oci.layer import layer_media_type
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.plan import LayerPlan
from modelcar_builder.progress import HighWater, Progress, counted
from modelcar_builder.registry import RegistryClient
from modelcar_builder.state import LayerRecord
from modelcar_builder.target import LayoutTarget, RegistryTarget
from modelcar_builder.units import human

log = logging.getLogger("modelcar.engines.buildah.per_layer")

# What building or sending a layer raises: buildah and registry failures, the filesystem,
# malformed JSON from a layout.
_BUILD_ERRORS = (ModelcarError, OSError, ValueError)


class _Upload:
    """One layer blob on its way to the registry in a daemon thread, while the main
    thread builds the next layer; the builder keeps at most one. The thread deletes the
    layer's layout when the upload ends, either way; the builder records the layer (cache
    entry, repositories, bytes) only once :meth:`wait` returned, in the main thread. A
    daemon thread, not concurrent.futures: an interrupt leaves at once (no exit join)."""

    def __init__(
        self, index: int, key: str, layer: BuiltLayer, work: Callable[[], bool], name: str,
        on_error: Callable[[], None],
    ) -> None:  # fmt: skip
        self.index, self.key, self.layer = index, key, layer
        self.sent = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(work, on_error), daemon=True, name=f"modelcar-upload-{name}"
        )
        self._thread.start()

    def _run(self, work: Callable[[], bool], on_error: Callable[[], None]) -> None:
        try:
            self.sent = work()
        except BaseException as exc:  # re-raised in the main thread by wait()
            self.error = exc
            on_error()  # the main thread may be waiting for the download: wake it

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        while self._thread.is_alive():
            self._thread.join(0.2)  # a join with a timeout keeps SIGTERM/SIGINT prompt
        if self.error is not None:
            raise self.error


class PerLayerBuilder:
    """One buildah build: each planned layer in its own container from scratch,
    committed alone to an OCI layout in TMPDIR, its blob sent to the target and the
    layout deleted once sent; config and manifest are ours. With overlap (registry
    targets, ``MODELCAR_BUILDAH_OVERLAP``) the blob of layer i is sent by an :class:`_Upload`
    while layer i+1 is built; otherwise before the next layer starts."""

    def __init__(self, run: BuildRun) -> None:
        self.run = run
        self.b = run.buildah
        self.request = run.request
        self.cache = run.cache
        self.media_type = layer_media_type(self.request.compression)
        self.uploaded = 0  # layer bytes sent (base and model; not config or manifest)
        self._clean = False
        self._pending: _Upload | None = None  # the one upload in flight (overlap)
        self._out: list[BuiltLayer | None] = []

    def build(self) -> BuildResult:
        t0 = time.monotonic()
        base = self._load_base()
        try:
            sink = self._sink()
            self._copy_base(base, sink)
            self.run.timings["base"] = time.monotonic() - t0
            t1 = time.monotonic()
            layers = self._layers(sink)
            for layer in self.run.plan.layers:
                self.request.wait_for(layer)  # the manifest waits until every file is verified
            self.run.timings["layers"] = time.monotonic() - t1
            t2 = time.monotonic()
            manifest_digest, config_digest = self._put_manifest(base, sink, layers)
            self.run.timings["push"] = time.monotonic() - t2
        finally:
            base.close()
            self.run.state.save()
        return BuildResult(
            engine=ENGINE_NAME,
            target=str(self.request.target),
            manifest_digest=manifest_digest,
            config_digest=config_digest,
            layers=tuple(
                LayerResult(
                    x.digest,
                    x.size,
                    x.diff_id,
                    self.media_type,
                    tuple(f.path for f in lp.files),
                    x.uploaded,
                )
                for x, lp in zip(layers, self.run.plan.layers, strict=True)
            ),
            base_layers=len(base.image.layers) if base.image else 0,
            bytes_uploaded=self.uploaded,
            timings=self.run.timings,
        )

    # -- base -----------------------------------------------------------------------------

    def _load_base(self) -> BaseSource:
        """The base from a registry (read by our own client, with the base's
        credentials), an OCI layout or scratch; its blobs are copied or mounted as the
        native engine does."""
        name = self.request.options.base_image
        target = registry_base(self.request)
        if target is None:
            return load_base(name, self.request.platform, self.request.registry)
        ref, opts, creds = target.ref, self.request.registry, self.run.base_creds
        client = RegistryClient(
            ref.api_host, creds, tls_verify=opts.tls_verify, ca_file=opts.ca_file
        )
        try:
            return base_from_registry(ref, self.request.platform, client, name)
        except RegistryAuthError:
            what = (
                f"refused the credentials from {creds.source}"
                if creds
                else "requires credentials, and none were found for it"
            )
            raise RegistryAuthError(f"registry {ref.registry} {what} (base image {name})") from None

    def _sink(self) -> LayoutSink | RegistrySink:
        target = self.request.target
        if isinstance(target, LayoutTarget):
            target.path.parent.mkdir(parents=True, exist_ok=True)
            return LayoutSink(OciLayout(target.path))
        return RegistrySink(self.run.target_client(), target.repository, self.request.upload_chunk)

    def _copy_base(self, base: BaseSource, sink: LayoutSink | RegistrySink) -> None:
        def placed(desc: Descriptor, uploaded: bool) -> None:
            self._note(desc.digest)
            if uploaded:
                self.uploaded += desc.size

        copy_base(base, sink, lambda digest, size: self._have(sink, digest, size), placed)

    # -- blobs in the target --------------------------------------------------------------

    def _have(
        self, sink: LayoutSink | RegistrySink, digest: str, size: int, note: bool = True
    ) -> bool:
        """The target has the blob, or gets it by a mount from another repository of the
        same registry that an earlier run pushed it to (workspace state), or from a
        --mount-from repository. ``note=False`` leaves the noting to the caller (the
        upload thread writes no builder state)."""
        if sink.has_blob(digest, size):
            if note:
                self._note(digest)
            return True
        if isinstance(sink, RegistrySink):
            here = f"{self._registry()}/"
            sources = [
                name.removeprefix(here)
                for name in self.cache.repos_holding(digest)
                if name.startswith(here) and name != f"{here}{sink.repo}"
            ]
            sources += [r for r in self.request.mount_from if r not in sources and r != sink.repo]
            for source in sources:
                with contextlib.suppress(ModelcarError):
                    if sink.client.mount_blob(sink.repo, digest, source):
                        if note:
                            self._note(digest)
                        return True
        return False

    def _note(self, digest: str) -> None:
        """Remember which repositories hold a blob, for mounts by later runs."""
        target = self.request.target
        if isinstance(target, RegistryTarget):
            self.cache.note_repo(digest, target.ref.name)

    def _registry(self) -> str:
        target = self.request.target
        return target.ref.registry if isinstance(target, RegistryTarget) else ""

    # -- model layers -----------------------------------------------------------------------

    def _key(self, layer: LayerPlan) -> str:
        return per_layer_key(
            self.run.files_dir, layer, self.request.compression, self.run.timestamp
        )

    def _layers(self, sink: LayoutSink | RegistrySink) -> list[BuiltLayer]:
        overlap = isinstance(sink, RegistrySink) and overlaps(self.request, self.run.settings)
        self._out = [None] * len(self.run.plan.layers)
        try:
            for index, layer in enumerate(self.run.plan.layers):
                self._out[index] = self._layer(index, layer, sink, overlap)
            self._settle()
        except _BUILD_ERRORS as exc:
            # A build failed beside an upload: let that upload end (its thread deletes its
            # layout; a successful one is recorded for the rerun), then report the failure;
            # but a wait the failed upload itself cut short reports the upload's error.
            # (Not on an interrupt: that leaves at once, the daemon thread with it.)
            try:
                self._settle()
            except _BUILD_ERRORS as upload_error:
                if isinstance(exc, Interrupted):
                    raise upload_error from None
            raise
        built = [x for x in self._out if x is not None]
        if len(built) != len(self._out):  # every upload was settled above
            raise BuildFailed("a layer was built but never recorded", hint=BUILD_HINT)
        return built

    def _layer(
        self, index: int, layer: LayerPlan, sink: LayoutSink | RegistrySink, overlap: bool
    ) -> BuiltLayer | None:
        """The layer as it sits in the target, or None while its upload is in flight."""
        key = self._key(layer)
        cached = self.cache.layer(key)
        if cached:
            self._settle()  # the client has one user at a time
            if self._have(sink, cached.digest, cached.size):
                log.info("buildah: %s cached (%s)", layer.name, cached.digest[:19])
                return BuiltLayer(cached.digest, cached.size, cached.diff_id, uploaded=False)
        elif self._pending is not None and self._pending.done:
            self._settle()  # a failed upload stops the builds here
        # Its files may still be downloading (the previous layer's upload goes on); they
        # are linked only once verified, in place: never a .part the download moves.
        self.request.wait_for(layer)
        link_layer(layer, self.run.files_dir, self.run.context_dirs[index])
        self._clean_storage()
        tmp = Path(tempfile.mkdtemp(prefix="modelcar-layout-", dir=self.request.workspace.tmp_dir))
        handed = False
        try:
            layout = self._commit(index, layer, tmp)
            digest, size, diff_id = self._single_layer(layout, layer)
            self._settle()  # the previous layer's upload: at most one in flight
            if overlap:

                def work() -> bool:
                    try:
                        return self._send(sink, layer, layout, digest, size)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)

                built = BuiltLayer(digest, size, diff_id, uploaded=True)
                self._pending = _Upload(
                    index, key, built, work, layer.name, self.request.stop_waiting
                )
                handed = True
                return None
            sent = self._send(sink, layer, layout, digest, size)
        finally:
            if not handed:
                shutil.rmtree(tmp, ignore_errors=True)
        return self._record(key, BuiltLayer(digest, size, diff_id, sent))

    def _send(
        self,
        sink: LayoutSink | RegistrySink,
        layer: LayerPlan,
        layout: OciLayout,
        digest: str,
        size: int,
    ) -> bool:
        """The blob to the target unless it has it (or mounts it); True when sent. Runs
        in the upload thread with overlap: no builder state is written here."""
        if self._have(sink, digest, size, note=False):
            return False
        log.info("buildah: sending %s (%s)", layer.name, human(size))
        if isinstance(sink, LayoutSink):
            sink.layout.copy_blob_from(layout, digest)  # a hard link where it can
        else:
            path = layout.blob_path(digest)
            progress = Progress(f"push {layer.name}", size)
            shown = HighWater(progress)  # a retried or resumed upload shows no byte twice
            try:
                sink.put_blob(digest, size, lambda: counted(file_chunks(path), shown))
            finally:
                progress.close()
        return True

    def _settle(self) -> None:
        """Wait for the upload in flight, if any: its error is raised here, in the main
        thread; on success the layer is recorded."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.wait()
        self._out[pending.index] = self._record(
            pending.key, replace(pending.layer, uploaded=pending.sent)
        )

    def _record(self, key: str, built: BuiltLayer) -> BuiltLayer:
        """A layer the target now has: its cache entry is written only now."""
        self._note(built.digest)
        if built.uploaded:
            self.uploaded += built.size
        self.cache.remember_layer(key, LayerRecord(built.digest, built.size, built.diff_id))
        self.cache.save()  # a rerun after a crash skips this layer
        return built

    def _commit(self, index: int, layer: LayerPlan, tmp: Path) -> OciLayout:
        """``from scratch``, ``copy``, ``commit --rm`` to ``oci:TMP``: one layer alone."""
        isolation = f"--isolation={self.run.settings.isolation}"
        out = self.b.run(["from", "--quiet", "--pull=never", isolation, "scratch"], step="from")
        ctr = image_id(out)
        committed = False
        try:
            source = str(self.run.context_dirs[index]) + "/"
            self.b.run(
                ["copy", "--quiet", "--chown=0:0", ctr, source, "/models/"],
                step=f"copy {layer.name}",
            )
            log.info("buildah: committing %s (%d file(s))", layer.name, len(layer.files))
            compressed = self.request.compression != "none"
            self.b.run(
                [
                    "commit",
                    "--rm",
                    "--quiet",
                    "--format=oci",
                    "--identity-label=false",
                    f"--timestamp={self.run.timestamp}",
                    f"--disable-compression={'false' if compressed else 'true'}",
                    ctr,
                    f"oci:{tmp}:layer",
                ],
                step=f"commit {layer.name}",
            )
            committed = True
        finally:
            if not committed:
                with contextlib.suppress(ModelcarError):
                    self.b.run(["rm", ctr], step="rm")
        return OciLayout(tmp)

    def _single_layer(self, layout: OciLayout, layer: LayerPlan) -> tuple[str, int, str]:
        _, manifest = layout.read_manifest("layer")
        config = json.loads(layout.read_blob(manifest["config"]["digest"]))
        descs = manifest.get("layers") or []
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(descs) != 1 or len(diff_ids) != 1:
            raise BuildFailed(
                f"buildah committed {len(descs)} layers for {layer.name}, not 1", hint=BUILD_HINT
            )
        desc = descs[0]
        if desc["mediaType"] != self.media_type:
            raise BuildFailed(f"buildah wrote {layer.name} as {desc['mediaType']}", hint=BUILD_HINT)
        return desc["digest"], int(desc["size"]), diff_ids[0]

    def _clean_storage(self) -> None:
        """Before the first commit: no container or image may be left in our storage
        (a crashed run's, or the cache images of an older version's chain mode), so the
        peak stays one layer's."""
        if self._clean:
            return
        self._clean = True
        self.b.run(["rm", "--all"], step="rm")
        out = self.b.run(["images", "--all", "--quiet", "--no-trunc"], step="images")
        if out.strip():
            log.info("removing %d image(s) from buildah's storage", len(out.split()))
            self.b.run(["rmi", "--all", "--force"], step="rmi")

    # -- config and manifest ------------------------------------------------------------------

    def _put_manifest(
        self, base: BaseSource, sink: LayoutSink | RegistrySink, layers: Sequence[BuiltLayer]
    ) -> tuple[str, str]:
        """Config and manifest exactly as the native engine writes them."""
        request = self.request
        docs = assemble_image(request, base, layers, self.media_type)
        config_digest, body, digest = docs.config_digest, docs.manifest, docs.manifest_digest
        if not sink.has_blob(config_digest, len(docs.config)):
            sink.put_blob(config_digest, len(docs.config), lambda: [docs.config])
        target, tag = request.target, request.target.tag
        if isinstance(sink, RegistrySink):
            current = sink.client.head_manifest(sink.repo, tag, accept=MANIFEST_ACCEPT)
            if current is not None and current.digest == digest:
                return digest, config_digest
        put = sink.put_manifest(body, MEDIA_TYPE_MANIFEST, tag)
        if put != digest:
            raise BuildFailed(
                f"{target} stored the manifest as {put}, expected {digest}",
                hint="the registry rewrites manifests: push to one that stores them as sent",
            )
        return digest, config_digest
