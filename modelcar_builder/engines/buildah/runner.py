"""Running buildah: finding it, its environment (an allowlist: TMPDIR and private state
on the workspace, no secrets), and one subprocess per command whose failure becomes one
scrubbed line."""

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

from modelcar_builder.engines.buildah.choices import BuildahSettings
from modelcar_builder.engines.buildah.failures import (
    INSTALL_HINT,
    classify_failure,
    scrub,
)
from modelcar_builder.engines.buildah.storage import has_cap_sys_admin
from modelcar_builder.errors import EngineUnavailable
from modelcar_builder.settings import environment
from modelcar_builder.workspace import make_dir

log = logging.getLogger("modelcar.engines.buildah.runner")

_ROOTLESS_MARKER_UID = "4242"  # any non-zero uid: only routes c/image's cache to XDG dirs


@dataclass
class Buildah:
    """argv prefix + environment; every call is an argv list, never a shell."""

    prefix: tuple[str, ...]
    env: dict[str, str] = field(repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def run(self, args: Sequence[str], step: str) -> str:
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
            raise classify_failure(step, "\n".join(tail), self.secrets)
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


# What buildah may inherit from our environment; everything else (HF_TOKEN, MODELCAR_*,
# REGISTRY_AUTH_FILE, the caller's BUILDAH_* / STORAGE_* / XDG_*) stays with us.
INHERITED = frozenset(
    {
        "PATH",  # helpers it runs (newuidmap, mount helpers)
        "HOME",
        "LANG",
        "LANGUAGE",
        "TZ",
        # Proxies: its registry connections must take the same route as ours.
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
        # Trust anchors (paths, not secrets): a pod's custom CA bundle for the registry.
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        # Where containers' own config lives (paths): registries.conf mirrors, storage.conf.
        "CONTAINERS_CONF",
        "CONTAINERS_REGISTRIES_CONF",
        "CONTAINERS_STORAGE_CONF",
    }
)
INHERITED_PREFIXES = ("LC_",)
# Without private state buildah keeps the caller's own XDG dirs (rootless runtime dir).
_CALLER_XDG = ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR")


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` a buildah child may see (:data:`INHERITED`)."""
    return {k: v for k, v in environ.items() if k in INHERITED or k.startswith(INHERITED_PREFIXES)}


def buildah_env(
    workspace_tmp: Path,
    state_dir: Path,
    settings: BuildahSettings,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An allowlist, not a copy: buildah gets what it needs to run (:data:`INHERITED`) and
    what we set: TMPDIR (big temp copies) and, with private state, XDG dirs on the
    workspace and containers' rootless markers. No HF_TOKEN, no ``MODELCAR_*`` (token
    files, passwords), no REGISTRY_AUTH_FILE: buildah never talks to a registry, so no
    registry credential ever reaches it."""
    environ = environment() if environ is None else environ
    env = inherited_env(environ)
    env["TMPDIR"] = str(workspace_tmp)
    if not settings.private_state:
        env.update({k: environ[k] for k in _CALLER_XDG if k in environ})
        return env
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
