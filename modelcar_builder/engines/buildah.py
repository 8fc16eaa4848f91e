"""The buildah engine: the planned layers committed one by one with real buildah (1.28+).

Two modes, ``MODELCAR_BUILDAH_MODE=per-layer`` (default) or ``chain``; zstd always uses
the chain (only ``buildah push`` writes zstd).

Per-layer mode (default)
------------------------
``prepare_context`` lays out ``layer-NNN/`` dirs of hard links. Each planned layer gets
its OWN container, and only buildah's layer tar is used::

    buildah from --pull=never scratch
    buildah copy --chown 0:0 <ctr> layer-NNN/ /models/
    buildah commit --rm --timestamp T --disable-compression=<none?> <ctr> oci:TMP/L:layer

The one layer blob (gzip, or plain tar for ``none``) and its diff_id are read from that
layout, the blob goes to the target (HEAD first, or a mount from a repository of the same
registry an earlier run pushed it to; else one streaming PUT with our client; a hard link
into an ``oci:`` target), and the layout is deleted once the blob is there. Overlap
(``MODELCAR_BUILDAH_OVERLAP=1``, the default; ``=0`` turns it off): for a registry target
the upload of layer i runs in one daemon thread while layer i+1 is built, at most one
upload in flight (layer i+1's upload starts only after layer i's ended); the thread
deletes layer i's layout when its upload ends, the layer's cache entry is written (in the
main thread) only after it succeeded, and an upload error is re-raised in the main thread
as is, before any further layer is built. An ``oci:`` target stays sequential. Config
and manifest are written by us exactly as the native engine writes them (base layers from
the base image, read with our client, + ours; labels; no Entrypoint/Cmd; annotations). The
layer tar is ``models/...``, 0:0, dirs 0755, files 0644, mtime T: the same bytes as the
chain's layers (tested), the same on vfs and overlay, on any machine. Nothing stays in
buildah's storage, so the peak is three copies of the LARGEST layer (container, buildah's
temp blob, layout blob: :func:`estimate_per_layer_peak`), plus with overlap the layout
of the layer still uploading (at worst the second largest), whatever the driver and the
number of layers: vfs is no longer quadratic. Reruns: a layer cache in the workspace
state (``buildah.per_layer``, keyed by content + compression + timestamp + recipe, like
native's ``_cache_key``) maps each layer to its blob; a layer whose blob the target
already has (or can mount) is not built at all, so an unchanged re-push runs no buildah.
Buildah never talks to a registry here, so it never sees credentials.

End to end, 2 GiB model (4 x 512 MiB random shards + 2 small files = 5 layers, local dir,
scratch base, gzip, loopback registry; peak extra disk sampled every 50 ms over workspace
+ TMPDIR + storage + /var/tmp, as multiples of the model; one run each, ~±2 s, measured
back to back on the same machine with /work/mbench/measure.py):

    contender                                   wall    peak / left   vs stock (overlay)
    stock buildah bud + push, vfs               37.2 s  4.00x / 1.00x
    stock buildah bud + push, overlay           36.4 s  4.00x / 1.00x  1.00x
    chain mode, vfs                             40.4 s  4.00x / 2.50x  0.90x
    chain mode, overlay                         30.9 s  1.74x / 1.00x  1.18x
    per-layer mode, vfs                         22.8 s  0.75x / 0.00x  1.60x
    per-layer mode, overlay                     22.8 s  0.75x / 0.00x  1.60x
    per-layer mode, vfs, --compression none     22.2 s  0.75x / 0.00x  1.64x

(per 512 MiB layer: from + copy ~1.5 s, commit to the layout ~2.7 s whether gzip or not,
upload ~1.5 s). So per-layer is faster and leaner on both drivers, hence the default.
Upload overlap, same model and harness, model generated in /tmp, runs alternated:

    per-layer mode                              overlap=0          overlap=1
    vfs, gzip (3 runs each)                     22.4-23.0 s 0.75x  18.7-19.1 s 0.75x  1.20x
    overlay, gzip                               22.5 s      0.75x  19.2 s      0.75x  1.17x
    vfs, --compression none                     22.9 s      0.75x  19.6 s      0.75x  1.17x

(peak / left as above; left 0.00x throughout). The ~1.5 s upload of layer i ends during
layer i+1's from + copy, before its commit writes the temp and layout blobs, so the
sampled peak did not grow; with a slower registry it can, up to one more layer (the
estimate: 3 x 512 + 512 MiB = 1.00x here, vs 0.75x without overlap). Faster on every
driver and compression, so overlap is the default.

Chain mode (``MODELCAR_BUILDAH_MODE=chain``)
--------------------------------------------
For each planned layer, in order, the engine runs::

    buildah from --pull=never --isolation chroot <previous image>
    buildah copy --chown 0:0 <ctr> layer-NNN/ /models/
    buildah commit --rm --timestamp T <ctr>                 (all but the last; the ID is
    buildah tag <id> localhost/modelcar-cache:<id>           recorded in the workspace state)
    buildah commit --rm --timestamp T <ctr> docker://REGISTRY/REPO:TAG      (the last one)

so every COPY is exactly one layer, intermediate images double as a resume cache keyed by
content (a rerun after a failure restarts at the first layer not yet committed), and the
last layer never lands in buildah's storage: it goes from the container straight to the
registry (or ``oci:PATH:TAG``). ``--timestamp`` fixes layer mtimes and config dates, so the
same model gives the same digest on any machine. Afterwards the image is read back from the
target (manifest + config) and must have exactly base layers + one per planned layer.

Measured on this machine (buildah 1.28.2, 2 cores, ext4, loopback distribution 2.8): model
of 4 x 128 MiB incompressible shards + 2 small files (5 layers), numbers as multiples of
the model size, extra disk on top of the model itself (storage + runroot + TMPDIR):

    path                                          vfs peak / left   overlay peak / left
    bud (no --layers)                             4.0x / 1.0x       -   (1 squashed layer!)
    bud --layers, then push                       5.5x / 2.5x       2.5x / 1.0x  (push: +1.0x temp)
    bud --layers -t docker://… (no push step)     4.3x / 1.5x       2.0x / 0.75x
    from/copy/commit chain, then push             4.0x / 2.5x       2.0x / 1.0x
    from/copy/commit chain, last commit → docker  2.8x / 1.5x       1.5x / 0.75x   <- this

(this engine, re-measured end to end: vfs 2.77x / 1.52x, overlay 1.50x / 0.75x). Wall
time was the same for all within noise (9-13 s incl. gzip push). ``bud`` without
``--layers`` squashes every COPY into one layer (verified: 2 layers = base + 1), so ``bud``
needs ``--layers``, and then keeps every intermediate container until the end of the
stage, which is where its extra copies come from. ``buildah push`` (and a commit to
``docker://``) first copies each layer it must upload into ``$TMPDIR`` (containers/image
storage source), so ``TMPDIR`` points at the workspace too.

End to end, 2 GiB model (4 x 512 MiB random shards + 2 small files = 5 layers, local dir,
scratch base, loopback registry; peak extra disk sampled every 50 ms over workspace +
TMPDIR + storage + /var/tmp, as multiples of the model; one run each, ~±2 s):

    contender                                   wall    peak / left
    stock buildah bud + push, vfs               39.7 s  4.00x / 1.00x
    stock buildah bud + push, overlay           34.7 s  4.00x / 1.00x
    this engine before, vfs (gzip)              46.2 s  4.00x / 2.50x
    this engine, overlay (auto here), gzip      30.3 s  1.75x / 1.00x   <- default here
    this engine, overlay, --compression none    35.5 s  2.00x / 1.00x   (layout + upload)
    this engine, vfs, --compression none        43.3 s  4.50x / 2.50x

Per 512 MiB layer, ``buildah copy`` takes ~1.5 s and ``buildah commit`` to storage ~4.2 s
(diff tar in TMPDIR, containers/storage's temp copy, then the new layer: 4 copies of the
layer at the peak); the final gzip commit to the registry ~8 s. So with 2 cores the
commits, not gzip, bound the speed: 1.3x stock, not the 1.5x asked for.

Storage driver: ``auto`` (default; ``MODELCAR_BUILDAH_STORAGE_DRIVER`` overrides) uses
overlay when we are root with CAP_SYS_ADMIN (CapEff bit 21) and a real overlay mount with
its upper dir in the storage dir works (:func:`overlay_unusable`), else vfs with one
warning saying why and what it costs. vfs is quadratic in the number of layers: each vfs
layer and container is a full copy of the tree below it (N equal layers ~N/2 model
copies; a 30-shard model ~15x). buildah 1.28 cannot avoid that alone: a container
``from`` an image is a copy of it, and no buildah command stacks layers of separately
committed images into one image (``copy --from`` copies files into a new layer). The
up-front space check uses :func:`estimate_peak_bytes` for the chosen driver (chain mode)
or :func:`estimate_per_layer_peak` (per-layer mode, where the driver makes no difference:
``auto`` then falls back to vfs with an info line only).

Where buildah keeps state
-------------------------
``--root``/``--runroot`` live in ``workspace.storage_dir/<driver>``, ``TMPDIR`` in
``workspace.tmp_dir``. As root, containers/image keeps its blob-info cache (which layer
digests a registry already has) in /var/lib/containers/cache whatever ``--root`` says; in
a fresh pod that cache is empty and buildah re-uploads every layer the registry already
holds (measured: 5 of 5 layers re-sent). With ``MODELCAR_BUILDAH_PRIVATE_STATE=1``
(default) buildah runs with ``_CONTAINERS_USERNS_CONFIGURED=done`` and a non-zero
``_CONTAINERS_ROOTLESS_UID`` (containers/storage's own re-exec markers), which moves that
cache to ``$XDG_DATA_HOME`` on the workspace (measured: 0 re-sent). The same markers stop
buildah from re-executing itself in a user namespace when root lacks CAP_SYS_ADMIN, the
step that needs CAP_SETFCAP (the seed's uid_map failure): the from/copy/commit chain never
runs a container, so with vfs it works without SETFCAP. ``=0`` restores buildah's defaults
With overlay and CAP_SYS_ADMIN the markers are not set (they make overlay export a
non-reproducible ``user.overlay.origin`` xattr into the layers), so there the cache
stays in /var/lib/containers/cache. (The markers are containers/storage internals: if
a buildah release drops them, the cache falls back to /var/lib/containers and
privileges to buildah's usual rules.)

Reruns (chain): a rerun of the same content to the same repository finds the manifest it pushed
last time (workspace state), HEADs every blob, re-tags if needed and runs no buildah at
all; otherwise cached layers are reused and buildah's (workspace) blob-info cache makes it
skip or mount blobs the registry has. Images of other builds are removed from the private
storage before a build starts, so the volume holds one model's chain at most.

Compression (chain): commit to ``docker://`` always compresses (gzip; ``-D`` is ignored for
registries). ``none`` to a registry commits with ``--disable-compression`` to an OCI layout
in the workspace's tmp dir, uploads its blobs with our :class:`RegistryClient` (HEAD, then
one streaming PUT each) and the manifest, and deletes the layout (one more model copy at
the peak, and slower than gzip here: see the table). ``zstd`` needs ``buildah push
--compression-format zstd``, so the last layer is stored as a cache image too (one more
copy of it); KServe's oci:// fetch rejects zstd, and a blob-info cache that knows gzip
versions of the layers makes buildah reuse those instead (measured).
Credentials go to buildah only in a 0600 authfile (never argv); errors are one line with
every secret scrubbed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from modelcar_builder import __version__
from modelcar_builder.auth import Credentials, private_authfile, resolve_credentials
from modelcar_builder.context import image_labels, prepare_context
from modelcar_builder.engines import BuildRequest, BuildResult, LayerResult
from modelcar_builder.engines.assemble import BuiltLayer, assemble_image
from modelcar_builder.engines.base import BaseSource, load_base
from modelcar_builder.engines.sinks import LayoutSink, RegistrySink
from modelcar_builder.errors import (
    BuildFailed,
    EnginePrivilegeError,
    EngineUnavailable,
    ModelcarError,
    RegistryAuthError,
    RegistryUnreachable,
    UsageError,
)
from modelcar_builder.oci import INDEX_MEDIA_TYPES, MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.image import (
    base_image,
    image_annotations,
    select_platform,
)
from modelcar_builder.oci.layer import layer_media_type
from modelcar_builder.oci.layout import OciLayout
from modelcar_builder.plan import LayerPlan, Plan
from modelcar_builder.progress import Progress
from modelcar_builder.registry import DOCKER_MANIFEST, OCI_MANIFEST, RegistryClient
from modelcar_builder.target import LayoutTarget, RegistryTarget, parse_target
from modelcar_builder.workspace import DIR_MODE, State, make_dir

log = logging.getLogger("modelcar")

ENV_STORAGE_DRIVER = "MODELCAR_BUILDAH_STORAGE_DRIVER"
ENV_ISOLATION = "MODELCAR_BUILDAH_ISOLATION"
ENV_PRIVATE_STATE = "MODELCAR_BUILDAH_PRIVATE_STATE"
ENV_MODE = "MODELCAR_BUILDAH_MODE"
ENV_OVERLAP = "MODELCAR_BUILDAH_OVERLAP"
DEFAULT_OVERLAP = True  # per-layer mode: upload layer i while layer i+1 is built (measured)
MODES = ("per-layer", "chain")
DEFAULT_MODE = "per-layer"
CACHE_REPO = "localhost/modelcar-cache"
RECIPE = "buildah-chain-v1"  # part of every cache key: change it when the commands change
RECIPE_PER_LAYER = "buildah-per-layer-v1"  # the same for the per-layer mode's layer cache
_ROOTLESS_MARKER_UID = "4242"  # any non-zero uid: only routes c/image's cache to XDG dirs
_MANIFEST_ACCEPT = (OCI_MANIFEST, DOCKER_MANIFEST)
_MAX_LINE = 300

INSTALL_HINT = (
    "install the buildah package (Debian/Ubuntu: apt-get install buildah; "
    "RHEL/Fedora: dnf install buildah), or use --engine native, which needs no buildah"
)
MOUNT_HINT = (
    "the overlay driver needs CAP_SYS_ADMIN to mount; set MODELCAR_BUILDAH_STORAGE_DRIVER=vfs, "
    "run the pod privileged, or use --engine native"
)


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildahSettings:
    storage_driver: str = "auto"  # auto: overlay where it can mount, else vfs
    isolation: str = "chroot"
    private_state: bool = True
    mode: str = DEFAULT_MODE  # per-layer: one container per layer; chain: from/copy/commit
    overlap: bool = DEFAULT_OVERLAP  # per-layer, registry target: one upload in flight

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BuildahSettings:
        private = env.get(ENV_PRIVATE_STATE, "1").strip().lower() not in ("0", "false", "no")
        overlap = env.get(ENV_OVERLAP, "").strip().lower()
        if overlap not in ("", "0", "1", "true", "false", "yes", "no"):
            raise UsageError(f"{ENV_OVERLAP}={overlap!r} is not a switch", hint="use 0 or 1")
        mode = env.get(ENV_MODE, "").strip().lower() or DEFAULT_MODE
        if mode not in MODES:
            raise UsageError(f"{ENV_MODE}={mode!r} is not a mode", hint=f"use {' or '.join(MODES)}")
        return cls(
            storage_driver=env.get(ENV_STORAGE_DRIVER, "").strip() or "auto",
            isolation=env.get(ENV_ISOLATION, "").strip() or "chroot",
            private_state=private,
            mode=mode,
            overlap=overlap in ("1", "true", "yes") if overlap else DEFAULT_OVERLAP,
        )


# -- storage driver ------------------------------------------------------------------------

_CAP_SYS_ADMIN = 21
_MS_RDONLY = 1


def has_cap_sys_admin(status: str | None = None) -> bool:
    """Bit 21 of CapEff in /proc/self/status: what overlay (and any mount) needs."""
    if status is None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False


def overlay_unusable(storage_root: Path) -> str | None:
    """None when an overlay mount works with its upper dir in ``storage_root`` (where
    buildah's overlay storage would live), else why not. Mounts and unmounts a tiny
    overlay for real: CAP_SYS_ADMIN alone says nothing about the filesystem (overlay
    cannot have its upper dir on overlay, NFS and some FUSE filesystems)."""
    if os.geteuid() != 0:
        return "not root"
    if not has_cap_sys_admin():
        return "no CAP_SYS_ADMIN (not a privileged pod)"
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:  # pragma: no cover - every glibc/musl has mount(2)
        return f"no libc mount(2): {exc}"
    probe = Path(tempfile.mkdtemp(prefix="overlay-probe-", dir=make_dir(storage_root, DIR_MODE)))
    try:
        for sub in ("lower", "upper", "work", "merged"):
            (probe / sub).mkdir()
        (probe / "lower" / "f").write_bytes(b"x")
        opts = f"lowerdir={probe / 'lower'},upperdir={probe / 'upper'},workdir={probe / 'work'}"
        merged = str(probe / "merged").encode()
        if libc.mount(b"overlay", merged, b"overlay", 0, opts.encode()) != 0:
            err = ctypes.get_errno()
            return f"overlay mount refused in {storage_root}: {os.strerror(err)}"
        try:
            ok = (probe / "merged" / "f").read_bytes() == b"x"
        finally:
            libc.umount2(merged, 0)
        return None if ok else "overlay mount does not show its lower dir"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def choose_driver(settings: BuildahSettings, storage_root: Path, sizes: Sequence[int]) -> str:
    """The driver this build uses: the one the environment names, else overlay when it
    mounts here, else vfs (with one line saying why and what it costs)."""
    if settings.storage_driver != "auto":
        return settings.storage_driver
    why = overlay_unusable(storage_root)
    if why is None:
        log.debug("buildah: overlay storage (mount probe in %s succeeded)", storage_root)
        return "overlay"
    if settings.mode == "per-layer":
        # One container per layer, from scratch: vfs costs no more disk than overlay.
        log.info("buildah: vfs storage, because %s", why)
        return "vfs"
    total = sum(sizes) or 1
    vfs, overlay = (estimate_peak_bytes(sizes, d) / total for d in ("vfs", "overlay"))
    log.warning(
        "buildah: vfs storage, because %s: it needs about %.1fx the model in extra disk "
        "(overlay: %.1fx); set %s=overlay in a privileged pod, or use --engine native",
        why,
        vfs,
        overlay,
        ENV_STORAGE_DRIVER,
    )
    return "vfs"


def estimate_peak_bytes(layer_sizes: Sequence[int], storage_driver: str) -> int:
    """Extra disk the chain needs at its peak, beyond the model files.

    Committing layer i to storage holds, besides the layers already stored, the working
    container, buildah's diff tar in TMPDIR, containers/storage's temp copy of that tar
    and the new layer (measured). vfs stores every layer and container as a full copy of
    the tree below it; overlay stores only the diff. The last layer goes from its
    container to the target with one temp copy of the largest layer (gzip); with
    ``compression none`` :func:`estimate_layout_peak` applies instead.
    ``auto`` is estimated as what the CAP_SYS_ADMIN check alone predicts."""
    if not layer_sizes:
        return 0
    if storage_driver == "auto":
        storage_driver = "overlay" if os.geteuid() == 0 and has_cap_sys_admin() else "vfs"
    vfs = storage_driver == "vfs"
    peak, stored, tree = 0, 0, 0
    for index, size in enumerate(layer_sizes):
        tree += size
        own = tree if vfs else size  # what one layer / container of this step occupies
        if index < len(layer_sizes) - 1:
            peak = max(peak, stored + 2 * own + 2 * size)
            stored += own
        else:
            peak = max(peak, stored + own + size + max(layer_sizes))
    return peak


def estimate_per_layer_peak(layer_sizes: Sequence[int], overlap: bool = False) -> int:
    """Extra disk of the per-layer mode at its peak, beyond the model files: while the
    largest layer is committed, its working container, buildah's blob in TMPDIR and the
    blob in the per-layer OCI layout (measured, any driver: the container holds that
    layer alone). Every other layer is gone by then; a layout target keeps its blobs,
    but those are the output, not scratch space. With ``overlap`` (one upload in flight
    while the next layer is built) the layout of one other layer is still there: at
    worst the second largest while the largest is committed."""
    sizes = sorted(layer_sizes, reverse=True)
    peak = 3 * sizes[0] if sizes else 0
    if overlap and len(sizes) > 1:
        peak += sizes[1]
    return peak


def estimate_layout_peak(layer_sizes: Sequence[int], storage_driver: str) -> int:
    """``compression none`` to a registry: the last step writes the whole image,
    uncompressed, to an OCI layout in the workspace before uploading it."""
    if not layer_sizes:
        return 0
    return estimate_peak_bytes(layer_sizes, storage_driver) + sum(layer_sizes)


# -- failures ------------------------------------------------------------------------------

_LOGRUS_RE = re.compile(r'level=(?:error|fatal) msg="((?:[^"\\]|\\.)*)"')
_NOISE = ("(unable to determine exit status)", "exit status 1", "exit status 125")
_USERNS_MARKERS = ("uid_map", "gid_map", "newuidmap", "newgidmap", "clone_newuser", "setgroups")
_AUTH_MARKERS = (
    "unauthorized",
    "authentication required",
    "requested access to the resource is denied",
    "invalid username/password",
    "status 401",
    "status 403",
)
_UNREACHABLE_MARKERS = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "connection reset by peer",
    "x509:",
    "tls:",
    "server gave http response to https client",
    "certificate signed by unknown authority",
)


@dataclass(frozen=True)
class Remote:
    """The registry a buildah step talks to, for error messages (never holds a secret)."""

    host: str
    creds_source: str | None  # Credentials.source, or None when none were found


def scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def secret_forms(creds: Credentials | None) -> tuple[str, ...]:
    """Every string that would reveal the secret: itself and its auth.json encoding."""
    if creds is None:
        return ()
    forms = list(creds.secrets())
    if creds.password:
        forms.append(base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode())
    return tuple(forms)


def meaningful_line(stderr: str) -> str:
    """The line that says what went wrong: the last ``Error:`` line, else the last
    logrus error, else the last non-empty line (buildah ends with noise like
    ``(Unable to determine exit status)``)."""
    errors: list[str] = []
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        match = _LOGRUS_RE.search(line)
        if match:
            text = match.group(1).encode().decode("unicode_escape", errors="replace")
        elif line.startswith("Error:"):
            text = line[len("Error:") :].strip()
        else:
            continue
        if text and text.lower() not in _NOISE:
            errors.append(text)
    plain = [line for line in lines if not line.startswith("time=")]
    best = (errors or plain or lines or ["no error output"])[-1]
    return best if len(best) <= _MAX_LINE else best[: _MAX_LINE - 1] + "…"


def classify_failure(
    step: str, stderr: str, remote: Remote | None = None, secrets: Sequence[str] = ()
) -> ModelcarError:
    """One user-facing error for a failed buildah command; no secret survives in it."""
    text = scrub(stderr, secrets)
    low = text.lower()
    line = meaningful_line(text)
    if "operation not permitted" in low and any(m in low for m in _USERNS_MARKERS):
        return EnginePrivilegeError(f"buildah cannot create its user namespace: {line}")
    if "operation not permitted" in low and "mount" in low:
        return EnginePrivilegeError(f"buildah cannot mount its storage: {line}", hint=MOUNT_HINT)
    if remote is not None and any(m in low for m in _AUTH_MARKERS):
        if remote.creds_source:
            what = f"refused the credentials from {remote.creds_source}"
        else:
            what = "requires credentials, and none were found for it"
        return RegistryAuthError(f"registry {remote.host} {what} (buildah {step}: {line})")
    if remote is not None and any(m in low for m in _UNREACHABLE_MARKERS):
        return RegistryUnreachable(f"cannot reach registry {remote.host} (buildah {step}): {line}")
    return BuildFailed(f"buildah {step} failed: {line}")


# -- running buildah -----------------------------------------------------------------------


@dataclass
class Buildah:
    """argv prefix + environment; every call is an argv list, never a shell."""

    prefix: tuple[str, ...]
    env: dict[str, str] = field(repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def run(self, args: Sequence[str], step: str, remote: Remote | None = None) -> str:
        argv = [*self.prefix, *args]
        log.debug("running %s", " ".join(argv))  # argv holds paths, never a secret
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                text=True,
                errors="replace",
            )
        except FileNotFoundError:
            raise EngineUnavailable(f"{self.prefix[0]} not found", hint=INSTALL_HINT) from None
        tail: deque[str] = deque(maxlen=200)
        pump = threading.Thread(target=self._pump, args=(proc, tail), daemon=True)
        pump.start()
        try:
            assert proc.stdout is not None
            out = proc.stdout.read()
            code = proc.wait()
        except BaseException:
            proc.kill()  # our own child, by pid: never leave a buildah writing the volume
            proc.wait()
            raise
        finally:
            pump.join()
        if code != 0:
            raise classify_failure(step, "\n".join(tail), remote, self.secrets)
        return out

    def _pump(self, proc: subprocess.Popen[str], tail: deque[str]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = scrub(raw.rstrip("\n"), self.secrets)
            tail.append(line)
            log.debug("buildah: %s", line)


def find_buildah(env: Mapping[str, str]) -> str:
    exe = shutil.which("buildah", path=env.get("PATH", os.defpath))
    if exe is None:
        raise EngineUnavailable("buildah is not installed (not on PATH)", hint=INSTALL_HINT)
    return exe


def buildah_env(workspace_tmp: Path, state_dir: Path, settings: BuildahSettings) -> dict[str, str]:
    """TMPDIR (big temp copies) and, with private state, XDG dirs on the workspace."""
    env = {k: v for k, v in os.environ.items() if k not in ("BUILDAH_ISOLATION", "BUILDAH_LAYERS")}
    env["TMPDIR"] = str(workspace_tmp)
    if settings.private_state:
        for sub in ("data", "config", "run"):
            make_dir(state_dir / sub, 0o700)
        env["XDG_DATA_HOME"] = str(state_dir / "data")
        env["XDG_CONFIG_HOME"] = str(state_dir / "config")
        env["XDG_RUNTIME_DIR"] = str(state_dir / "run")
        mounts = settings.storage_driver == "overlay" and has_cap_sys_admin()
        if os.geteuid() == 0 and not mounts:
            # Not with overlay: either marker makes containers/storage think it is
            # rootless, overlay then mounts with ``userxattr`` and buildah 1.28 exports the
            # kernel's ``user.overlay.origin`` xattr (an inode file handle) into every layer
            # that touches /models, so digests stop being reproducible (measured). With
            # CAP_SYS_ADMIN buildah does not re-exec anyway; the blob-info cache then
            # stays in /var/lib/containers/cache.
            env["_CONTAINERS_USERNS_CONFIGURED"] = "done"
            env["_CONTAINERS_ROOTLESS_UID"] = _ROOTLESS_MARKER_UID
    return env


# -- keys and small helpers ----------------------------------------------------------------


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()


def layer_key(files_dir: Path, layer: LayerPlan) -> str:
    """Identity of a layer's bytes without reading them (like the native engine's)."""
    files = []
    for f in layer.files:
        ident = f.sha256 or f.blob_id or f"mtime:{(files_dir / f.path).stat().st_mtime_ns}"
        files.append([f.path, f.size, ident])
    return _sha(files)


def chain_keys(head: Any, files_dir: Path, plan: Plan) -> list[str]:
    """key[i] names the image holding layers 0..i on top of the base: any change in the
    base, labels, timestamp or an earlier layer changes every later key."""
    keys, prev = [], _sha([RECIPE, head])
    for layer in plan.layers:
        prev = _sha([prev, layer.name, layer_key(files_dir, layer)])
        keys.append(prev)
    return keys


def epoch_seconds(created: str) -> int:
    return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())


def _image_id(text: str) -> str:
    """The ID buildah printed last (pull, from, commit print it on stdout)."""
    return _bare(text.strip().splitlines()[-1]) if text.strip() else ""


def _bare(image_id: str) -> str:
    return image_id.strip().removeprefix("sha256:")


@contextlib.contextmanager
def cert_dir(ca_file: str | None, directory: Path) -> Iterator[Path | None]:
    """containers/image reads CAs from a directory (``*.crt``), not a file."""
    if not ca_file:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="modelcar-certs-", dir=directory))
    try:
        shutil.copyfile(ca_file, tmp / "ca.crt")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tls_args(tls_verify: bool, certs: Path | None) -> list[str]:
    args = [f"--tls-verify={'true' if tls_verify else 'false'}"]
    if certs is not None:
        args.append(f"--cert-dir={certs}")
    return args


# -- the engine ----------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything one build needs, resolved once."""

    request: BuildRequest
    settings: BuildahSettings
    buildah: Buildah
    files_dir: Path
    context_dirs: tuple[Path, ...]
    state: State
    timestamp: int
    target_remote: Remote | None = None
    base_remote: Remote | None = None
    target_args: list[str] = field(default_factory=list)  # --authfile, TLS for the target
    base_args: list[str] = field(default_factory=list)  # the same for pulling the base
    client: RegistryClient | None = None
    base_creds: Credentials | None = None  # per-layer mode: our own client loads the base
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def plan(self) -> Plan:
        return self.request.plan


