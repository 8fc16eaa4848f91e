"""`modelcar build --part K/N`: the native engine building one share of a model's layers
(``shares.py``) and recording what it pushed in the registry (``oci/partrecord.py``),
for `modelcar assemble` to make the image of.

A part plans the whole model but fetches and pushes only its share. Before the download
it reads its own record of an earlier run (a retried pod): the layers that record lists
and the registry still holds are neither fetched nor pushed again, and the record is
rewritten. Base image layers are copied by every part (HEAD first: the first part to
arrive uploads them, the others find them), so `assemble` needs no access to the base."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelcar_builder.engines import (
    BuildRequest,
    BuildResult,
    BuiltLayer,
    Readiness,
    layer_results,
)
from modelcar_builder.engines.assemble import image_template
from modelcar_builder.engines.base_image import copy_base, load_base
from modelcar_builder.engines.catalog import default_compression
from modelcar_builder.engines.native import NativeEngine, open_sink
from modelcar_builder.engines.sinks import Sink
from modelcar_builder.errors import ImageNotFound, UsageError, VerificationFailed
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.image import Descriptor
from modelcar_builder.oci.layer import layer_media_type
from modelcar_builder.oci.partrecord import PartLayer, PartRecord, parse_record, record_tag
from modelcar_builder.oci.template import ImageTemplate, sha256_of
from modelcar_builder.plan import LayerPlan, Plan
from modelcar_builder.registry import RegistryClient
from modelcar_builder.settings import RegistryOptions
from modelcar_builder.shares import Part, narrowed, parse_part, plan_digest, share_of
from modelcar_builder.target import RegistryTarget, Target
from modelcar_builder.units import human
from modelcar_builder.verify import VerifyResult
from modelcar_builder.workspace import Workspace

log = logging.getLogger("modelcar.engines.part")


@dataclass(frozen=True)
class PartJob:
    """One part's work: the whole model's plan (its template and digest), which part,
    and the layers of its share that an earlier run recorded and the registry holds."""

    part: Part
    plan: Plan
    digest: str  # shares.plan_digest(plan)
    done: tuple[PartLayer, ...] = ()


def start_part(
    text: str,
    env: Mapping[str, str],
    *,
    engine: str,
    platforms: tuple[tuple[str, ...], ...],
    load: str | None,
    target: Target,
    sign_key: str | None,
    modelpack: bool,
) -> Part:
    """``--part`` parsed, and refused (exit 2, one line) with what a part cannot do."""
    part = parse_part(text, env)
    refused = [
        (engine != "native", f"--engine {engine}", "parts are built by the native engine: "
         "drop --engine"),
        (len(platforms) > 1, "several --platform", "build one platform per set of parts"),
        (load is not None, "--load", "a part pushes a share of the layers only: load the "
         "assembled image instead"),
        (not isinstance(target, RegistryTarget), "an oci: layout --image", "parts meet in a "
         "registry: give --image REGISTRY/REPO:TAG"),
        (sign_key is not None, "--sign-key", "sign the assembled image: `modelcar sign`"),
        (modelpack, "--modelpack", "build the parts without it"),
    ]  # fmt: skip
    for bad, what, hint in refused:
        if bad:
            raise UsageError(f"--part {part} cannot be combined with {what}", hint=hint)
    return part


def prepare_part(
    plan: Plan,
    part: Part,
    target: RegistryTarget,
    registry: RegistryOptions,
    compression: str | None,
) -> tuple[Plan, RegistryTarget, PartJob]:
    """The plan this part fetches and pushes (its share, less what an earlier run of the
    part left in the registry), the target its record goes to, and the job."""
    digest = plan_digest(plan)
    share = share_of(plan, part)
    record_target = RegistryTarget(target.ref.with_tag(record_tag(target.tag, part.k, part.n)))
    media_type = layer_media_type(compression or default_compression("native"))
    ours = (digest, part.k, part.n, media_type)
    with registry.client_for(target.ref) as client:
        earlier = read_record(client, record_target)
        done: tuple[PartLayer, ...] = ()
        if earlier is not None and ours == (earlier.plan, earlier.k, earlier.n,
                                            earlier.template.layer_media_type):  # fmt: skip
            wanted = {lp.index for lp in share}
            done = tuple(
                x for x in earlier.layers
                if x.index in wanted and client.blob_size(target.repository, x.digest) == x.size
            )  # fmt: skip
    skip = {x.index for x in done}
    todo = tuple(lp for lp in share if lp.index not in skip)
    log.info(
        "part %s: %d of the model's %d layers (%s of %s)%s", part, len(share), len(plan.layers),
        human(sum(lp.size for lp in share)), human(plan.total_bytes),
        f"; {len(done)} already recorded by an earlier run of this part" if done else "",
    )  # fmt: skip
    log.debug("part %s builds %s", part, ", ".join(lp.name for lp in todo) or "nothing")
    return narrowed(plan, todo), record_target, PartJob(part, plan, digest, done)


def read_record(client: RegistryClient, target: RegistryTarget) -> PartRecord | None:
    """The record at ``target``'s tag; None when there is none, or it is not a record this
    version reads (it is then overwritten, or named by assemble)."""
    repo = target.repository
    if client.head_manifest(repo, target.tag, accept=(MEDIA_TYPE_MANIFEST,)) is None:
        return None
    manifest = client.get_manifest(repo, target.tag, accept=(MEDIA_TYPE_MANIFEST,))
    try:
        config = json.loads(manifest.body)["config"]
        return parse_record(client.read_blob(repo, config["digest"]))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s: not a part record this version reads (%s)", target, exc)
        return None


def first_absent(
    client: RegistryClient, repo: str, blobs: Sequence[Descriptor | PartLayer]
) -> tuple[Descriptor | PartLayer, int | None] | None:
    """The first blob ``repo`` does not hold with its size, and the size it holds (None:
    no such blob); None when every blob is there."""
    for blob in blobs:
        size = client.blob_size(repo, blob.digest)
        if size != blob.size:
            return blob, size
    return None


class PartEngine:
    """The native engine, for one part: its share's layers, then its record."""

    name = "native"
    pushes_while_fetching = True
    builds_locally = False

    def __init__(self, job: PartJob, native: NativeEngine | None = None) -> None:
        self.job = job
        self.native = native or NativeEngine()

    def check_compression(self, compression: str) -> None:
        self.native.check_compression(compression)

    def preflight(self, workspace: Workspace) -> Readiness:
        return self.native.preflight(workspace)

    def disk_needed(self, plan: Plan, env: Mapping[str, str]) -> dict[str, int]:
        return self.native.disk_needed(plan, env)

    def build(self, request: BuildRequest) -> BuildResult:
        """``request.plan`` is what this run pushes; ``request.target`` the record's tag."""
        self.check_compression(request.compression)
        job, started = self.job, time.monotonic()
        media_type = layer_media_type(request.compression)
        sink, client = open_sink(request)
        base = load_base(request.options.base_image, request.platform, request.registry)
        try:
            copy_base(base, sink)
            template = image_template(request, base, media_type, plan=job.plan)
            record = _Recorder(job, template, sink, request.target.tag)
            pushed = self.native.push_layers(request, sink, request.build_state(), record.add)
            for layer in request.plan.layers:
                request.wait_for(layer)
            digest, config_digest = record.write(complete=True)
        finally:
            base.close()
            if client is not None:
                client.close()
        log.info("part %s recorded as %s (%s)", job.part, request.target, digest[:19])
        return BuildResult(
            engine=self.name,
            target=str(request.target),
            manifest_digest=digest,
            config_digest=config_digest,
            layers=layer_results(request.plan, pushed, media_type),
            base_layers=len(base.image.layers) if base.image else 0,
            bytes_uploaded=sink.bytes_uploaded,
            timings={"total": time.monotonic() - started},
        )

    def verify(self, request: BuildRequest, result: BuildResult) -> VerifyResult:
        """The record read back by its tag: the digest pushed, and every layer it lists
        (and every base layer) present with its size."""
        target = request.target
        if not isinstance(target, RegistryTarget):
            raise UsageError("a part's target is a registry")  # start_part refused it
        with request.registry.client_for(target.ref) as client:
            info = client.head_manifest(target.repository, target.tag,
                                        accept=(MEDIA_TYPE_MANIFEST,))  # fmt: skip
            if info is None:
                raise ImageNotFound(f"{target} does not exist")
            if info.digest != result.manifest_digest:
                raise VerificationFailed(f"{target} resolves to {info.digest}, but we pushed "
                                         f"{result.manifest_digest}")  # fmt: skip
            record = read_record(client, target)
            if record is None or record.plan != self.job.digest:
                raise VerificationFailed(f"{target}: the record read back is not ours")
            blobs: list[Descriptor | PartLayer] = [*record.template.base_layers, *record.layers]
            absent = first_absent(client, target.repository, blobs)
            if absent is not None:
                raise VerificationFailed(f"{target}: blob {absent[0].digest} is not there "
                                         f"with its {absent[0].size} bytes")  # fmt: skip
        size = sum(b.size for b in blobs)
        return VerifyResult(
            digest=info.digest,
            media_type=MEDIA_TYPE_MANIFEST,
            config_digest=result.config_digest,
            layer_count=len(blobs),
            total_size=size,
            labels=dict(record.template.labels),
            checks=(f"part {self.job.part}: the record and its {len(blobs)} blobs are there",),
            blobs_present=len(blobs),
        )


