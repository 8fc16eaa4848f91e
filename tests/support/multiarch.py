"""A two-platform base image for multi-arch tests, made offline with buildah.

linux/amd64 is the session's busybox base (tests/support/registry.py). linux/arm64 is a
stand-in: `buildah from scratch` + one marker file + `buildah config --arch arm64`,
committed, never run (this machine cannot run arm64 code, and no arm64 binary is
downloaded). Its only use is to be a different base under the same index, so a ModelCar
index has one manifest per platform with the platform's own base layers.
`buildah manifest create/add/push --all` makes the index, as a user would.
``build_index`` builds the test model for both platforms on it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.clitools import run
from tests.support.models import build_args
from tests.support.registry import BaseImage, RegistryInstance, _run
from tests.support.signing import raw_manifest

ARM64_MARKER = "etc/modelcar-test-arm64-stand-in"
PLATFORMS = "linux/amd64,linux/arm64"


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


@dataclass(frozen=True)
class BuiltIndex:
    """What `build --platform linux/amd64,linux/arm64` pushed: the tag, the index's
    digest and each platform manifest's."""

    image: str  # host/models/multi:TAG, the identity a signature of the build names
    repo: str  # models/multi
    index: str  # the index's digest, printed by the build
    by_arch: dict[str, str]  # "amd64"/"arm64" -> that platform manifest's digest

    def pinned(self, digest: str) -> str:
        """``host/models/multi@digest``."""
        return f"{self.image.rsplit(':', 1)[0]}@{digest}"


def build_index(
    capsys: pytest.CaptureFixture[str],
    reg: RegistryInstance,
    multi_base: str,
    workdir: Path,
    tag: str,
    *extra: str,
) -> BuiltIndex:
    """`modelcar build --platform linux/amd64,linux/arm64` of the test model (the Hub
    imitation's ``REPO``) on ``multi_base`` to host/models/multi:TAG; ``extra``: e.g.
    ``--sign-key KEY``."""
    image = f"{reg.host}/models/multi:{tag}"
    res = run(capsys, *build_args(image, workdir / f"ws-{tag}", multi_base,
                                  "--platform", PLATFORMS, *extra))  # fmt: skip
    assert res.code == 0, res.err
    index_digest = res.last_line.rsplit("@", 1)[1]
    index = raw_manifest(reg, "models/multi", index_digest)
    by_arch = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert set(by_arch) == {"amd64", "arm64"}
    return BuiltIndex(image, "models/multi", index_digest, by_arch)