@dataclass(frozen=True)
class _Pushed:
    manifest_digest: str
    config_digest: str
    layers: list[dict[str, Any]]  # manifest descriptors, base layers first
    diff_ids: list[str]


class BuildahEngine:
    name = "buildah"

    def build(self, request: BuildRequest) -> BuildResult:
        started = time.monotonic()
        settings = BuildahSettings.from_env(os.environ)
        exe = find_buildah(os.environ)
        files_dir = _check_request(request)
        settings = replace(settings, mode=_effective_mode(request, settings.mode))
        workspace = request.workspace
        root = make_dir(workspace.storage_dir, DIR_MODE)
        sizes = [layer.size for layer in request.plan.layers]
        settings = replace(settings, storage_driver=choose_driver(settings, root, sizes))
        _check_space(request, settings, root / settings.storage_driver)
        context = prepare_context(request.plan, files_dir, workspace, request.base_image)
        target_creds, base_creds = _credentials(request)
        secrets = secret_forms(target_creds) + secret_forms(base_creds)
        buildah = Buildah(
            prefix=(
                exe,
                f"--root={root / settings.storage_driver}",
                f"--runroot={root / 'run' / settings.storage_driver}",
                f"--storage-driver={settings.storage_driver}",
            ),
            env=buildah_env(workspace.tmp_dir, root / "containers-state", settings),
            secrets=secrets,
        )
        run = _Run(
            request=request,
            settings=settings,
            buildah=buildah,
            files_dir=files_dir,
            context_dirs=context.layer_dirs,
            state=workspace.state(request.plan.snapshot),
            timestamp=epoch_seconds(request.created),
        )
        with _scrubbed(secrets), contextlib.ExitStack() as stack:
            certs = stack.enter_context(cert_dir(request.registry.ca_file, workspace.tmp_dir))
            tls = _tls_args(request.registry.tls_verify, certs)
            self._connect_target(run, target_creds, tls, stack)
            self._connect_base(run, base_creds, tls, stack)
            run.base_creds = base_creds
            builder = _PerLayerBuilder(run) if settings.mode == "per-layer" else _Builder(run)
            result = builder.build()
        result.timings["total"] = time.monotonic() - started
        return result

    @staticmethod
    def _connect_target(
        run: _Run, creds: Credentials | None, tls: list[str], stack: contextlib.ExitStack
    ) -> None:
        target = run.request.target
        if not isinstance(target, RegistryTarget):
            return
        host = target.ref.registry
        run.target_remote = Remote(host, creds.source if creds else None)
        tmp = run.request.workspace.tmp_dir
        authfile = stack.enter_context(private_authfile(host, creds, directory=tmp))
        run.target_args = [f"--authfile={authfile}", *tls]
        run.client = stack.enter_context(_client(run.request))
        run.client.ping()  # auth and TLS fail here, before any model byte is copied

    @staticmethod
    def _connect_base(
        run: _Run, creds: Credentials | None, tls: list[str], stack: contextlib.ExitStack
    ) -> None:
        base = run.request.base_image
        target = parse_target(base) if base != "scratch" else None
        if not isinstance(target, RegistryTarget):
            return  # scratch, or an oci: layout on disk
        host = target.ref.registry
        run.base_remote = Remote(host, creds.source if creds else None)
        tmp = run.request.workspace.tmp_dir
        authfile = stack.enter_context(private_authfile(host, creds, directory=tmp))
        run.base_args = [f"--authfile={authfile}", *tls]


