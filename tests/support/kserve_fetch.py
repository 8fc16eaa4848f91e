"""KServe's own `oci+fetch://` code, run against the loopback registry: PyPI
``kserve-storage`` (pinned in pyproject's test extra), ``Storage._download_oci``, the
function KServe's storage initializer calls for an ``oci+fetch://`` storageUri (its Go
webhook rewrites the scheme to ``oci://`` first). Nothing here reimplements it: the
helper only sets the environment the webhook would set and compares what it wrote."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

KSERVE_STORAGE_VERSION = "0.21.0"


def download_oci(image: str, out_dir: Path, docker_config: Path | None = None) -> Path:
    """``Storage._download_oci("oci://IMAGE", out_dir)`` with the webhook's environment:
    KSERVE_OCI_INSECURE_REGISTRY=true (the loopback registry is plain HTTP) and
    KSERVE_OCI_DOCKER_CONFIG pointing at a docker config.json when credentials are
    needed."""
    from importlib.metadata import version

    from kserve_storage import Storage

    assert version("kserve-storage") == KSERVE_STORAGE_VERSION
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KSERVE_OCI_INSECURE_REGISTRY", "true")
        if docker_config is not None:
            mp.setenv("KSERVE_OCI_DOCKER_CONFIG", str(docker_config))
        else:  # never the default mount path, never a config of this machine
            mp.setenv("KSERVE_OCI_DOCKER_CONFIG", str(out_dir.parent / "no-config.json"))
        mp.delenv("CA_BUNDLE_VOLUME_MOUNT_POINT", raising=False)
        return Path(Storage._download_oci(f"oci://{image}", str(out_dir)))


def tree_digests(root: Path) -> dict[str, str]:
    """Every regular file under ``root``: relative POSIX path -> sha256."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def expected_digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def assert_fetched(image: str, files: dict[str, bytes], out_dir: Path,
                   docker_config: Path | None = None) -> dict[str, str]:  # fmt: skip
    """KServe's fetch of ``image`` wrote exactly ``files``, byte for byte."""
    got = tree_digests(download_oci(image, out_dir, docker_config))
    assert got == expected_digests(files)
    assert os.listdir(out_dir)  # something real was written
    return got
