"""Names and units that every part of the benchmark shares."""

from __future__ import annotations

import platform
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # scripts/bench/common.py -> the repo
GIB = 1 << 30
MIB = 1 << 20
MB = 1e6  # throughput and sizes in the report are decimal MB, like curl and the registry
HUB_REPO = "bench/model"
NATIVE = "native"
STREAM = "native --stream"
OUR_BUILDAH = "modelcar buildah"
STOCK_BUILDAH = "stock buildah"
OLOT = "olot + skopeo"
RAW = "raw curl -T"
MULTIARCH = "native 2 platforms"  # --platform linux/amd64,linux/arm64: an image index
MODELPACK = "native --modelpack"  # and a ModelPack manifest on the same blobs
CONTENDERS = (NATIVE, STREAM, OUR_BUILDAH, STOCK_BUILDAH, OLOT, RAW, MULTIARCH, MODELPACK)


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"