class _Builder:
    """One build: base, cached chain, last layer to the target, read back."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.b = run.buildah
        self.request = run.request
        self.section = run.state.section("buildah")
        self.base_info: dict[str, Any] = {}  # `buildah inspect` of the base image
        self.base_diff_ids: list[str] = []
        self.parent_diff_ids: list[str] = []  # the image the last layer goes on

    def build(self) -> BuildResult:
        t0 = time.monotonic()
        base_id = self._pull_base()
        keys = chain_keys(self._head(base_id), self.run.files_dir, self.run.plan)
        self.run.timings["base"] = time.monotonic() - t0
        result_key = self._result_key(keys[-1])
        shortcut = self._already_pushed(result_key)
        if shortcut is not None:
            log.info("%s already holds this exact image; nothing to build", self.request.target)
            return shortcut
        # zstd needs `buildah push`, so then the last layer is stored like the others.
        zstd = self.request.compression == "zstd"
        stored = keys if zstd else keys[:-1]
        self._clean_storage(base_id, stored)
        t1 = time.monotonic()
        parent = self._commit_chain(base_id, stored)
        self.parent_diff_ids = _diff_ids(self._inspect_image(parent)) if parent != "scratch" else []
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
        image_id = _image_id(out)
        self.base_info = self._inspect_image(image_id)
        self.base_diff_ids = _diff_ids(self.base_info)
        return image_id

    def _head(self, base_id: str) -> list[Any]:
        """What besides the layers decides the chain's bytes (the tool version too: the
        last image carries it in an annotation, and the recipe may change with it)."""
        return [
            __version__,
            self.request.base_image,
            base_id,
            list(self.request.platform),
            sorted(image_labels(self.run.plan).items()),
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
        cache: dict[str, str] = self.section.setdefault("images", {})
        for key in [k for k in cache if k not in keys]:
            del cache[key]
        keep = {base_id, *cache.values()}
        stale = [img["id"] for img in self._images() if _bare(img["id"]) not in keep]
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
        present = {_bare(img["id"]) for img in self._images()}
        cache: dict[str, str] = self.section.setdefault("images", {})
        parent = base_id
        layers = self.run.plan.layers
        for index, (layer, key) in enumerate(zip(layers, keys, strict=False)):
            image_id = cache.get(key)
            if image_id in present:
                log.info("buildah: %s cached", layer.name)
            else:
                ctr = self._container(parent, index, layer)
                log.info("buildah: committing %s (%d file(s))", layer.name, len(layer.files))
                out = self.b.run([*self._commit_args(), ctr], step=f"commit {layer.name}")
                image_id = cache[key] = _image_id(out)
                self.b.run(["tag", image_id, f"{CACHE_REPO}:{image_id}"], step="tag")
                self.run.state.save()  # a crash later resumes after this layer
            parent = image_id
        return parent

    def _container(self, parent: str, index: int, layer: LayerPlan) -> str:
        """A working container from ``parent`` holding ``layer``'s files under /models."""
        ctr = _image_id(
            self.b.run(
                ["from", "--quiet", "--pull=never", self._isolation_arg(), parent],
                step="from",
            )
        )
        config = [f"--created-by=COPY {layer.name}/ /models/ # {len(layer.files)} file(s)"]
        if index == 0:
            # KServe passes args only; an Entrypoint or Cmd from the base would swallow them.
            config += ["--entrypoint", "[]", "--cmd", ""]
            config += [f"--label={k}={v}" for k, v in sorted(image_labels(self.run.plan).items())]
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

    def _commit_last(self, parent: str) -> _Pushed:
        """The last layer goes from its container straight to the target: it never
        lands in buildah's storage, and no separate push copies it again."""
        plan = self.run.plan
        last = plan.layers[-1]
        ctr = self._container(parent, len(plan.layers) - 1, last)
        log.info("buildah: committing %s and pushing to %s", last.name, self.request.target)
        args = self._commit_args()
        compressed = self.request.compression != "none"
        args.append(f"--disable-compression={'false' if compressed else 'true'}")
        if _via_layout(self.request):
            return self._commit_via_layout(ctr, args)
        self.b.run(
            [*args, *self.run.target_args, ctr, self._destination()],
            step=f"commit {last.name} to {self.request.target}",
            remote=self.run.target_remote,
        )
        return self._read_back(None)

    def _commit_via_layout(self, ctr: str, args: list[str]) -> _Pushed:
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
            client, target = self.run.client, self.request.target
            assert client is not None and isinstance(target, RegistryTarget)
            repo, tag = target.ref.repository, target.ref.tag or "latest"
            for desc in [*manifest["layers"], manifest["config"]]:
                digest, size = desc["digest"], int(desc["size"])
                if client.blob_size(repo, digest) == size:
                    continue
                path = layout.blob_path(digest)
                client.upload_blob(repo, digest, size, lambda path=path: _file_chunks(path))
            body = layout.blob_path(descriptor.digest).read_bytes()
            media_type = manifest.get("mediaType") or OCI_MANIFEST
            client.put_manifest(repo, tag, body, media_type)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self._read_back(descriptor.digest)

    def _push(self, image: str) -> _Pushed:
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

    def _destination(self) -> str:
        target = self.request.target
        if isinstance(target, LayoutTarget):
            target.path.parent.mkdir(parents=True, exist_ok=True)
            return f"oci:{target.path}:{target.tag}"
        ref = target.ref
        return f"docker://{ref.name}:{ref.tag or 'latest'}"

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

    def _read_back(self, digest: str | None) -> _Pushed:
        target = self.request.target
        if isinstance(target, LayoutTarget):
            layout = OciLayout(target.path)
            descriptor, manifest = layout.read_manifest(target.tag)
            config = json.loads(layout.read_blob(manifest["config"]["digest"]))
            pushed = _pushed(descriptor.digest, manifest, config)
        else:
            assert self.run.client is not None
            repo, tag = target.ref.repository, target.ref.tag or "latest"
            got = self.run.client.get_manifest(repo, digest or tag, accept=_MANIFEST_ACCEPT)
            manifest = json.loads(got.body)
            config = json.loads(self.run.client.read_blob(repo, manifest["config"]["digest"]))
            pushed = _pushed(got.digest, manifest, config)
        self._check_layers(pushed)
        return pushed

    def _check_layers(self, pushed: _Pushed) -> None:
        n_base, n_plan = len(self.base_diff_ids), len(self.run.plan.layers)
        if len(pushed.layers) != n_base + n_plan or len(pushed.diff_ids) != n_base + n_plan:
            raise BuildFailed(
                f"{self.request.target} has {len(pushed.layers)} layers, expected "
                f"{n_base + n_plan} ({n_base} base + {n_plan} planned)"
            )
        if pushed.diff_ids[: len(self.parent_diff_ids)] != self.parent_diff_ids:
            raise BuildFailed(
                f"{self.request.target} does not hold the image just built "
                "(was the tag pushed by someone else meanwhile?)"
            )

    # -- upload accounting --------------------------------------------------------------

    def _present_before(self, last_key: str) -> set[str]:
        """Compressed digests the target already holds, as far as we can name them before
        the push: blobs earlier runs pushed (state) and the base image's own blobs."""
        candidates = self._base_blobs()
        compression = self.request.compression
        last_diff = self.section.get("layers", {}).get(last_key)
        for diff_id in [*self.parent_diff_ids, last_diff]:
            record = self.section.get("blobs", {}).get(f"{compression}:{diff_id}")
            if record:
                candidates[record["digest"]] = record
        return {d for d, rec in candidates.items() if self._target_has(d, rec)}

    def _base_blobs(self) -> dict[str, dict[str, Any]]:
        """The base's layers as its registry stores them (buildah keeps that manifest);
        on the target's registry they get mounted from the base's repository."""
        manifest = json.loads(self.base_info.get("Manifest") or "{}")
        layers = manifest.get("layers") or []
        if len(layers) != len(self.base_diff_ids):
            return {}
        base = parse_target(self.request.base_image)
        repos = [base.ref.name] if isinstance(base, RegistryTarget) else []
        return {d["digest"]: {"digest": d["digest"], "repos": repos} for d in layers}

    def _target_has(self, digest: str, record: Mapping[str, Any]) -> bool:
        target = self.request.target
        if isinstance(target, LayoutTarget):
            return OciLayout(target.path).has_blob(digest)
        assert self.run.client is not None
        here = f"{target.ref.registry}/"
        # A blob in another repository of the same registry gets mounted, not uploaded.
        others = [r.removeprefix(here) for r in record.get("repos", []) if r.startswith(here)]
        for repo in dict.fromkeys([target.ref.repository, *others]):
            with contextlib.suppress(ModelcarError):
                if self.run.client.blob_size(repo, digest) is not None:
                    return True
        return False

    # -- results and state --------------------------------------------------------------

    def _result(self, pushed: _Pushed, present: set[str]) -> BuildResult:
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
            engine=BuildahEngine.name,
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
        return _sha(
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
        self, result: BuildResult, result_key: str | None, last_key: str, pushed: _Pushed
    ) -> None:
        blobs = self.section.setdefault("blobs", {})
        where = self._where()
        for desc, diff_id in zip(pushed.layers, pushed.diff_ids, strict=True):
            record = blobs.setdefault(f"{self.request.compression}:{diff_id}", {})
            repos = record.get("repos", []) if record.get("digest") == desc["digest"] else []
            if where and where not in repos:
                repos = [*repos, where][-8:]
            record.update(digest=desc["digest"], size=int(desc["size"]), repos=repos)
        self.section.setdefault("layers", {})[last_key] = pushed.diff_ids[-1]
        if result_key is not None:
            self.section.setdefault("results", {})[result_key] = {
                "manifest": result.manifest_digest,
                "config": result.config_digest,
                "base_layers": result.base_layers,
                "layers": [[x.digest, x.size, x.diff_id, x.media_type] for x in result.layers],
            }
        self.run.state.save()

    def _where(self) -> str | None:
        target = self.request.target
        return target.ref.name if isinstance(target, RegistryTarget) else None

    def _already_pushed(self, result_key: str | None) -> BuildResult | None:
        """The same image pushed by an earlier run: check it is whole, re-tag, done."""
        record = self.section.get("results", {}).get(result_key) if result_key else None
        client = self.run.client
        if record is None or client is None:
            return None
        ref = self.request.target.ref  # type: ignore[union-attr]
        repo, tag = ref.repository, ref.tag or "latest"
        digest = record["manifest"]
        if client.head_manifest(repo, digest, accept=_MANIFEST_ACCEPT) is None:
            return None
        blobs = [(record["config"], None)] + [(d, size) for d, size, *_ in record["layers"]]
        for blob, size in blobs:
            found = client.blob_size(repo, blob)
            if found is None or (size is not None and found != size):
                return None
        current = client.head_manifest(repo, tag, accept=_MANIFEST_ACCEPT)
        if current is None or current.digest != digest:
            manifest = client.get_manifest(repo, digest, accept=_MANIFEST_ACCEPT)
            client.put_manifest(repo, tag, manifest.body, manifest.media_type)
        plan = self.run.plan
        layers = tuple(
            LayerResult(d, size, diff_id, media, tuple(f.path for f in lp.files), False)
            for (d, size, diff_id, media), lp in zip(record["layers"], plan.layers, strict=True)
        )
        return BuildResult(
            engine=BuildahEngine.name,
            target=str(self.request.target),
            manifest_digest=digest,
            config_digest=record["config"],
            layers=layers,
            base_layers=record["base_layers"],
            bytes_uploaded=0,
            timings=self.run.timings,
        )


