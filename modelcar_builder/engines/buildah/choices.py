"""What a buildah request may ask for. Its settings (the MODELCAR_BUILDAH_* variables)
are read in ``modelcar_builder.settings``, the one reader of the environment."""

from __future__ import annotations

from modelcar_builder.engines import BuildRequest
from modelcar_builder.errors import UsageError
from modelcar_builder.settings import (  # noqa: F401  # re-exported: the engine's names
    DEFAULT_OVERLAP,
    ENGINE_NAME,
    ENV_ISOLATION,
    ENV_OVERLAP,
    ENV_PRIVATE_STATE,
    ENV_STORAGE_DRIVER,
    BuildahSettings,
)
from modelcar_builder.target import RegistryTarget

COMPRESSIONS = ("gzip", "none")  # what `buildah commit` writes to an OCI layout


def check_compression(compression: str) -> None:
    """gzip (the default) or none; zstd only ``buildah push`` could write, and KServe's
    ``oci://`` fetch refuses it. Checked before the download (the run, the preflight)."""
    if compression == "zstd":
        raise UsageError(
            "--engine buildah writes gzip or uncompressed layers, not zstd",
            hint="use --compression gzip (buildah's default): KServe's oci:// fetch refuses "
            "tar+zstd layers anyway",
        )
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}", hint="use gzip")


def overlaps(request: BuildRequest, settings: BuildahSettings) -> bool:
    """Uploads run beside the next layer's build only for a registry target."""
    return settings.overlap and isinstance(request.target, RegistryTarget)
