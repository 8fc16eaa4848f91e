"""``--load``: a docker-archive (what `docker save` writes and both `docker load` and
`podman load` read) streamed straight from the fetched files into the local image store,
with no archive file on disk. The config and manifest come from
:func:`~modelcar_builder.engines.assemble.assemble_image`, so the loaded image has the
same layers, labels and config digest as the native engine's push.

Layers go first, each hashed as it is sent; the config and ``manifest.json`` follow at
the end (the readers collect the whole archive before they look at it)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import IO, cast

from modelcar_builder.engines import BuildRequest, BuildResult, LayerResult
from modelcar_builder.engines.assemble import BuiltLayer, ImageDocuments, assemble_image
from modelcar_builder.engines.base_image import BaseSource, load_base
from modelcar_builder.engines.catalog import check_stream
from modelcar_builder.errors import BuildFailed, EngineUnavailable, UsageError
from modelcar_builder.oci import MEDIA_TYPE_LAYER
from modelcar_builder.oci.layer import Chunk, DigestingIterator, TarLayer
from modelcar_builder.settings import environment
from modelcar_builder.verify import VerifyResult, check_local_image

log = logging.getLogger("modelcar.engines.archive")
STORES = ("podman", "docker")


@dataclass(frozen=True)
class ArchiveLayer:
    name: str  # member name in the archive
    size: int
    chunks: Callable[[], Iterable[Chunk]]


def _member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(tarfile.PAX_FORMAT)


def _pad(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def docker_archive(
    tag: str,
    layers: list[ArchiveLayer],
    config_for: Callable[[list[str]], bytes],
    diff_ids: list[str | None],
) -> Iterator[bytes]:
    """The archive of an image tagged ``tag``. ``diff_ids[i]`` None: layer i is an
    uncompressed tar whose digest is taken while it streams; ``config_for`` gets every
    diff_id and returns the config bytes."""
    seen: list[str] = []
    for layer, known in zip(layers, diff_ids, strict=True):
        yield _member(layer.name, layer.size)
        stream = DigestingIterator(layer.chunks())
        yield from (bytes(c) for c in stream)
        if stream.size != layer.size:
            raise BuildFailed(f"{layer.name}: {stream.size} bytes, expected {layer.size}")
        yield _pad(layer.size)
        seen.append(known or stream.digest)
    config = config_for(seen)
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [tag], "Layers": [ly.name for ly in layers]}]
    ).encode()
    for name, data in ((config_name, config), ("manifest.json", manifest)):
        yield _member(name, len(data))
        yield data
        yield _pad(len(data))
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


class ModelArchive:
    """The ModelCar of ``request`` as a docker-archive; ``docs`` is set once it has been
    read to the end."""

    def __init__(self, request: BuildRequest, base: BaseSource, tag: str) -> None:
        if request.files_dir is None:  # streamed: check_stream's own --load error
            check_stream("native", request.plan.snapshot.kind, load=True)
            raise UsageError("--load was given no model files")  # check_stream raised first
        self.request, self.base, self.tag = request, base, tag
        self.docs: ImageDocuments | None = None
        self.built: list[BuiltLayer] = []
        files_dir = request.files_dir
        self.layers = _blob_layers(base)
        self.tars = [TarLayer.from_files(lp.files, files_dir) for lp in request.plan.layers]
        self.layers += [
            ArchiveLayer(f"model-{i}.tar", tar.size, tar.chunks) for i, tar in enumerate(self.tars)
        ]
        self.known: list[str | None] = [*(base.image.diff_ids if base.image else []),
                                        *([None] * len(self.tars))]  # fmt: skip

    def _config(self, diff_ids: list[str]) -> bytes:
        model = diff_ids[len(diff_ids) - len(self.tars) :]
        self.built = [BuiltLayer(d, t.size, d) for d, t in zip(model, self.tars, strict=True)]
        self.docs = assemble_image(self.request, self.base, self.built, MEDIA_TYPE_LAYER)
        return self.docs.config

    def __iter__(self) -> Iterator[bytes]:
        return docker_archive(self.tag, self.layers, self._config, self.known)


def _blob_layers(base: BaseSource) -> list[ArchiveLayer]:
    """The base's layer blobs as they are (compressed or not: the readers inflate)."""
    layers = base.image.layers if base.image else ()
    return [
        ArchiveLayer(f"{d.digest.split(':')[1]}.tar", d.size, partial(base.open_blob, d.digest))
        for d in layers
    ]


def base_archive(base: BaseSource, tag: str) -> Iterator[bytes]:
    """A base image read from an oci: layout, as an archive a local store can load."""
    image = base.image
    if image is None:  # scratch has no layout to load: callers pass an oci: layout's base
        raise UsageError(f"--base-image scratch cannot be loaded as an archive ({tag})")
    layers = _blob_layers(base)
    config = json.dumps(dict(image.config)).encode()
    return docker_archive(tag, layers, lambda _ids: config, list(image.diff_ids))


