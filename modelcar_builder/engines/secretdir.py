"""Where buildah's authfiles live: in memory, never on the workspace volume.

An authfile holds ``base64(user:password)``. The run deletes it when it ends, but a
run killed with SIGKILL (an OOMKill, a node drain) deletes nothing, so it must sit
where it dies with the pod anyway: a memory-backed filesystem (tmpfs, ramfs), found
by the mount table, not by name: ``$XDG_RUNTIME_DIR`` when it is one, ``/dev/shm``
(every pod has its own, gone with the pod), ``/run/user/UID``, the temp dir. Without
any, a private 0700 dir in the temp dir, never inside the workspace (said at debug
level). What a killed run left on such a place while the pod lives is removed by
the next build in that pod (:func:`sweep_stale`): each dir holds a lock for its run's
lifetime, and the kernel drops it when the run dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from modelcar_builder.errors import BuildFailed
from modelcar_builder.settings import environment

log = logging.getLogger("modelcar.engines.secretdir")

PREFIX = "modelcar-secrets-"
_FRESH = ".modelcar-secrets-new-"  # before its lock is taken: no sweep looks at it
_LOCK = ".lock"
MEMORY_FS = frozenset({"tmpfs", "ramfs"})
_UNLOCKED_GRACE = 60.0  # seconds a dir may exist before its lock does (mkdtemp → flock)


def mount_fstype(path: Path, mounts: str | None = None) -> str | None:
    """The filesystem type of the mount holding ``path`` (the longest mount point that
    contains it, from /proc/self/mounts), or None when unknown."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    real = os.path.realpath(path)
    best, fstype = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # later entries stack on earlier ones
            best, fstype = point, fields[2]
    return fstype


def _unescape(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def memory_backed(path: Path, mounts: str | None = None) -> bool:
    return mount_fstype(path, mounts) in MEMORY_FS


def candidates(env: Mapping[str, str]) -> list[Path]:
    """Places an authfile may go, best first (memory-backed ones are picked before any
    other by :func:`choose_parent`)."""
    places = []
    if env.get("XDG_RUNTIME_DIR"):
        places.append(Path(env["XDG_RUNTIME_DIR"]))
    places += [Path("/dev/shm"), Path(f"/run/user/{os.geteuid()}")]
    places += [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
    return list(dict.fromkeys(places))


def _usable(place: Path, workspace: Path) -> bool:
    """An existing directory we may create in, that is not the workspace or inside it."""
    if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
        return False
    real, ws = Path(os.path.realpath(place)), Path(os.path.realpath(workspace))
    return real != ws and ws not in real.parents


def choose_parent(
    workspace: Path, env: Mapping[str, str] | None = None, mounts: str | None = None
) -> Path:
    """The memory-backed place for this run's authfiles; else a place outside the
    workspace, preferably on another filesystem than it (said at debug level)."""
    places = [p for p in candidates(environment() if env is None else env) if _usable(p, workspace)]
    for place in places:
        if memory_backed(place, mounts):
            log.debug("buildah: registry authfiles in %s (memory-backed)", place)
            return place
    try:
        ws_dev = os.stat(workspace).st_dev
    except OSError:
        ws_dev = None
    other_fs = [p for p in places if os.stat(p).st_dev != ws_dev]
    for place in other_fs or places:
        log.debug(
            "buildah: no memory-backed filesystem (tmpfs) writable here; registry authfiles "
            "go to a private 0700 dir in %s (%s the workspace's filesystem), removed when "
            "the run ends, or by the next run after a kill",
            place,
            "not" if place in other_fs else "on",
        )
        return place
    raise BuildFailed(
        "no place outside the workspace to hold buildah's registry credentials "
        f"(tried {', '.join(str(p) for p in candidates(environment() if env is None else env))})",
        hint="mount an emptyDir with medium: Memory, or make /tmp or /dev/shm writable",
    )


@contextlib.contextmanager
def secret_dir(workspace: Path, env: Mapping[str, str] | None = None) -> Iterator[Path]:
    """A fresh 0700 dir for this run's authfiles (see :func:`choose_parent`), locked for
    as long as the run lives and removed when it ends. It gets its public name only once
    locked, so a sweep by another run never takes it for a dead one's."""
    parent = choose_parent(workspace, env)
    fresh = Path(tempfile.mkdtemp(prefix=_FRESH, dir=parent))  # mkdtemp: 0700
    path, fd = fresh, -1
    try:
        fd = os.open(fresh / _LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a new file nobody else sees: never blocks
        path = parent / (PREFIX + fresh.name.removeprefix(_FRESH))
        os.rename(fresh, path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd >= 0:
            os.close(fd)  # the kernel would drop the lock anyway when we die


def sweep_stale(env: Mapping[str, str] | None = None) -> list[Path]:
    """Remove the secret dirs of runs that died without cleaning up (SIGKILL) from every
    place :func:`choose_parent` may use: ours (same UID), and not locked by a live run.
    Returns what was removed (logged at info)."""
    removed = []
    for place in candidates(environment() if env is None else env):
        with contextlib.suppress(OSError):
            for path in sorted([*place.glob(f"{PREFIX}*"), *place.glob(f"{_FRESH}*")]):
                if _stale(path):
                    shutil.rmtree(path, ignore_errors=True)
                    if not path.exists():
                        removed.append(path)
                        log.info("removed %s: registry credentials of a killed run", path)
    return removed


def _stale(path: Path) -> bool:
    try:
        st = os.lstat(path)
        if st.st_uid != os.geteuid() or not path.is_dir() or path.is_symlink():
            return False
        fd = os.open(path / _LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        # Killed between mkdtemp and the lock (no secret in it yet), or just starting.
        return _older_than(path, _UNLOCKED_GRACE)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live run holds it
    finally:
        os.close(fd)
    # A fresh dir unlocked: killed before its lock (nothing in it), or just starting.
    return not path.name.startswith(_FRESH) or _older_than(path, _UNLOCKED_GRACE)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime > seconds
    except OSError:
        return False
