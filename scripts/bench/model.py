"""The generated model: config/tokenizer files plus incompressible safetensors-like shards."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from .common import MIB

SHARD_MAX = 512 * MIB  # what a Hub uploader typically cuts weights into


@dataclass(frozen=True)
class Model:
    context: Path  # holds only model/: the Containerfile's build context
    files: tuple[str, ...]  # relative to root
    total_bytes: int
    inodes: frozenset[tuple[int, int]]  # hard links to these are not "extra" disk

    @property
    def root(self) -> Path:
        return self.context / "model"

    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]


def generate_model(context: Path, size_bytes: int, seed: int = 1) -> Model:
    """Config/tokenizer files plus safetensors-like shards of random bytes (incompressible,
    deterministic per seed) that add up to ``size_bytes``."""
    root = context / "model"
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    small = _small_files(rng)
    n_shards = max(2, -(-size_bytes // SHARD_MAX))
    weight_bytes = max(n_shards * 1024, size_bytes - sum(len(b) for b in small.values()))
    names = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    index = {"metadata": {"total_size": weight_bytes}, "weight_map": {}}
    for i, name in enumerate(names):
        size = weight_bytes // n_shards + (weight_bytes % n_shards if i == 0 else 0)
        _write_shard(root / name, size, rng, i)
        index["weight_map"][f"layers.{i}.weight"] = name
    small["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    for rel, data in small.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    files = tuple(sorted([*small, *names]))
    os.sync()  # no writeback of the model may overlap the first timed run
    stats = [(root / f).stat() for f in files]
    return Model(
        context=context,
        files=files,
        total_bytes=sum(s.st_size for s in stats),
        inodes=frozenset((s.st_dev, s.st_ino) for s in stats),
    )


def _small_files(rng: random.Random) -> dict[str, bytes]:
    vocab = {f"tok{rng.getrandbits(40):x}": i for i in range(32000)}  # ~1 MB, like Llama's
    return {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 4096}).encode(),
        "generation_config.json": b'{"do_sample": true, "temperature": 0.6}',
        "tokenizer.json": json.dumps({"model": {"type": "BPE", "vocab": vocab}}).encode(),
        "tokenizer_config.json": b'{"bos_token": "<s>", "eos_token": "</s>"}',
        "special_tokens_map.json": b'{"bos_token": "<s>", "eos_token": "</s>"}',
        "README.md": b"# bench model\n\nRandom weights for benchmarks.\n",
    }


def _write_shard(path: Path, size: int, rng: random.Random, index: int) -> None:
    header = json.dumps({"__metadata__": {"format": "pt"}, f"layers.{index}.weight": {}}).encode()
    header += b" " * (-len(header) % 8)
    head = len(header).to_bytes(8, "little") + header
    with open(path, "wb") as fh:
        fh.write(head[:size])
        left = size - min(size, len(head))
        while left:
            n = min(left, 8 * MIB)
            fh.write(rng.randbytes(n))
            left -= n
