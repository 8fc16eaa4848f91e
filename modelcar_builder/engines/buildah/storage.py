"""Where buildah keeps its layers: which storage driver works here (a real overlay mount
probe, not a guess from capabilities), and how much disk a build needs at its peak."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from modelcar_builder.engines import BuildRequest
from modelcar_builder.engines.buildah.choices import BuildahSettings, overlaps
from modelcar_builder.engines.buildah.failures import MOUNT_HINT
from modelcar_builder.errors import EnginePrivilegeError, ModelcarError, StorageDriverUnsupported
from modelcar_builder.plan import Plan
from modelcar_builder.workspace import DIR_MODE, Workspace, make_dir

log = logging.getLogger("modelcar.engines.buildah.storage")

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


def try_overlay_mount(storage_root: Path) -> str | None:
    """Mount and unmount a tiny overlay with its upper dir in ``storage_root`` (where
    buildah's overlay storage would live): None when that works, else the kernel's reason.
    A real attempt, because capabilities alone say nothing about the filesystem (overlay
    cannot have its upper dir on overlay, NFS and some FUSE filesystems)."""
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


def overlay_unusable(storage_root: Path) -> str | None:
    """``auto``: None when overlay works here, else why not (then vfs is used). Without
    root or CAP_SYS_ADMIN the mount is not even tried: auto never asks for privilege."""
    if os.geteuid() != 0:
        return "not root"
    if not has_cap_sys_admin():
        return "no CAP_SYS_ADMIN (not a privileged pod)"
    return try_overlay_mount(storage_root)


def buildah_mounts_here(settings: BuildahSettings, root: bool, sys_admin: bool) -> bool:
    """Whether buildah mounts its storage in our own namespaces, where our probe mount
    predicts its outcome. Root with CAP_SYS_ADMIN never re-execs; root without it re-execs
    into a user namespace of its own unless our private-state markers stop that
    (:func:`buildah_env`); non-root buildah is rootless and always re-execs."""
    return root and (sys_admin or settings.private_state)


def overlay_verdict(mount_error: str | None, sys_admin: bool) -> ModelcarError | None:
    """The error for a forced overlay driver, from the probe's facts, never from buildah's
    text (containers/storage reports a missing CAP_SYS_ADMIN as "backing file system is
    unsupported"). None when the probe mount worked."""
    if mount_error is None:
        return None
    if not sys_admin:
        return EnginePrivilegeError(
            f"the overlay storage driver cannot mount without CAP_SYS_ADMIN ({mount_error})",
            hint=MOUNT_HINT,
        )
    return StorageDriverUnsupported(
        f"the overlay storage driver does not work here, even with CAP_SYS_ADMIN ({mount_error})"
    )


def check_forced_driver(settings: BuildahSettings, storage_root: Path) -> None:
    """Before buildah runs (and before any download, via :meth:`BuildahEngine.preflight`):
    raise the right error when the environment forces overlay and it cannot mount."""
    if settings.storage_driver != "overlay":
        return  # vfs needs no privilege and works on any filesystem
    root, sys_admin = os.geteuid() == 0, has_cap_sys_admin()
    if not buildah_mounts_here(settings, root, sys_admin):
        log.debug("buildah: overlay mounts in buildah's own user namespace; not probed")
        return
    error = overlay_verdict(try_overlay_mount(storage_root), sys_admin)
    if error is not None:
        raise error


def choose_driver(settings: BuildahSettings, storage_root: Path) -> str:
    """The driver this build uses: the one the environment names, else overlay when it
    mounts here, else vfs (with one line saying why)."""
    if settings.storage_driver != "auto":
        check_forced_driver(settings, storage_root)
        return settings.storage_driver
    why = overlay_unusable(storage_root)
    if why is None:
        log.debug("buildah: overlay storage (mount probe in %s succeeded)", storage_root)
        return "overlay"
    # One container per layer, from scratch: vfs costs no more disk than overlay.
    log.info("buildah: vfs storage, because %s", why)
    return "vfs"


def estimate_per_layer_peak(layer_sizes: Sequence[int], overlap: bool = False) -> int:
    """Extra disk of a buildah build at its peak, beyond the model files: while the
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


def check_space(
    request: BuildRequest, settings: BuildahSettings, storage: Path, pending: int = 0
) -> None:
    """Free space for buildah's peak (less what its storage already holds), plus
    ``pending``: what a download still running beside the build has yet to write."""
    sizes = [layer.size for layer in request.plan.layers]
    estimate = estimate_per_layer_peak(sizes, overlap=overlaps(request, settings))
    needed = max(0, estimate - disk_usage(storage)) + pending
    if needed > 0:
        request.workspace.require_space(
            needed,
            f"buildah ({settings.storage_driver} storage, {len(sizes)} layers)",
        )


def pending_download(plan: Plan, workspace: Workspace) -> int:
    """Bytes the download has yet to write for files not in place: their sizes less the
    blocks their partial files hold already (nothing for a local source)."""
    if plan.snapshot.kind != "hub":
        return 0
    files_dir = workspace.files_dir(plan.snapshot)
    partial_dir = workspace.partial_dir(plan.snapshot)
    pending = 0
    for entry in plan.snapshot.files:
        if (files_dir / entry.path).exists():
            continue
        try:
            have = (partial_dir / f"{entry.path}.part").stat().st_blocks * 512
        except OSError:
            have = 0
        pending += max(0, entry.size - have)
    return pending


def disk_usage(path: Path) -> int:
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
