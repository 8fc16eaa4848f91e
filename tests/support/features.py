"""Probes for the kernel and machine features some tests need, tried for real once per run.

Each probe returns None when the feature works here, else why not; :func:`need` skips the
calling test with that reason (``pytest -ra`` prints it). A probe is an attempt (mount a
tmpfs and unmount it, drop a capability and read /proc/self/status back), never a guess
from the kernel version or the UID, so nothing that works here is skipped.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

OTHER_UID = 1000680000  # OpenShift's arbitrary UIDs look like this
_CAP_SYS_ADMIN = 21
_CAP_SETFCAP = 31

Probe = Callable[[], "str | None"]


def need(*probes: Probe) -> None:
    """Skip the calling test unless every probe finds its feature. The reason names the
    test: ``-ra`` reports a skip at this line, not at the test."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    for probe in probes:
        why = probe()
        if why is not None:
            pytest.skip(f"{test}: needs {probe.__name__.replace('_', ' ')}: {why}")


def _run(argv: Sequence[str]) -> str | None:
    """None when the command exits 0, else its error in one line."""
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} is not installed"
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip() or f"exit {proc.returncode}").splitlines()[0]


@contextmanager
def _scratch() -> Iterator[Path]:
    """A temp dir on the same filesystem as pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="modelcar-feature-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@functools.cache
def root() -> str | None:
    """Several tests are about what root (with or without capabilities) can do."""
    return None if os.geteuid() == 0 else f"runs as uid {os.geteuid()}, not root"


@functools.cache
def setpriv_drops_caps() -> str | None:
    """``setpriv`` can start a child without CAP_SYS_ADMIN and CAP_SETFCAP (a pod
    without pipelines-scc), checked in the child's own CapEff."""
    drop = "-sys_admin,-setfcap"
    argv = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--", "cat",
            "/proc/self/status"]  # fmt: skip
    if shutil.which("setpriv") is None:
        return "setpriv is not installed"
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return proc.stderr.strip() or f"setpriv exited {proc.returncode}"
    eff = next(int(x.split()[1], 16) for x in proc.stdout.splitlines() if x.startswith("CapEff:"))
    if eff >> _CAP_SYS_ADMIN & 1 or eff >> _CAP_SETFCAP & 1:
        return f"the child still has CAP_SYS_ADMIN or CAP_SETFCAP (CapEff {eff:x})"
    return None


@functools.cache
def run_as_other_uid() -> str | None:
    """We can give a file to another UID and run a command as an arbitrary UID, GID 0,
    with no capabilities (what OpenShift's restricted SCC does to a pod)."""
    with _scratch() as scratch:
        try:
            os.chown(scratch, 4242, 0)
        except OSError as exc:
            return f"chown to another uid: {exc.strerror}"
    return _run(["setpriv", f"--reuid={OTHER_UID}", "--regid=0", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--", "true"])  # fmt: skip


def _mount_tmpfs(options: str) -> str | None:
    with _scratch() as scratch:
        why = _run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(scratch)])
        if why is None:
            why = _run(["umount", str(scratch)])
        return why


@functools.cache
def tmpfs_mount() -> str | None:
    """A small tmpfs can be mounted (and unmounted) in a temp dir."""
    return _mount_tmpfs("size=1m")


@functools.cache
def noexec_tmpfs_mount() -> str | None:
    """The same, with ``noexec``: the workspace-on-a-noexec-volume case."""
    return _mount_tmpfs("noexec,size=1m")


@functools.cache
def private_read_only_root() -> str | None:
    """In a new mount namespace, / can be made private and read-only with one directory
    bind-mounted writable (the read-only-root-fs pod)."""
    with _scratch() as scratch:
        script = (
            f"mount --make-rprivate / && mount --bind {scratch} {scratch} && "
            "mount -o remount,bind,ro /"
        )
        return _run(["unshare", "--mount", "sh", "-c", script])


def _overlay(top: Path) -> str | None:
    """Mount an overlay at ``top/merged``; None when that worked."""
    for sub in ("lower", "upper", "work", "merged"):
        (top / sub).mkdir(parents=True)
    opts = f"lowerdir={top / 'lower'},upperdir={top / 'upper'},workdir={top / 'work'}"
    return _run(["mount", "-t", "overlay", "overlay", "-o", opts, str(top / "merged")])


@functools.cache
def overlay_mount() -> str | None:
    """An overlay with its upper dir on the tests' temp filesystem mounts."""
    with _scratch() as scratch:
        why = _overlay(scratch)
        return why if why is not None else _run(["umount", str(scratch / "merged")])


@functools.cache
def overlay_refuses_upper_on_overlay() -> str | None:
    """An overlay mounts, but a second one with its upper dir inside the first is refused:
    a real "we have CAP_SYS_ADMIN, yet this filesystem cannot hold overlay storage"."""
    why = overlay_mount()
    if why is not None:
        return why
    with _scratch() as scratch, mounted_overlay(scratch) as merged:
        if _overlay(merged / "inner") is None:
            _run(["umount", str(merged / "inner" / "merged")])
            return "this kernel accepts an overlay upper dir on overlay"
    return None


@contextmanager
def mounted_overlay(top: Path) -> Iterator[Path]:
    """An overlay mounted at ``top/merged`` for the block; yields the merged dir."""
    why = _overlay(top)
    if why is not None:
        raise RuntimeError(f"overlay mount failed: {why}")
    try:
        yield top / "merged"
    finally:
        subprocess.run(["umount", "-l", str(top / "merged")], check=False)


@functools.cache
def buildah_builds() -> str | None:
    """buildah is installed and the engine's own probe (``from scratch``, ``copy``, ``rm``
    in a throwaway store) passes with this UID and these capabilities."""
    if shutil.which("buildah") is None:
        return "buildah is not installed"
    from modelcar_builder.engines.buildah.probe import probe
    from modelcar_builder.workspace import Workspace

    with _scratch() as top:
        problem = probe(Workspace(top / "ws"))
    return None if problem is None else problem.message


if __name__ == "__main__":  # python3 -m tests.support.features: what this machine offers
    ALL = (root, setpriv_drops_caps, run_as_other_uid, tmpfs_mount, noexec_tmpfs_mount,
           private_read_only_root, overlay_mount, overlay_refuses_upper_on_overlay,
           buildah_builds)  # fmt: skip
    for probe in ALL:
        print(f"{probe.__name__:34} {probe() or 'yes'}")