@dataclass(frozen=True)
class _Layer:
    """One planned layer as it sits in the target."""

    digest: str
    size: int
    diff_id: str
    uploaded: bool


class _Upload:
    """One layer blob on its way to the registry in a daemon thread, while the main
    thread builds the next layer; the builder keeps at most one. The thread deletes the
    layer's layout when the upload ends, either way; the builder records the layer (cache
    entry, repositories, bytes) only once :meth:`wait` returned, in the main thread. A
    daemon thread, not concurrent.futures: an interrupt leaves at once (no exit join)."""

    def __init__(
        self, index: int, key: str, layer: _Layer, work: Callable[[], bool], name: str
    ) -> None:
        self.index, self.key, self.layer = index, key, layer
        self.sent = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(work,), daemon=True, name=f"modelcar-upload-{name}"
        )
        self._thread.start()

    def _run(self, work: Callable[[], bool]) -> None:
        try:
            self.sent = work()
        except BaseException as exc:  # re-raised in the main thread by wait()
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> None:
        while self._thread.is_alive():
            self._thread.join(0.2)  # a join with a timeout keeps SIGTERM/SIGINT prompt
        if self.error is not None:
            raise self.error


class _PerLayerBuilder:
    """One build in the per-layer mode: each planned layer in its own container from
    scratch, committed alone to an OCI layout in TMPDIR, its blob sent to the target and
    the layout deleted once sent; config and manifest are ours. With overlap (registry
    targets, :data:`ENV_OVERLAP`) the blob of layer i is sent by an :class:`_Upload`
    while layer i+1 is built; otherwise before the next layer starts."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.b = run.buildah
        self.request = run.request
        section = run.state.section("buildah")
        self.cache: dict[str, dict[str, Any]] = section.setdefault("per_layer", {})
        self.repos: dict[str, list[str]] = section.setdefault("blob_repos", {})
        self.media_type = layer_media_type(self.request.compression)
        self.uploaded = 0  # layer bytes sent (base and model; not config or manifest)
        self._clean = False
        self._pending: _Upload | None = None  # the one upload in flight (overlap)
        self._out: list[_Layer | None] = []

    def build(self) -> BuildResult:
        t0 = time.monotonic()
        base = self._load_base()
        try:
            sink = self._sink()
            self._copy_base(base, sink)
            self.run.timings["base"] = time.monotonic() - t0
            t1 = time.monotonic()
            layers = self._layers(sink)
            self.run.timings["layers"] = time.monotonic() - t1
            t2 = time.monotonic()
            manifest_digest, config_digest = self._put_manifest(base, sink, layers)
            self.run.timings["push"] = time.monotonic() - t2
        finally:
            base.close()
            self.run.state.save()
        return BuildResult(
            engine=BuildahEngine.name,
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
        """The base from a registry (with the credentials the chain would give buildah),
        an OCI layout or scratch; its blobs are copied or mounted as the native engine does."""
        name = self.request.base_image
        target = parse_target(name) if name != "scratch" else None
        if not isinstance(target, RegistryTarget):
            return load_base(name, self.request.platform, self.request.registry)
        ref, opts = target.ref, self.request.registry
        client = RegistryClient(
            ref.api_host, self.run.base_creds, tls_verify=opts.tls_verify, ca_file=opts.ca_file
        )
        try:
            got = client.get_manifest(ref.repository, ref.reference)
            if got.media_type in INDEX_MEDIA_TYPES:
                chosen = select_platform(json.loads(got.body), self.request.platform)
                got = client.get_manifest(ref.repository, chosen.digest)
            parsed = json.loads(got.body)
            config = client.read_blob(ref.repository, parsed["config"]["digest"])
        except RegistryAuthError:
            client.close()
            creds = self.run.base_creds
            what = (
                f"refused the credentials from {creds.source}"
                if creds
                else "requires credentials, and none were found for it"
            )
            raise RegistryAuthError(f"registry {ref.registry} {what} (base image {name})") from None
        except BaseException:
            client.close()
            raise
        return BaseSource(
            base_image(name, got.digest, parsed, config),
            lambda d: client.get_blob(ref.repository, d),
            host=ref.api_host,
            repo=ref.repository,
            client=client,
        )

    def _sink(self) -> LayoutSink | RegistrySink:
        target = self.request.target
        if isinstance(target, LayoutTarget):
            target.path.parent.mkdir(parents=True, exist_ok=True)
            return LayoutSink(OciLayout(target.path))
        assert self.run.client is not None
        return RegistrySink(self.run.client, target.ref.repository)

    def _copy_base(self, base: BaseSource, sink: LayoutSink | RegistrySink) -> None:
        if base.image is None:
            return
        # Only the layers: our manifest names our own config, never the base's.
        for desc in base.image.layers:
            if self._have(sink, desc.digest, desc.size):
                continue
            if base.host and sink.mount(desc.digest, base.host, base.repo or ""):
                self._note(desc.digest)
                continue
            sink.put_blob(desc.digest, desc.size, lambda d=desc.digest: base.open_blob(d))
            self._note(desc.digest)
            self.uploaded += desc.size

    # -- blobs in the target --------------------------------------------------------------

    def _have(
        self, sink: LayoutSink | RegistrySink, digest: str, size: int, note: bool = True
    ) -> bool:
        """The target has the blob, or gets it by a mount from another repository of the
        same registry that an earlier run pushed it to (workspace state). ``note=False``
        leaves the noting to the caller (the upload thread writes no builder state)."""
        if sink.has_blob(digest, size):
            if note:
                self._note(digest)
            return True
        if isinstance(sink, RegistrySink):
            here = f"{self.request.target.ref.registry}/"  # type: ignore[union-attr]
            for name in self.repos.get(digest, []):
                if name.startswith(here) and name != f"{here}{sink.repo}":
                    with contextlib.suppress(ModelcarError):
                        if sink.client.mount_blob(sink.repo, digest, name.removeprefix(here)):
                            if note:
                                self._note(digest)
                            return True
        return False

    def _note(self, digest: str) -> None:
        """Remember which repositories hold a blob, for mounts by later runs."""
        target = self.request.target
        if isinstance(target, RegistryTarget):
            repos = [r for r in self.repos.get(digest, []) if r != target.ref.name]
            self.repos[digest] = [*repos, target.ref.name][-8:]

    # -- model layers -----------------------------------------------------------------------

    def _key(self, layer: LayerPlan) -> str:
        """Identity of a layer blob: content (as the chain's keys name it), compression,
        timestamp and the recipe; not the layer's position or neighbours."""
        return _sha(
            [
                RECIPE_PER_LAYER,
                self.request.compression,
                self.run.timestamp,
                layer_key(self.run.files_dir, layer),
            ]
        )

    def _layers(self, sink: LayoutSink | RegistrySink) -> list[_Layer]:
        overlap = isinstance(sink, RegistrySink) and _overlaps(self.request, self.run.settings)
        self._out = [None] * len(self.run.plan.layers)
        try:
            for index, layer in enumerate(self.run.plan.layers):
                self._out[index] = self._layer(index, layer, sink, overlap)
            self._settle()
        except Exception:
            # A build failed beside an upload: let that upload end (its thread deletes its
            # layout; a successful one is recorded for the rerun), then report the failure.
            with contextlib.suppress(Exception):
                self._settle()
            raise
        assert all(x is not None for x in self._out)
        return self._out  # type: ignore[return-value]

    def _layer(
        self, index: int, layer: LayerPlan, sink: LayoutSink | RegistrySink, overlap: bool
    ) -> _Layer | None:
        """The layer as it sits in the target, or None while its upload is in flight."""
        key = self._key(layer)
        cached = self.cache.get(key)
        if cached:
            self._settle()  # the client has one user at a time
            if self._have(sink, cached["digest"], cached["size"]):
                log.info("buildah: %s cached (%s)", layer.name, cached["digest"][:19])
                return _Layer(cached["digest"], cached["size"], cached["diff_id"], uploaded=False)
        elif self._pending is not None and self._pending.done:
            self._settle()  # a failed upload stops the builds here
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

                built = _Layer(digest, size, diff_id, uploaded=True)
                self._pending = _Upload(index, key, built, work, layer.name)
                handed = True
                return None
            sent = self._send(sink, layer, layout, digest, size)
        finally:
            if not handed:
                shutil.rmtree(tmp, ignore_errors=True)
        return self._record(key, _Layer(digest, size, diff_id, sent))

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
        log.info("buildah: sending %s (%d bytes)", layer.name, size)
        if isinstance(sink, LayoutSink):
            sink.layout.copy_blob_from(layout, digest)  # a hard link where it can
        else:
            path = layout.blob_path(digest)
            progress = Progress(f"push {layer.name}", size)
            try:
                sink.put_blob(digest, size, lambda: _file_chunks(path, progress))
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

    def _record(self, key: str, built: _Layer) -> _Layer:
        """A layer the target now has: its cache entry is written only now."""
        self._note(built.digest)
        if built.uploaded:
            self.uploaded += built.size
        self.cache[key] = {"digest": built.digest, "size": built.size, "diff_id": built.diff_id}
        self.run.state.save()  # a rerun after a crash skips this layer
        return built

    def _commit(self, index: int, layer: LayerPlan, tmp: Path) -> OciLayout:
        """``from scratch``, ``copy``, ``commit --rm`` to ``oci:TMP``: one layer alone."""
        isolation = f"--isolation={self.run.settings.isolation}"
        out = self.b.run(["from", "--quiet", "--pull=never", isolation, "scratch"], step="from")
        ctr = _image_id(out)
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
            raise BuildFailed(f"buildah committed {len(descs)} layers for {layer.name}, not 1")
        desc = descs[0]
        if desc["mediaType"] != self.media_type:
            raise BuildFailed(f"buildah wrote {layer.name} as {desc['mediaType']}")
        return desc["digest"], int(desc["size"]), diff_ids[0]

    def _clean_storage(self) -> None:
        """Before the first commit: no container or image may be left in our storage
        (a crashed run's, or the chain mode's cache), so the peak stays one layer's."""
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
        self, base: BaseSource, sink: LayoutSink | RegistrySink, layers: Sequence[_Layer]
    ) -> tuple[str, str]:
        """Config and manifest exactly as the native engine writes them."""
        request = self.request
        built = [BuiltLayer(x.digest, x.size, x.diff_id) for x in layers]
        docs = assemble_image(request, base, built, self.media_type)
        config_digest, body, digest = docs.config_digest, docs.manifest, docs.manifest_digest
        if not sink.has_blob(config_digest, len(docs.config)):
            sink.put_blob(config_digest, len(docs.config), lambda: [docs.config])
        target = request.target
        if isinstance(sink, RegistrySink):
            tag = target.ref.tag or "latest"  # type: ignore[union-attr]
            current = sink.client.head_manifest(sink.repo, tag, accept=_MANIFEST_ACCEPT)
            if current is not None and current.digest == digest:
                return digest, config_digest
        else:
            tag = target.tag  # type: ignore[union-attr]
        put = sink.put_manifest(body, MEDIA_TYPE_MANIFEST, tag)
        if put != digest:
            raise BuildFailed(f"{target} stored the manifest as {put}, expected {digest}")
        return digest, config_digest


