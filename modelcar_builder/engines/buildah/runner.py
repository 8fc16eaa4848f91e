"""Running buildah: finding it, its environment (TMPDIR and private state on the
workspace), and one subprocess per command whose failure becomes one scrubbed line."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, cast

from modelcar_builder.engines.buildah.failures import (
    INSTALL_HINT,
    Remote,
    classify_failure,
    scrub,
)
from modelcar_builder.engines.buildah.settings import BuildahSettings
from modelcar_builder.engines.buildah.storage import has_cap_sys_admin
from modelcar_builder.errors import EngineUnavailable
from modelcar_builder.workspace import make_dir

log = logging.getLogger("modelcar")

_ROOTLESS_MARKER_UID = "4242"  # any non-zero uid: only routes c/image's cache to XDG dirs


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
            out = cast(IO[str], proc.stdout).read()  # PIPE: never None
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
        for raw in cast(IO[str], proc.stderr):  # PIPE: never None
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


def epoch_seconds(created: str) -> int:
    return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())


def image_id(text: str) -> str:
    """The ID buildah printed last (pull, from, commit print it on stdout)."""
    return bare(text.strip().splitlines()[-1]) if text.strip() else ""


def bare(image_id: str) -> str:
    return image_id.strip().removeprefix("sha256:")