# -- local stores ----------------------------------------------------------------------------


class PodmanStore:
    name = "podman"

    def __init__(self) -> None:
        exe = shutil.which("podman")
        if exe is None:
            raise EngineUnavailable(
                "--load podman: podman is not installed", hint="install podman, or --load docker"
            )
        self.exe = exe

    def load(self, chunks: Iterable[bytes]) -> None:
        argv = [self.exe, "load", "-q"]
        log.debug("running %s", " ".join(argv))
        with tempfile.TemporaryFile() as err:  # a file: a chatty podman cannot block us
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=err)  # fmt: skip
            stdin = cast(IO[bytes], proc.stdin)  # stdin=PIPE: always a pipe
            try:
                with stdin:
                    for chunk in chunks:
                        stdin.write(chunk)
            except BrokenPipeError:
                pass  # podman gave up: its exit status and stderr say why
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            if proc.wait() != 0:
                err.seek(0)
                text = err.read().decode(errors="replace")
                raise BuildFailed(f"podman load failed: {_last_line(text)}")

    def inspect(self, name: str) -> dict:
        proc = subprocess.run([self.exe, "image", "inspect", name], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildFailed(f"podman image inspect {name}: {_last_line(proc.stderr)}")
        doc = json.loads(proc.stdout)[0]
        return {
            "id": "sha256:" + doc["Id"].removeprefix("sha256:"),
            "config": doc.get("Config") or {},
            "diff_ids": (doc.get("RootFS") or {}).get("Layers") or [],
        }

    def close(self) -> None:
        pass


class DockerStore:
    name = "docker"

    def __init__(self, client=None) -> None:  # a docker.DockerClient
        self.client = client or docker_client()

    def load(self, chunks: Iterable[bytes]) -> None:
        from docker.errors import APIError

        try:
            for line in self.client.api.load_image(_small_chunks(chunks)):
                if isinstance(line, dict) and line.get("error"):
                    raise BuildFailed(f"docker load failed: {line['error']}")
        except APIError as exc:
            raise BuildFailed(f"docker load failed: {exc.explanation or exc}") from None

    def inspect(self, name: str) -> dict:
        from docker.errors import APIError

        try:
            doc = self.client.api.inspect_image(name)
        except APIError as exc:
            raise BuildFailed(f"docker image inspect {name}: {exc.explanation or exc}") from None
        return {
            "id": doc["Id"],
            "config": doc.get("Config") or {},
            "diff_ids": (doc.get("RootFS") or {}).get("Layers") or [],
        }

    def close(self) -> None:
        self.client.close()


def _small_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        yield bytes(chunk)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def docker_client():
    """A Docker Engine API client for DOCKER_HOST (or the default socket): dockerd, or
    podman's Docker-compatible service."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        raise EngineUnavailable(
            "the docker engine needs the Python package `docker`",
            hint="pip install 'modelcar-builder[docker]'",
        ) from None
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        raise EngineUnavailable(
            f"no Docker Engine API answers at {_docker_host()}: {type(exc).__name__}",
            hint="start dockerd (or `podman system service`) and set DOCKER_HOST=unix://SOCKET",
        ) from None
    return client


def _docker_host() -> str:
    return environment().get("DOCKER_HOST", "unix:///var/run/docker.sock")


def open_store(name: str):
    if name == "podman":
        return PodmanStore()
    if name == "docker":
        return DockerStore()
    raise UsageError(f"unknown store {name!r}", hint=f"--load {' or '.join(STORES)}")


def load_model(request: BuildRequest, store, tag: str) -> tuple[BuildResult, VerifyResult]:
    """Stream the ModelCar of ``request`` into ``store`` as ``tag``, then read it back:
    the store's image id must be the config digest we made, with our labels."""
    base = load_base(request.options.base_image, request.platform, request.registry)
    try:
        archive = ModelArchive(request, base, tag)
        store.load(iter(archive))
    finally:
        base.close()
    docs = archive.docs
    if docs is None:  # set once the stream reached its manifest: the store stopped reading
        raise BuildFailed(f"the local store stopped reading the archive of {tag} before its end")
    verified = check_local_image(
        store.inspect(tag), tag, docs.config_digest, request.plan.snapshot.image_labels,
        len(archive.layers),
    )  # fmt: skip
    n_base = len(archive.layers) - len(archive.tars)
    layers = tuple(
        LayerResult(b.digest, b.size, b.diff_id, MEDIA_TYPE_LAYER,
                    tuple(f.path for f in lp.files), False)
        for b, lp in zip(archive.built, request.plan.layers, strict=True)
    )  # fmt: skip
    result = BuildResult(store.name, tag, docs.manifest_digest, docs.config_digest, layers,
                         n_base, 0)  # fmt: skip
    return result, verified