# -- module helpers ------------------------------------------------------------------------


def _diff_ids(inspect: Mapping[str, Any]) -> list[str]:
    return list(((inspect.get("OCIv1") or {}).get("rootfs") or {}).get("diff_ids") or [])


def _pushed(digest: str, manifest: dict[str, Any], config: dict[str, Any]) -> _Pushed:
    return _Pushed(
        manifest_digest=digest,
        config_digest=manifest["config"]["digest"],
        layers=list(manifest.get("layers") or []),
        diff_ids=list((config.get("rootfs") or {}).get("diff_ids") or []),
    )


def _file_chunks(
    path: Path, progress: Progress | None = None, chunk: int = 1 << 20
) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(chunk):
            if progress is not None:
                progress.advance(len(data))
            yield data


def _check_request(request: BuildRequest) -> Path:
    if request.files_dir is None:
        raise UsageError(
            "the buildah engine needs the model files on disk",
            hint="drop --stream, or use --engine native --stream",
        )
    if request.compression not in ("gzip", "zstd", "none"):
        raise UsageError(f"unknown compression {request.compression!r}", hint="use gzip")
    if request.compression == "zstd":
        log.warning(
            "zstd layers: KServe's oci:// fetch rejects tar+zstd, and buildah may reuse gzip "
            "blobs the registry already has; use gzip for KServe"
        )
    return request.files_dir


