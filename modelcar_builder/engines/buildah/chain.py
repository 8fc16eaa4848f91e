"""The chain mode (``MODELCAR_BUILDAH_MODE=chain``, and always for zstd): the planned
layers stacked by buildah itself, image on image, the last one committed straight to the
target.

For each layer, in order: ``buildah from <previous image>``, ``copy --chown 0:0
layer-NNN/ /models/``, ``commit --timestamp T`` into a cache image (keyed by content, so a
rerun after a failure restarts at the first layer not yet committed); the last layer is
committed to ``docker://REGISTRY/REPO:TAG`` or ``oci:PATH:TAG`` and never lands in
buildah's storage. ``compression none`` to a registry goes through an OCI layout that we
upload; zstd needs ``buildah push``. The image is then read back from the target and must
have exactly base layers + one per planned layer. A rerun of the same image to the same
repository only checks it is whole and re-tags it (no buildah).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelcar_builder import __version__
from modelcar_builder.engines import BuildResult, LayerResult
from modelcar_builder.engines.buildah.cache import PushedImage, chain_keys, digest_of
from modelcar_builder.engines.buildah.failures import RACE_HINT
from modelcar_builder.engines.buildah.runner import bare, image_id
from modelcar_builder.engines.buildah.session import MANIFEST_ACCEPT, BuildRun, file_chunks
from modelcar_builder.engines.buildah.settings import ENGINE_NAME, via_layout
from modelcar_builder.engines.sinks import RegistrySink
from modelcar_builder.errors import BuildFailed, ModelcarError
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST as OCI_MANIFEST
from modelcar_builder.oci.image import image_annotations
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.plan import LayerPlan
from modelcar_builder.target import LayoutTarget, RegistryTarget, parse_target

log = logging.getLogger("modelcar")

CACHE_REPO = "localhost/modelcar-cache"


@dataclass(frozen=True)
class TargetImage:
    """An image as the target holds it, read back after buildah wrote it."""

    manifest_digest: str
    config_digest: str
    layers: list[dict[str, Any]]  # manifest descriptors, base layers first
    diff_ids: list[str]


def diff_ids_of(inspect: Mapping[str, Any]) -> list[str]:
    return list(((inspect.get("OCIv1") or {}).get("rootfs") or {}).get("diff_ids") or [])


def target_image(digest: str, manifest: dict[str, Any], config: dict[str, Any]) -> TargetImage:
    return TargetImage(
        manifest_digest=digest,
        config_digest=manifest["config"]["digest"],
        layers=list(manifest.get("layers") or []),
        diff_ids=list((config.get("rootfs") or {}).get("diff_ids") or []),
    )


class ChainBuilder:
    """One build in the chain mode: base, cached chain, last layer to the target, read back."""

    def __init__(self, run: BuildRun) -> None:
        self.run = run
        self.b = run.buildah
        self.request = run.request
        self.cache = run.cache
        self.base_info: dict[str, Any] = {}  # `buildah inspect` of the base image
        self.base_diff_ids: list[str] = []
        self.parent_diff_ids: list[str] = []  # the image the last layer goes on

    def build(self) -> BuildResult:
        t0 = time.monotonic()
        base_id = self._pull_base()
        keys = chain_keys(self._head(base_id), self.run.files_dir, self.run.plan)
        self.run.timings["base"] = time.monotonic() - t0
        result_key = self._result_key(keys[-1])
        shortcut = self._alreadypushed_image(result_key)
        if shortcut is not None:
            log.info("%s already holds this exact image; nothing to build", self.request.target)
            return shortcut
        # zstd needs `buildah push`, so then the last layer is stored like the others.
        zstd = self.request.compression == "zstd"
        stored = keys if zstd else keys[:-1]
        self._clean_storage(base_id, stored)
        t1 = time.monotonic()
        parent = self._commit_chain(base_id, stored)
        if parent != "scratch":
            self.parent_diff_ids = diff_ids_of(self._inspect_image(parent))
        self.run.timings["layers"] = time.monotonic() - t1
        present = self._present_before(keys[-1])
        t2 = time.monotonic()
        pushed = self._push(parent) if zstd else self._commit_last(parent)
        self.run.timings["push"] = time.monotonic() - t2
        result = self._result(pushed, present)
        self._remember(result, result_key, keys[-1], pushed)
        return result

    # -- base ---------------------------------------------------------------------------

    def _pull_base(self) -> str:
        """Image ID of the base, pulled every time: a moved tag gives a new ID."""
        name = self.request.base_image
        if name == "scratch":
            log.warning(
                "base image 'scratch': the image has no sh/ln/sleep, so KServe's modelcar "
                "sidecar cannot start it; fine for oci:// fetch mode or inspection only"
            )
            return "scratch"
        target = parse_target(name)
        source = target.ref.docker_uri if isinstance(target, RegistryTarget) else str(target)
        os_, arch = self.request.platform
        args = ["pull", "--quiet", "--policy=always", f"--platform={os_}/{arch}"]
        out = self.b.run(
            [*args, *self.run.base_args, source],
            step=f"pull {name}",
            remote=self.run.base_remote,
        )
        base_id = image_id(out)
        self.base_info = self._inspect_image(base_id)
        self.base_diff_ids = diff_ids_of(self.base_info)
        return base_id

    def _head(self, base_id: str) -> list[Any]:
        """What besides the layers decides the chain's bytes (the tool version too: the
        last image carries it in an annotation, and the recipe may change with it)."""
        return [
            __version__,
            self.request.base_image,
            base_id,
            list(self.request.platform),
            sorted(self.run.plan.snapshot.image_labels.items()),
            self.run.timestamp,
        ]

    def _inspect_image(self, image: str) -> dict[str, Any]:
        out = self.b.run(["inspect", "--type", "image", image], step="inspect")
        return json.loads(out)

    # -- storage hygiene ----------------------------------------------------------------

    def _clean_storage(self, base_id: str, keys: Sequence[str]) -> None:
        """Drop leftovers (containers of a crashed run, images of other builds) so the
        volume never holds more than this build's chain. The storage is ours alone."""
        self.b.run(["rm", "--all"], step="rm")
        keep = {base_id, *self.cache.keep_images(keys)}
        stale = [img["id"] for img in self._images() if bare(img["id"]) not in keep]
        if stale:
            log.info("removing %d stale image(s) from buildah's storage", len(stale))
            self.b.run(["rmi", "--force", *stale], step="rmi")

    def _images(self) -> list[dict[str, Any]]:
        # --all: without it buildah hides untagged images that have children, i.e. most
        # of our cache.
        out = self.b.run(["images", "--all", "--json", "--no-trunc"], step="images")
        return json.loads(out) if out.strip() and out.strip() != "null" else []

    # -- the chain ----------------------------------------------------------------------

    def _commit_chain(self, base_id: str, keys: Sequence[str]) -> str:
        """Commit the first ``len(keys)`` layers as cache images; returns the last one.

        A cache image is found by the ID the state file records and tagged
        ``modelcar-cache:<its own ID>``: tagged, because ``buildah rmi`` also deletes
        untagged parents left without children; named by ID, because the next layer's
        history says "FROM <name>", and an ID (unlike a key with file mtimes in it) is a
        digest of content only, so the image digest stays reproducible."""
        present = {bare(img["id"]) for img in self._images()}
        parent = base_id
        layers = self.run.plan.layers
        for index, (layer, key) in enumerate(zip(layers, keys, strict=False)):
            cached = self.cache.image(key)
            if cached is not None and cached in present:
                log.info("buildah: %s cached", layer.name)
            else:
                ctr = self._container(parent, index, layer)
                log.info("buildah: committing %s (%d file(s))", layer.name, len(layer.files))
                out = self.b.run([*self._commit_args(), ctr], step=f"commit {layer.name}")
                cached = image_id(out)
                self.cache.remember_image(key, cached)
                self.b.run(["tag", cached, f"{CACHE_REPO}:{cached}"], step="tag")
                self.cache.save()  # a crash later resumes after this layer
            parent = cached
        return parent

    def _container(self, parent: str, index: int, layer: LayerPlan) -> str:
        """A working container from ``parent`` holding ``layer``'s files under /models."""
        ctr = image_id(
            self.b.run(
                ["from", "--quiet", "--pull=never", self._isolation_arg(), parent],
                step="from",
            )
        )
        config = [f"--created-by=COPY {layer.name}/ /models/ # {len(layer.files)} file(s)"]
        if index == 0:
            # KServe passes args only; an Entrypoint or Cmd from the base would swallow them.
            config += ["--entrypoint", "[]", "--cmd", ""]
            config += [
                f"--label={k}={v}" for k, v in sorted(self.run.plan.snapshot.image_labels.items())
            ]
            if parent == "scratch":
                os_, arch = self.request.platform
                config += [f"--os={os_}", f"--arch={arch}"]
        if index == len(self.run.plan.layers) - 1:
            config += self._annotation_args()  # manifest annotations: the final image only
        self.b.run(["config", *config, ctr], step="config")
        source = str(self.run.context_dirs[index]) + "/"
        self.b.run(
            ["copy", "--quiet", "--chown=0:0", ctr, source, "/models/"], step=f"copy {layer.name}"
        )
        return ctr

    def _isolation_arg(self) -> str:
        # Recorded on the container; matters only if something ever RUNs in it.
        return f"--isolation={self.run.settings.isolation}"

    def _commit_args(self) -> list[str]:
        return [
            "commit",
            "--rm",
            "--quiet",
            "--format=oci",
            "--identity-label=false",  # no tool version in the config: digests stay stable
            f"--timestamp={self.run.timestamp}",
        ]

    # -- the last layer -----------------------------------------------------------------

    def _commit_last(self, parent: str) -> TargetImage:
        """The last layer goes from its container straight to the target: it never
        lands in buildah's storage, and no separate push copies it again."""
        plan = self.run.plan
        last = plan.layers[-1]
        ctr = self._container(parent, len(plan.layers) - 1, last)
        log.info("buildah: committing %s and pushing to %s", last.name, self.request.target)
        args = self._commit_args()
        compressed = self.request.compression != "none"
        args.append(f"--disable-compression={'false' if compressed else 'true'}")
        if via_layout(self.request):
            return self._commit_via_layout(ctr, args)
        self.b.run(
            [*args, *self.run.target_args, ctr, self._destination()],
            step=f"commit {last.name} to {self.request.target}",
            remote=self.run.target_remote,
        )
        return self._read_back(None)

    def _commit_via_layout(self, ctr: str, args: list[str]) -> TargetImage:
        """``compression none`` to a registry: commit to an OCI layout in the
        workspace (uncompressed), upload what the registry lacks (HEAD, then one
        streaming PUT per blob), put the manifest, delete the layout."""
        tmp = Path(tempfile.mkdtemp(prefix="modelcar-layout-", dir=self.request.workspace.tmp_dir))
        try:
            self.b.run(
                [*args, ctr, f"oci:{tmp}:image"],
                step=f"commit {self.run.plan.layers[-1].name} to an OCI layout",
            )
            layout = OciLayout(tmp)
            descriptor, manifest = layout.read_manifest("image")
            client, repo, tag = (
                self.run.target_client(),
                self._repository(),
                self.request.target.tag,
            )
            sink = RegistrySink(client, repo, self.request.upload_chunk)
            for desc in [*manifest["layers"], manifest["config"]]:
                digest, size = desc["digest"], int(desc["size"])
                if sink.has_blob(digest, size):
                    continue
                path = layout.blob_path(digest)
                sink.put_blob(digest, size, lambda path=path: file_chunks(path))
            body = layout.blob_path(descriptor.digest).read_bytes()
            media_type = manifest.get("mediaType") or OCI_MANIFEST
            client.put_manifest(repo, tag, body, media_type)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self._read_back(descriptor.digest)

    def _push(self, image: str) -> TargetImage:
        """zstd: only ``buildah push`` can choose the format, so the last layer is
        committed as a cache image too (one more stored copy of it) and pushed."""
        log.info("buildah: pushing to %s", self.request.target)
        digest_file = Path(tempfile.mkdtemp(dir=self.request.workspace.tmp_dir)) / "digest"
        try:
            args = ["push", "--quiet", "--compression-format=zstd", f"--digestfile={digest_file}"]
            self.b.run(
                [*args, *self.run.target_args, image, self._destination()],
                step=f"push {self.request.target}",
                remote=self.run.target_remote,
            )
            digest = digest_file.read_text().strip()
        finally:
            shutil.rmtree(digest_file.parent, ignore_errors=True)
        return self._read_back(digest)

    def _repository(self) -> str:
        target = self.request.target
        if not isinstance(target, RegistryTarget):
            raise RuntimeError(f"{target} is not a registry")
        return target.repository

    def _destination(self) -> str:
        target = self.request.target
        if isinstance(target, LayoutTarget):
            target.path.parent.mkdir(parents=True, exist_ok=True)
            return f"oci:{target.path}:{target.tag}"
        return f"docker://{target.ref.name}:{target.tag}"

    def _annotation_args(self) -> list[str]:
        snap = self.run.plan.snapshot
        base = self.request.base_image
        base_digest = self._base_digest()
        notes = image_annotations(
            snap.source_url,
            snap.commit,
            self.request.created,
            __version__,
            base_name=None if base == "scratch" else base,
            base_digest=base_digest,
        )
        # buildah would name the parent cache image as the base; say what it really is.
        return [f"--annotation={k}={v}" for k, v in notes.items()]

    def _base_digest(self) -> str | None:
        return self.base_info.get("FromImageDigest") or None

    # -- reading back -------------------------------------------------------------------

    def _read_back(self, digest: str | None) -> TargetImage:
        target = self.request.target
        if isinstance(target, LayoutTarget):
            layout = OciLayout(target.path)
            descriptor, manifest = layout.read_manifest(target.tag)
            config = json.loads(layout.read_blob(manifest["config"]["digest"]))
            pushed = target_image(descriptor.digest, manifest, config)
        else:
            client, repo = self.run.target_client(), target.repository
            got = client.get_manifest(repo, digest or target.tag, accept=MANIFEST_ACCEPT)
            manifest = json.loads(got.body)
            config = json.loads(client.read_blob(repo, manifest["config"]["digest"]))
            pushed = target_image(got.digest, manifest, config)
        self._check_layers(pushed)
        return pushed

    def _check_layers(self, pushed: TargetImage) -> None:
        n_base, n_plan = len(self.base_diff_ids), len(self.run.plan.layers)
        if len(pushed.layers) != n_base + n_plan or len(pushed.diff_ids) != n_base + n_plan:
            raise BuildFailed(
                f"{self.request.target} has {len(pushed.layers)} layers, expected "
                f"{n_base + n_plan} ({n_base} base + {n_plan} planned)",
                hint=RACE_HINT,
            )
        if pushed.diff_ids[: len(self.parent_diff_ids)] != self.parent_diff_ids:
            raise BuildFailed(
                f"{self.request.target} does not hold the image just built "
                "(was the tag pushed by someone else meanwhile?)",
                hint=RACE_HINT,
            )

    # -- upload accounting --------------------------------------------------------------

    def _present_before(self, last_key: str) -> set[str]:
        """Compressed digests the target already holds, as far as we can name them before
        the push: blobs earlier runs pushed (state) and the base image's own blobs."""
        candidates = self._base_blobs()
        compression = self.request.compression
        last_diff = self.cache.last_diff_id(last_key)
        for diff_id in [*self.parent_diff_ids, last_diff]:
            blob = self.cache.blob(compression, diff_id)
            if blob:
                candidates[blob.digest] = list(blob.repos)
        return {d for d, repos in candidates.items() if self._target_has(d, repos)}

    def _base_blobs(self) -> dict[str, list[str]]:
        """The base's layers as its registry stores them (buildah keeps that manifest);
        on the target's registry they get mounted from the base's repository."""
        manifest = json.loads(self.base_info.get("Manifest") or "{}")
        layers = manifest.get("layers") or []
        if len(layers) != len(self.base_diff_ids):
            return {}
        base = parse_target(self.request.base_image)
        repos = [base.ref.name] if isinstance(base, RegistryTarget) else []
        return {d["digest"]: list(repos) for d in layers}

    def _target_has(self, digest: str, repos: Sequence[str]) -> bool:
        target = self.request.target
        if isinstance(target, LayoutTarget):
            return OciLayout(target.path).has_blob(digest)
        client = self.run.target_client()
        here = f"{target.ref.registry}/"
        # A blob in another repository of the same registry gets mounted, not uploaded.
        others = [r.removeprefix(here) for r in repos if r.startswith(here)]
        for repo in dict.fromkeys([target.repository, *others]):
            with contextlib.suppress(ModelcarError):
                if client.blob_size(repo, digest) is not None:
                    return True
        return False

    # -- results and state --------------------------------------------------------------

    def _result(self, pushed: TargetImage, present: set[str]) -> BuildResult:
        n_base = len(self.base_diff_ids)
        plan = self.run.plan
        layers = []
        uploaded_bytes = 0
        for index, desc in enumerate(pushed.layers):
            uploaded = desc["digest"] not in present
            if uploaded:
                uploaded_bytes += int(desc["size"])
            if index >= n_base:
                files = tuple(f.path for f in plan.layers[index - n_base].files)
                layers.append(
                    LayerResult(
                        desc["digest"],
                        int(desc["size"]),
                        pushed.diff_ids[index],
                        desc["mediaType"],
                        files,
                        uploaded,
                    )
                )
        return BuildResult(
            engine=ENGINE_NAME,
            target=str(self.request.target),
            manifest_digest=pushed.manifest_digest,
            config_digest=pushed.config_digest,
            layers=tuple(layers),
            base_layers=n_base,
            bytes_uploaded=uploaded_bytes,
            timings=self.run.timings,
        )

    def _result_key(self, last_key: str) -> str | None:
        target = self.request.target
        if not isinstance(target, RegistryTarget):
            return None
        ref = target.ref
        return digest_of(
            [
                last_key,
                __version__,
                self.request.compression,
                self.request.base_image,
                ref.registry,
                ref.repository,
                self.request.created,
            ]
        )

    def _remember(
        self, result: BuildResult, result_key: str | None, last_key: str, pushed: TargetImage
    ) -> None:
        where = self._where()
        for desc, diff_id in zip(pushed.layers, pushed.diff_ids, strict=True):
            self.cache.remember_blob(
                self.request.compression, diff_id, desc["digest"], int(desc["size"]), where
            )
        self.cache.remember_last_diff_id(last_key, pushed.diff_ids[-1])
        if result_key is not None:
            image = PushedImage(
                result.manifest_digest,
                result.config_digest,
                result.base_layers,
                tuple((x.digest, x.size, x.diff_id, x.media_type) for x in result.layers),
            )
            self.cache.remember_pushed_image(result_key, image)
        self.cache.save()

    def _where(self) -> str | None:
        target = self.request.target
        return target.ref.name if isinstance(target, RegistryTarget) else None

    def _alreadypushed_image(self, result_key: str | None) -> BuildResult | None:
        """The same image pushed by an earlier run: check it is whole, re-tag, done."""
        record = self.cache.pushed_image(result_key)
        client, target = self.run.client, self.request.target
        if record is None or client is None or not isinstance(target, RegistryTarget):
            return None
        repo, tag = target.repository, target.tag
        digest = record.manifest
        if client.head_manifest(repo, digest, accept=MANIFEST_ACCEPT) is None:
            return None
        blobs = [(record.config, None)] + [(d, size) for d, size, *_ in record.layers]
        for blob, size in blobs:
            found = client.blob_size(repo, blob)
            if found is None or (size is not None and found != size):
                return None
        current = client.head_manifest(repo, tag, accept=MANIFEST_ACCEPT)
        if current is None or current.digest != digest:
            manifest = client.get_manifest(repo, digest, accept=MANIFEST_ACCEPT)
            client.put_manifest(repo, tag, manifest.body, manifest.media_type)
        plan = self.run.plan
        layers = tuple(
            LayerResult(d, size, diff_id, media, tuple(f.path for f in lp.files), False)
            for (d, size, diff_id, media), lp in zip(record.layers, plan.layers, strict=True)
        )
        return BuildResult(
            engine=ENGINE_NAME,
            target=str(self.request.target),
            manifest_digest=digest,
            config_digest=record.config,
            layers=layers,
            base_layers=record.base_layers,
            bytes_uploaded=0,
            timings=self.run.timings,
        )
