"""A two-platform base image for multi-arch tests, made offline with buildah.

linux/amd64 is the session's busybox base (tests/support/registry.py). linux/arm64 is a
stand-in: `buildah from scratch` + one marker file + `buildah config --arch arm64`,
committed, never run (this machine cannot run arm64 code, and no arm64 binary is
downloaded). Its only use is to be a different base under the same index, so a ModelCar
index has one manifest per platform with the platform's own base layers.
`buildah manifest create/add/push --all` makes the index, as a user would."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.registry import BaseImage, RegistryInstance, _run

ARM64_MARKER = "etc/modelcar-test-arm64-stand-in"


def build_multiarch_base(base: BaseImage, reg: RegistryInstance, workdir: Path) -> str:
    """Push ``base/multi:latest`` (an OCI index: linux/amd64 busybox, linux/arm64 stand-in)
    to ``reg``; returns ``host/base/multi:latest``."""
    env = base.env
    buildah = [
        "buildah", "--root", str(workdir / "storage"), "--runroot", str(workdir / "runroot"),
        "--storage-driver", "vfs",
    ]  # fmt: skip
    amd64 = base.copy_to(reg, "base/amd64")
    arm64 = f"{reg.host}/base/arm64:latest"
    rootfs = workdir / "arm64-rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / ARM64_MARKER).write_text("an arm64 base stand-in: layered, never run\n")
    ctr = _run([*buildah, "from", "--quiet", "scratch"], env).strip()
    try:
        _run([*buildah, "copy", "--quiet", ctr, str(rootfs), "/"], env)
        _run([*buildah, "config", "--os", "linux", "--arch", "arm64", "--env", "PATH=/bin", ctr],
             env)  # fmt: skip
        _run([*buildah, "commit", "--quiet", "--timestamp", "0", "--format", "oci",
              "--tls-verify=false", ctr, f"docker://{arm64}"], env)  # fmt: skip
    finally:
        _run([*buildah, "rm", ctr], env)
    multi = f"{reg.host}/base/multi:latest"
    _run([*buildah, "manifest", "create", "localhost/base-multi"], env)
    for ref in (amd64, arm64):
        _run([*buildah, "manifest", "add", "--tls-verify=false", "localhost/base-multi",
              f"docker://{ref}"], env)  # fmt: skip
    _run([*buildah, "manifest", "push", "--all", "--format", "oci", "--tls-verify=false",
          "localhost/base-multi", f"docker://{multi}"], env)  # fmt: skip
    shutil.rmtree(workdir / "storage", ignore_errors=True)
    shutil.rmtree(workdir / "runroot", ignore_errors=True)
    return multi
