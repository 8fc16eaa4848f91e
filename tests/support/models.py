"""The test models, in one place: the files of a Hub repo (``model_files``), the same
kind of model as a local directory (``make_model``), and the CLI arguments that build
the Hub one with the native engine (``build_args``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.support.hubsim import EDGE_FILES

MIB = 1 << 20
REPO = "acme/llm"  # the Hub repo of the ``hub_repo`` fixture


def shard(seed: int, size: int) -> bytes:
    """``size`` bytes that depend on ``seed`` only (and barely compress)."""
    block = hashlib.sha256(b"seed-%d" % seed).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def model_files(n_shards: int = 2, shard_size: int = 2 * MIB) -> dict[str, bytes]:
    """A Hub repo's files: small JSON files (one nested under a top-level name), the
    edge-case names, and ``n_shards`` safetensors shards of about ``shard_size``."""
    files = {
        "config.json": b'{"model_type": "llm"}',
        "a/config.json": b'{"nested": true}',
        "tokenizer/tokenizer.json": b'{"vocab": {"a": 1}}',
        **EDGE_FILES,
    }
    for i in range(n_shards):
        files[f"model-{i:05d}-of-{n_shards:05d}.safetensors"] = shard(i, shard_size + i)
    return files


SMALL_MODEL = {  # a local directory in one layer: two configs (one nested), a 4 KiB weight
    "config.json": b'{"top": true}',
    "a/config.json": b'{"nested": true}',
    "model.safetensors": b"\0" * 4096,
}


def make_model(root: Path, files: dict[str, bytes] | None = None) -> Path:
    """A model directory at ``root`` with ``files``; by default two small files (one in
    a subdir with the same name as a top-level one), the edge-case names and two random
    shards over 1 MiB: 3 planned layers at a 1 MiB threshold. Modes 0644/0755."""
    if files is None:
        files = {
            "config.json": b'{"top": true}\n',
            "a/config.json": b'{"nested": true}\n',
            "model-00001-of-00002.safetensors": os.urandom(3 * MIB // 2),
            "model-00002-of-00002.safetensors": os.urandom(5 * MIB // 2),
            **EDGE_FILES,
        }
    root.mkdir(parents=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def build_args(image: str, ws: Path, base: str, *extra: str) -> list[str]:
    """``modelcar build`` of ``hf://REPO@main`` with the native engine, 1 MiB threshold."""
    return engine_build_args("native", image, ws, base, *extra)


def engine_build_args(engine: str, image: str, ws: Path, base: str, *extra: str) -> list[str]:
    """``modelcar build`` of ``hf://REPO@main`` with ``engine``, 1 MiB threshold."""
    return [
        "build", f"hf://{REPO}@main", "--engine", engine, "--image", image,
        "--workspace", str(ws), "--base-image", base, "--layer-threshold", str(MIB),
        "--no-tls-verify", *extra,
    ]  # fmt: skip
