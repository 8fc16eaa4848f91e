"""What `modelcar verify` costs, default and ``--deep``: one image of a generated model
(native engine, scratch base, a loopback docker-registry), verified ``--rounds`` times.

    python3 -m scripts.bench.verify_deep --size-gib 1 --out BENCHMARKS.md

Writes (or replaces) the "## verify" section of ``--out``; the rest is left as it is, and
``python3 -m scripts.bench`` keeps this section when it rewrites the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import GIB, MB, REPO_ROOT
from .model import generate_model
from .sections import replace_section
from .services import Registry

HEADING = "## verify"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m scripts.bench.verify_deep")
    p.add_argument("--size-gib", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compression", default="none,gzip", help="layer compressions, each an image")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    a = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="modelcar-bench-verify-"))
    registry = Registry.start(workdir / "registry")
    try:
        model = generate_model(workdir / "ctx", int(a.size_gib * GIB))
        rows = []
        for compression in a.compression.split(","):
            image = f"{registry.host}/bench/verify:{compression}"
            report = workdir / f"report-{compression}.json"
            _modelcar("build", str(model.root), "--engine", "native", "--image", image,
                      "--base-image", "scratch", "--workspace", str(workdir / "ws"),
                      "--compression", compression, "--report", str(report),
                      "--no-preflight", "--no-tls-verify")  # fmt: skip
            rows += [
                _measure(f"verify ({compression})", a.rounds, image),
                _measure(f"verify --deep ({compression})", a.rounds, image, "--deep",
                         "--report", str(report)),
            ]  # fmt: skip
    finally:
        registry.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    lines = _section(rows, model.total_bytes, a)
    replace_section(a.out, HEADING, lines)
    print("\n".join(lines))
    return 0


def _modelcar(*args: str) -> tuple[float, int, str]:
    """Run the CLI; wall seconds, peak RSS (bytes) of that process alone, stdout."""
    argv = [sys.executable, "-m", "modelcar_builder", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=REPO_ROOT)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} exited {proc.returncode}")
    return wall, usage.ru_maxrss * 1024, out


def _measure(name: str, rounds: int, image: str, *extra: str) -> dict:
    runs = [_modelcar("verify", image, "--no-tls-verify", "--json", *extra) for _ in range(rounds)]
    doc = json.loads(runs[-1][2])
    return {
        "name": name,
        "wall": statistics.median(r[0] for r in runs),
        "rss": max(r[1] for r in runs),
        "read": doc["bytes_read"],
        "hashed": (doc["deep"] or {}).get("files_checked", 0),
        "size_only": (doc["deep"] or {}).get("files_unhashed", 0),
    }


def _section(rows: list[dict], total: int, a: argparse.Namespace) -> list[str]:
    out = [
        HEADING,
        "",
        f"`python3 -m scripts.bench.verify_deep --size-gib {a.size_gib:g} --rounds {a.rounds} "
        f"--compression {a.compression}`, run on {time.strftime('%Y-%m-%d')}: one image of "
        f"a {total / MB:.0f} MB generated model (native engine, scratch base; layers "
        "uncompressed (none) or gzip) in a loopback "
        f"docker-registry, verified {a.rounds} times "
        "each (a fresh process per run, so ~0.5 s of it is Python starting; warm page "
        "cache). `verify --deep` compares /models with the build report: every file is "
        "read and sha256-hashed either way, compared by hash where the report has one and "
        "by size where not. MB/s is bytes read / wall time.",
        "",
        "| command | wall s (median) | MB/s | bytes read | files by hash / size only "
        "| peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| `{r['name']}` | {r['wall']:.2f} | {_rate(r['read'], r['wall'])} | "
            f"{r['read']} | {r['hashed']} / {r['size_only']} | {r['rss'] / MB:.0f} |"
        )
    return [*out, ""]


def _rate(read: int, wall: float) -> str:
    return f"{read / MB / wall:.0f}" if read >= MB else "—"


if __name__ == "__main__":
    sys.exit(main())
