"""The builder image (containerfiles/Containerfile) built for real, offline, with podman:

1. a Debian bookworm root fs made with mmdebstrap from the Debian mirror (cached as a tar
   under ~/.cache/modelcar-builder/, keyed by suite + package list, so later runs need no
   network), imported as the BASE_IMAGE;
2. a wheelhouse with the exact versions of containerfiles/constraints.txt (pip download,
   cached the same way, keyed by the constraints file);
3. ``podman build --network none`` of the Containerfile with ``PIP_ARGS="--no-index
   --find-links /wheels"`` and the wheelhouse mounted read-only at /wheels: directly
   (build_builder_image), or as a user would, with scripts/builder-image.sh run from a copy
   of the checkout against the loopback registry (build_with_script), which pushes the
   image, reads its digest back and pins it in the copy's deploy/.

Each step returns a reason string instead of raising when the outside world (mirror,
package index) cannot be reached, so the tests skip saying why instead of failing."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.podman import Podman

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MODELCAR_TEST_CACHE", Path.home() / ".cache" / "modelcar-builder"))
SUITE = "bookworm"
PACKAGES = ("python3", "python3-pip", "python3-venv", "buildah", "ca-certificates",
            "libnss-wrapper")  # fmt: skip
BUILD_WHEELS = ("setuptools>=68,<81", "wheel")  # build isolation for the package itself
BASE_NAME = "localhost/modelcar-test/debian-base"
IMAGE_NAME = "localhost/modelcar-test/builder:test"


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def debian_base_tar() -> Path | str:
    """The cached root fs tar, made now if missing; a str says why it cannot be made."""
    if not shutil.which("mmdebstrap"):
        return "mmdebstrap is not installed (scripts/install-deps.sh installs it)"
    key = _key(SUITE, "apt", *sorted(PACKAGES))
    out = CACHE / f"debian-{SUITE}-{key}.tar"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mmdebstrap-", dir=CACHE))
    partial = work / "rootfs.tar"
    try:
        proc = subprocess.run(
            ["mmdebstrap", "--variant=apt", f"--include={','.join(PACKAGES)}", SUITE,
             str(partial)],
            env={**os.environ, "TMPDIR": str(work)}, capture_output=True, text=True,
            timeout=900,
        )  # fmt: skip
        if proc.returncode != 0 or not partial.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            return f"mmdebstrap could not build a {SUITE} root fs from the mirror: {tail}"
        partial.rename(out)
        return out
    finally:
        _unmount_below(work)  # mmdebstrap (root mode) may leave its /proc mount behind
        shutil.rmtree(work, ignore_errors=True)


def _unmount_below(directory: Path) -> None:
    prefix = str(directory.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def wheelhouse() -> Path | str:
    """Wheels of every pinned dependency (and the build backend), cached by the pins."""
    constraints = ROOT / "containerfiles" / "constraints.txt"
    key = _key(constraints.read_text(), *BUILD_WHEELS, sys.version.split()[0][:4])
    out = CACHE / f"wheels-{key}"
    if (out / ".complete").is_file():
        return out
    partial = CACHE / f"wheels-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    pins = [line for line in constraints.read_text().splitlines() if "==" in line]
    for what in (pins, list(BUILD_WHEELS)):
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "-d", str(partial), *what],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if proc.returncode != 0:
            return f"pip could not download the pinned wheels: {proc.stderr.strip()[-400:]}"
    (partial / ".complete").write_text("")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def import_base(podman: Podman, tar: Path) -> str:
    ref = f"{BASE_NAME}:{tar.stem.rsplit('-', 1)[-1]}"
    if podman.run("image", "exists", ref, check=False).returncode != 0:
        podman.run("import", "-q", str(tar), ref)
    return ref


def build_builder_image(podman: Podman, base_ref: str, wheels: Path) -> str:
    """``podman build`` of containerfiles/Containerfile on ``base_ref``, offline."""
    podman.run(
        "build", "-q", "--network", "none", "--pull-never",
        "-f", str(ROOT / "containerfiles" / "Containerfile"),
        "--build-arg", f"BASE_IMAGE={base_ref}",
        "--build-arg", "PIP_ARGS=--no-index --find-links /wheels",
        "--build-arg", "VERSION=test",
        "-v", f"{wheels}:/wheels:ro",
        "-t", IMAGE_NAME, str(ROOT),
    )  # fmt: skip
    return IMAGE_NAME


# What scripts/builder-image.sh needs of a checkout (the build context and deploy/).
CHECKOUT = ("scripts/builder-image.sh", "containerfiles", "modelcar_builder", "pyproject.toml",
            "README.md", ".containerignore", "deploy")  # fmt: skip


@dataclass
class ScriptBuild:
    checkout: Path  # the copy whose deploy/ the script pinned
    image: str  # REGISTRY/REPO@sha256:..., as the script printed it
    log: str  # everything the script and the build printed


def copy_checkout(dest: Path) -> Path:
    for rel in CHECKOUT:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def push_base(podman: Podman, base_ref: str, registry_host: str) -> str:
    """The imported Debian base, pushed to the loopback registry (the script reads a
    base's digest from its registry)."""
    ref = f"{registry_host}/base/debian:{SUITE}"
    podman.run("push", "-q", "--tls-verify=false", base_ref, f"docker://{ref}")
    return ref


def build_with_script(podman: Podman, base_in_registry: str, wheels: Path, target: str,
                      checkout: Path) -> ScriptBuild:  # fmt: skip
    """scripts/builder-image.sh as a user runs it, offline, into the given checkout copy."""
    env = dict(
        podman.env, ENGINE="podman", ENGINE_ARGS=" ".join(podman.argv()[1:])
    )  # --root, --runroot, --storage-driver
    proc = subprocess.run(
        [str(checkout / "scripts" / "builder-image.sh"), "--base-image", base_in_registry,
         "--tls-verify=false", "--network", "none",
         "--build-arg", "PIP_ARGS=--no-index --find-links /wheels",
         "--volume", f"{wheels}:/wheels:ro", "--source-url", "https://example.invalid/modelcar",
         target],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return ScriptBuild(checkout, proc.stdout.strip().splitlines()[-1], log)