class _Recorder:
    """A part's record, rewritten after each layer it pushes (``complete`` False) and
    once more at the end: a pod that dies leaves a record of what it did push, which its
    retry reads (prepare_part) instead of sending those layers again."""

    def __init__(self, job: PartJob, template: ImageTemplate, sink: Sink, tag: str) -> None:
        self.job, self.template, self.sink, self.tag = job, template, sink, tag
        self.layers: dict[int, PartLayer] = {x.index: x for x in job.done}
        self.lock = threading.RLock()  # layers are pushed --jobs at once; add() writes

    def add(self, layer: LayerPlan, built: BuiltLayer) -> None:
        with self.lock:
            self.layers[layer.index] = PartLayer(layer.index, built.digest, built.size,
                                                 built.diff_id)  # fmt: skip
            self.write(complete=False)

    def write(self, complete: bool) -> tuple[str, str]:
        """Push the record; its manifest digest and config digest."""
        with self.lock:
            job = self.job
            record = PartRecord(
                job.part.k, job.part.n, job.digest, job.plan.snapshot.canonical, self.template,
                tuple(self.layers[i] for i in sorted(self.layers)), complete,
            )  # fmt: skip
            config = record.config()
            digest = sha256_of(config)
            if not self.sink.has_blob(digest, len(config)):
                self.sink.put_blob(digest, len(config), lambda: [config])
            return self.sink.put_manifest(record.manifest(config), MEDIA_TYPE_MANIFEST,
                                          self.tag), digest  # fmt: skip
