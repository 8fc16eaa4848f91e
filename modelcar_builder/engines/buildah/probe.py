"""Can buildah run here at all? Decided by running what a build runs, tiny (``from
scratch``, ``copy`` one file, ``rm``) in a throwaway vfs store on the workspace: by
probing, never by guessing from the UID or from message text. ``--engine`` left to its
default uses the answer to fall back to native; an explicit ``--engine buildah`` fails with
it before any download."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from modelcar_builder.engines.buildah.choices import BuildahSettings
from modelcar_builder.engines.buildah.runner import Buildah, buildah_env, find_buildah
from modelcar_builder.errors import EnginePrivilegeError, ModelcarError
from modelcar_builder.settings import environment
from modelcar_builder.workspace import DIR_MODE, Workspace, make_dir

# The one story about what the buildah engine needs: --help, README.md and deploy/ say
# exactly this (a test holds them to it).
BUILDAH_NEEDS = (
    "buildah must run as UID 0 with the capabilities SYS_CHROOT and DAC_OVERRIDE (its "
    "copier chroots into each layer; no SETFCAP, no SYS_ADMIN, no user namespace); on "
    "OpenShift that takes an SCC allowing them "
    "(deploy/overlays/openshift/scc-modelcar-buildah.yaml), not restricted-v2"
)
PROBE_HINT = (
    f"{BUILDAH_NEEDS}: securityContext runAsUser: 0, capabilities add [SYS_CHROOT, "
    "DAC_OVERRIDE]; or use --engine native, which needs no privilege"
)

_probed: dict[Path, ModelcarError | None] = {}


def probe(workspace: Workspace) -> ModelcarError | None:
    """None when buildah can build here, else the error saying why (40: not installed,
    41: it cannot run with this UID and these capabilities). Cached per workspace."""
    key = workspace.storage_dir.resolve()
    if key not in _probed:
        _probed[key] = _probe(workspace)
    return _probed[key]


def _probe(workspace: Workspace) -> ModelcarError | None:
    try:
        exe = find_buildah(environment())
    except ModelcarError as exc:
        return exc
    storage = make_dir(workspace.storage_dir, DIR_MODE)
    tmp = make_dir(workspace.tmp_dir, DIR_MODE)
    root = Path(tempfile.mkdtemp(prefix="probe-", dir=storage))
    try:
        buildah = Buildah(
            prefix=(exe, f"--root={root / 'store'}", f"--runroot={root / 'run'}",
                    "--storage-driver=vfs"),
            env=buildah_env(tmp, root / "state", BuildahSettings()),
        )  # fmt: skip
        payload = root / "probe.txt"
        payload.write_text("modelcar buildah probe\n")
        try:
            container = buildah.run(["from", "--name", root.name, "scratch"], "probe").strip()
            buildah.run(["copy", container, str(payload), "/models/probe.txt"], "probe")
            buildah.run(["rm", container], "probe")
        except ModelcarError as exc:
            return EnginePrivilegeError(
                f"buildah cannot build here ({exc.message})", hint=PROBE_HINT
            )
        return None
    finally:
        shutil.rmtree(root, ignore_errors=True)
