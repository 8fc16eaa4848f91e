"""Which mode a buildah request runs in. Its settings (the MODELCAR_BUILDAH_* variables)
are read in ``modelcar_builder.settings``, the one reader of the environment."""

from __future__ import annotations

import logging

from modelcar_builder.engines import BuildRequest
from modelcar_builder.settings import (  # noqa: F401  # re-exported: the engine's names
    DEFAULT_MODE,
    DEFAULT_OVERLAP,
    ENGINE_NAME,
    ENV_ISOLATION,
    ENV_MODE,
    ENV_OVERLAP,
    ENV_PRIVATE_STATE,
    ENV_STORAGE_DRIVER,
    MODES,
    BuildahSettings,
)
from modelcar_builder.target import RegistryTarget

log = logging.getLogger("modelcar")


def effective_mode(request: BuildRequest, mode: str) -> str:
    """zstd needs ``buildah push`` (only it chooses the format): always the chain."""
    if mode == "per-layer" and request.compression == "zstd":
        log.info("buildah: zstd layers need buildah push; using the chain mode")
        return "chain"
    return mode


def overlaps(request: BuildRequest, settings: BuildahSettings) -> bool:
    """Per-layer uploads run beside the next build only for a registry target."""
    return settings.overlap and isinstance(request.target, RegistryTarget)


def via_layout(request: BuildRequest) -> bool:
    """Uncompressed layers for a registry: buildah compresses whatever it sends to
    ``docker://``, so the image goes to an OCI layout first and we upload it."""
    return request.compression == "none" and isinstance(request.target, RegistryTarget)
