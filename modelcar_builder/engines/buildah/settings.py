"""How the buildah engine is configured (environment variables) and which mode a
request runs in."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from modelcar_builder.engines import BuildRequest
from modelcar_builder.errors import UsageError
from modelcar_builder.target import RegistryTarget

log = logging.getLogger("modelcar")

ENGINE_NAME = "buildah"
ENV_STORAGE_DRIVER = "MODELCAR_BUILDAH_STORAGE_DRIVER"
ENV_ISOLATION = "MODELCAR_BUILDAH_ISOLATION"
ENV_PRIVATE_STATE = "MODELCAR_BUILDAH_PRIVATE_STATE"
ENV_MODE = "MODELCAR_BUILDAH_MODE"
ENV_OVERLAP = "MODELCAR_BUILDAH_OVERLAP"
DEFAULT_OVERLAP = True  # per-layer mode: upload layer i while layer i+1 is built (measured)
MODES = ("per-layer", "chain")
DEFAULT_MODE = "per-layer"


@dataclass(frozen=True)
class BuildahSettings:
    storage_driver: str = "auto"  # auto: overlay where it can mount, else vfs
    isolation: str = "chroot"
    private_state: bool = True
    mode: str = DEFAULT_MODE  # per-layer: one container per layer; chain: from/copy/commit
    overlap: bool = DEFAULT_OVERLAP  # per-layer, registry target: one upload in flight

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BuildahSettings:
        private = env.get(ENV_PRIVATE_STATE, "1").strip().lower() not in ("0", "false", "no")
        overlap = env.get(ENV_OVERLAP, "").strip().lower()
        if overlap not in ("", "0", "1", "true", "false", "yes", "no"):
            raise UsageError(f"{ENV_OVERLAP}={overlap!r} is not a switch", hint="use 0 or 1")
        mode = env.get(ENV_MODE, "").strip().lower() or DEFAULT_MODE
        if mode not in MODES:
            raise UsageError(f"{ENV_MODE}={mode!r} is not a mode", hint=f"use {' or '.join(MODES)}")
        return cls(
            storage_driver=env.get(ENV_STORAGE_DRIVER, "").strip() or "auto",
            isolation=env.get(ENV_ISOLATION, "").strip() or "chroot",
            private_state=private,
            mode=mode,
            overlap=overlap in ("1", "true", "yes") if overlap else DEFAULT_OVERLAP,
        )


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
