"""The mounted volume: layout, explicit modes, free-space and permission checks, state.

Layout under the workspace root (every directory created here with an explicit mode,
never from the umask or the volume's owner — the seed's "Permission denied" on a PVC):

    files/<slug>/<path>        fetched, verified model files (0644)
    partial/<slug>/<path>.part downloads in progress, resumed with HTTP Range
    context/<slug>/            build context: layer-NNN/<path> hard links + Containerfile
    state/<slug>.json          what is verified, layer digests, pushes
    tmp/                       TMPDIR for engines (buildah's big temp copies); holds
                               nothing across runs: emptied when a run takes the lock
    storage/                   buildah --root / --runroot

Internal directories are 0775 so another UID of the same group (OpenShift runs steps
as an arbitrary UID with GID 0 on an fsGroup volume) can resume a run; directories that
become image content are 0755 and files 0644, as KServe's contract asks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelcar_builder.errors import InsufficientSpace, WorkspaceError
from modelcar_builder.snapshot import Snapshot
from modelcar_builder.state import BuildState
from modelcar_builder.units import human

log = logging.getLogger("modelcar.workspace")

DIR_MODE = 0o775
CONTENT_DIR_MODE = 0o755
FILE_MODE = 0o644
SHARED_FILE_MODE = 0o664  # internal files: lock, .part, state records
_SUBDIRS = ("files", "partial", "context", "state", "tmp")


def snapshot_slug(snapshot: Snapshot) -> str:
    if snapshot.kind == "hub":
        return f"{snapshot.location.replace('/', '--')}--{snapshot.commit}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", snapshot.location.strip("/")) or "root"
    return f"local--{name}"


def make_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """mkdir -p with an explicit mode on each directory we create.

    Internal directories keep the setgid bit the volume gives them (an fsGroup volume's
    new files then belong to its group, so any UID of the group can resume); image
    content directories never carry it (it would land in the image)."""
    missing = []
    p = path
    while not os.path.exists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        inherited = os.stat(d).st_mode & stat.S_ISGID if mode == DIR_MODE else 0
        os.chmod(d, mode | inherited)
    return path


def take_over(path: Path) -> None:
    """Make an internal file ours and group-writable whatever the umask, so this run can
    finish what another UID of the group started (resume its .part, then chmod and
    rename it). A file we may not chmod is replaced by our own copy, once: the
    directory is group-writable."""
    try:
        os.chmod(path, SHARED_FILE_MODE)
    except PermissionError:
        mine = path.with_name(f".{path.name}.{os.getpid()}.copy")
        shutil.copyfile(path, mine)
        os.chmod(mine, SHARED_FILE_MODE)
        os.replace(mine, path)


@dataclass(frozen=True)
class Workspace:
    root: Path

    def ensure(self) -> Workspace:
        """Create the layout and prove we can write, before any byte is downloaded."""
        try:
            make_dir(self.root)
            for sub in _SUBDIRS:
                make_dir(self.root / sub)
            self._probe_write()
        except PermissionError as exc:
            raise self._permission_error(exc.filename or str(self.root)) from None
        except OSError as exc:
            raise WorkspaceError(
                f"cannot use workspace {self.root}: {exc.strerror} ({exc.filename or self.root})"
            ) from None
        return self

    def lock(self) -> Callable[[], None]:
        """Hold the workspace for this run; returns the function that lets go.

        Two runs writing one volume (a retried Tekton task while the first is still
        alive) would clobber each other's files. The kernel drops the lock when the
        process dies, so a killed run never blocks its rerun."""
        path = self.root / "state" / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, SHARED_FILE_MODE)
        except PermissionError:
            # Made by another UID under a umask that left it 0644 (an older version):
            # flock works on a read-only descriptor too.
            fd = os.open(path, os.O_RDONLY)
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, SHARED_FILE_MODE)  # the umask took the group's write bit
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkspaceError(
                f"workspace {self.root} is in use by another modelcar run (pid {holder})",
                hint="wait for it to finish, or give this run its own --workspace",
            ) from None
        with contextlib.suppress(OSError):  # read-only descriptor: the pid stays unknown
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        try:
            self.sweep_tmp()
        except BaseException:
            os.close(fd)
            raise
        return lambda: os.close(fd)  # closing the descriptor releases the lock

    def sweep_tmp(self) -> list[str]:
        """Empty ``tmp/`` of what earlier runs left there; call it holding the lock.

        Everything in ``tmp/`` belongs to one run (our OCI layouts, cert dirs, buildah's
        own TMPDIR files), and a run killed with SIGKILL (OOMKill, node drain) cleans
        nothing up: a layout the size of a layer, or an authfile of an older version,
        would stay on the volume for good. Returns the names removed (logged at info);
        what another UID left and we may not delete is named in a warning."""
        tmp = self.tmp_dir
        try:
            entries = sorted(os.scandir(tmp), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        removed: list[str] = []
        for entry in entries:
            size = _tree_bytes(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning(
                    "workspace: cannot remove %s left by an earlier run: %s",
                    entry.path,
                    exc.strerror or type(exc).__name__,
                )
                continue
            removed.append(entry.name)
            log.info(
                "workspace: removed %s (%s) left in %s by an earlier run",
                entry.name,
                human(size),
                tmp,
            )
        return removed

    def _probe_write(self) -> None:
        fd, name = tempfile.mkstemp(prefix=".probe-", dir=self.root / "state")
        os.close(fd)
        os.unlink(name)

    def _permission_error(self, where: str) -> WorkspaceError:
        # Name the directory that actually refused us: the nearest one that exists.
        blocking = Path(where)
        while not os.path.exists(blocking) and blocking != blocking.parent:
            blocking = blocking.parent
        try:
            st = blocking.stat()
            owner = (
                f"{blocking} is owned by {st.st_uid}:{st.st_gid}, mode {st.st_mode & 0o7777:04o}"
            )
        except OSError:
            owner = f"{blocking}: owner unknown"
        return WorkspaceError(
            f"workspace {self.root} is not writable by uid {os.getuid()} gid {os.getgid()} "
            f"({owner})"
        )

    def files_dir(self, snapshot: Snapshot) -> Path:
        if snapshot.kind == "local":
            return Path(snapshot.location)  # used in place: no second copy
        return self.root / "files" / snapshot_slug(snapshot)

    def partial_dir(self, snapshot: Snapshot) -> Path:
        return self.root / "partial" / snapshot_slug(snapshot)

    def context_dir(self, snapshot: Snapshot) -> Path:
        return self.root / "context" / snapshot_slug(snapshot)

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    def state(self, snapshot: Snapshot) -> BuildState:
        return BuildState(self.root / "state" / f"{snapshot_slug(snapshot)}.json")

    def already_fetched(self, snapshot: Snapshot) -> int:
        """Model bytes an earlier run left here (files and partial downloads)."""
        files, partial = self.files_dir(snapshot), self.partial_dir(snapshot)
        have = 0
        for entry in snapshot.files:
            with contextlib.suppress(OSError):
                if (files / entry.path).stat().st_size == entry.size:
                    have += entry.size
                    continue
            with contextlib.suppress(OSError):
                have += min(entry.size, (partial / f"{entry.path}.part").stat().st_size)
        return have

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def require_space(self, needed: int, what: str) -> None:
        free = self.free_bytes()
        if needed > free:
            raise InsufficientSpace(
                f"{what} needs {human(needed)} more on {self.root}, only {human(free)} free"
            )


def device_of(path: Path) -> int:
    """The device ``path`` is on, or would be on once created (its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.stat().st_dev


def writable_problem(directory: Path, file: Path | None, create: bool) -> str | None:
    """None when ``file`` (or a new file) can be written in ``directory``, else why not
    (the preflight's check of --results-dir, --report and an oci: layout). ``create``:
    make a missing ``directory``; else only probe that it could be made."""
    if not directory.exists():
        top = directory  # the first missing directory: what a build would create first
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        try:  # a real mkdir: os.access says yes to root on /proc, a read-only mount, ...
            if not create:
                top.mkdir(0o700)
                top.rmdir()  # a probe only: build creates it
                return None
            make_dir(directory, 0o755)
        except OSError as exc:
            return f"cannot create {directory if create else top}: {exc.strerror}"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if file is not None and file.exists():
        return None if os.access(file, os.W_OK) else f"{file} is not writable"
    try:
        fd, name = tempfile.mkstemp(prefix=".modelcar-probe-", dir=directory)
    except OSError as exc:
        return f"{directory} is not writable by uid {os.getuid()}: {exc.strerror}"
    os.close(fd)
    os.unlink(name)
    return None


def _tree_bytes(path: str) -> int:
    """Bytes a file or directory tree occupies (for the log line; errors count 0)."""
    total = 0
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total