def _via_layout(request: BuildRequest) -> bool:
    """Uncompressed layers for a registry: buildah compresses whatever it sends to
    ``docker://``, so the image goes to an OCI layout first and we upload it."""
    return request.compression == "none" and isinstance(request.target, RegistryTarget)


def _check_space(request: BuildRequest, settings: BuildahSettings, storage: Path) -> None:
    sizes = [layer.size for layer in request.plan.layers]
    if settings.mode == "per-layer":
        estimate = estimate_per_layer_peak(sizes, overlap=_overlaps(request, settings))
    elif _via_layout(request):
        estimate = estimate_layout_peak(sizes, settings.storage_driver)
    else:
        estimate = estimate_peak_bytes(sizes, settings.storage_driver)
    needed = estimate - _disk_usage(storage)
    if needed > 0:
        request.workspace.require_space(
            needed,
            f"buildah ({settings.mode}, {settings.storage_driver} storage, {len(sizes)} layers)",
        )


def _overlaps(request: BuildRequest, settings: BuildahSettings) -> bool:
    """Per-layer uploads run beside the next build only for a registry target."""
    return settings.overlap and isinstance(request.target, RegistryTarget)


def _effective_mode(request: BuildRequest, mode: str) -> str:
    """zstd needs ``buildah push`` (only it chooses the format): always the chain."""
    if mode == "per-layer" and request.compression == "zstd":
        log.info("buildah: zstd layers need buildah push; using the chain mode")
        return "chain"
    return mode


