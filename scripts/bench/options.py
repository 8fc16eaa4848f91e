"""The command line, and the optional Python packages (matplotlib, olot) the benchmark
installs on demand."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __doc__ as USAGE
from .common import CONTENDERS, REPO_ROOT
from .services import serve_hub


@dataclass(frozen=True)
class Options:
    size_gib: float
    rounds: int
    scaling: tuple[float, ...]
    out: Path
    charts_dir: Path
    workdir: Path | None
    quick: bool
    contenders: tuple[str, ...]
    stream_max_gib: float
    raw_jobs: int
    budget_min: float
    install: bool
    keep: bool
    quiet_wait: float
    argv: tuple[str, ...]
    hub_gib: float = 1.0
    hub_cap_mbs: float = 40.0
    hub_rounds: int = 2
    hub_only: bool = False


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="python3 -m scripts.bench",
        description=USAGE,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--size-gib", type=float, default=2.0, help="model size of the main table")
    p.add_argument("--rounds", type=int, default=3, help="rounds of all contenders (>= 3)")
    p.add_argument("--scaling", default="0.5,1,2,4", help="sizes (GiB) for native; '' = none")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    p.add_argument("--charts-dir", type=Path, help="default: benchmarks/ beside --out")
    p.add_argument("--workdir", type=Path, help="scratch dir (default: a temp dir in $TMPDIR)")
    p.add_argument("--quick", action="store_true", help="CI smoke: 16 MiB, 1 round, tiny scaling")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    p.add_argument(
        "--stream-max-gib", type=float, default=4.0, help="Hub imitation holds it in RAM"
    )
    p.add_argument("--raw-jobs", type=int, default=2, help="parallel curl uploads (native: 2)")
    p.add_argument("--budget-min", type=float, default=25.0, help="skip scaling points past it")
    p.add_argument("--no-install", action="store_true", help="never pip install matplotlib/olot")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir")
    p.add_argument(
        "--quiet-wait", type=float, default=30.0, help="max s to wait for an idle machine per run"
    )
    p.add_argument("--hub-gib", type=float, default=1.0, help="each repo of 'From the Hub'")
    p.add_argument("--hub-cap-mbs", type=float, default=40.0, help="Hub per-connection cap")
    p.add_argument("--hub-rounds", type=int, default=2, help="rounds of 'From the Hub'")
    p.add_argument(
        "--hub-only", action="store_true", help="only 'From the Hub', spliced into --out"
    )
    p.add_argument("--serve-hub", type=Path, help=argparse.SUPPRESS)  # internal: Hub child
    p.add_argument("--serve-hub-repos", help=argparse.SUPPRESS)  # internal: capped Hub child
    a = p.parse_args(argv)
    if a.serve_hub:
        serve_hub(a.serve_hub)
        sys.exit(0)
    if a.serve_hub_repos:
        from .hub_fetch import serve_hub_repos

        serve_hub_repos(a.serve_hub_repos)
        sys.exit(0)
    size, rounds, scaling = a.size_gib, a.rounds, _floats(a.scaling)
    hub_gib, hub_rounds = a.hub_gib, max(1, a.hub_rounds)
    if a.quick:
        size, rounds, scaling = 1 / 64, 1, (1 / 128, 1 / 64)
        hub_gib, hub_rounds = 1 / 64, 1
    wanted = tuple(c.strip() for c in a.contenders.split(",") if c.strip())
    unknown = [c for c in wanted if c not in CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s) {unknown}; choose from {list(CONTENDERS)}")
    out = a.out.resolve()
    return Options(
        size_gib=size,
        rounds=max(1, rounds),
        scaling=scaling,
        out=out,
        charts_dir=(a.charts_dir or out.parent / "benchmarks").resolve(),
        workdir=a.workdir,
        quick=a.quick,
        contenders=wanted,
        stream_max_gib=a.stream_max_gib,
        raw_jobs=max(1, a.raw_jobs),
        budget_min=a.budget_min,
        install=not a.no_install,
        keep=a.keep,
        quiet_wait=0.0 if a.quick else a.quiet_wait,
        argv=tuple(argv),
        hub_gib=hub_gib,
        hub_cap_mbs=a.hub_cap_mbs,
        hub_rounds=hub_rounds,
        hub_only=a.hub_only,
    )


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def ensure_python_packages(names: tuple[str, ...], install: bool) -> dict[str, str]:
    """Import each package, pip-installing it once if missing. Returns {name: problem}
    for what is still missing, so the report can say why a chart or contender is absent."""
    problems: dict[str, str] = {}
    missing = [n for n in names if not importable(n)]
    if missing and install:
        print(f"bench: pip install {' '.join(missing)}", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *missing],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            problems.update({n: f"pip install failed: {tail}" for n in missing})
        importlib.invalidate_caches()
    for name in missing:
        if not importable(name):
            problems.setdefault(name, "not installed (--no-install)")
    return problems


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