def _disk_usage(path: Path) -> int:
    """Bytes our storage already holds: reused by this build or freed before it."""
    total, seen = 0, set()
    if not path.exists():
        return 0
    dev = path.stat().st_dev
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(root, d))]
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                if st.st_dev == dev and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def _credentials(request: BuildRequest) -> tuple[Credentials | None, Credentials | None]:
    """Target credentials as the native engine resolves them; the base shares them when
    it lives on the same registry, else gets its own lookup (authfile, config files)."""
    opts = request.registry
    target_creds = None
    target_host = None
    if isinstance(request.target, RegistryTarget):
        ref = request.target.ref
        target_host = ref.registry
        target_creds = resolve_credentials(
            ref.api_host,
            repository=ref.repository,
            authfile=opts.authfile,
            token_file=opts.token_file,
        )
    base = parse_target(request.base_image) if request.base_image != "scratch" else None
    if not isinstance(base, RegistryTarget):
        return target_creds, None
    if base.ref.registry == target_host:
        return target_creds, target_creds
    base_creds = resolve_credentials(
        base.ref.api_host, repository=base.ref.repository, authfile=opts.authfile
    )
    return target_creds, base_creds


@contextlib.contextmanager
def _client(request: BuildRequest) -> Iterator[RegistryClient]:
    """Our own client for the target (read-back, HEADs, uncompressed uploads); it
    resolves credentials exactly as :func:`_credentials` does for buildah."""
    client = request.registry.client_for(request.target.ref)  # type: ignore[union-attr]
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def _scrubbed(secrets: Sequence[str]) -> Iterator[None]:
    """Last line of defence: no exception leaving the engine carries a secret."""
    try:
        yield
    except ModelcarError as exc:
        exc.message = scrub(exc.message, secrets)
        exc.hint = scrub(exc.hint or "", secrets)
        exc.args = (exc.message,)
        raise
