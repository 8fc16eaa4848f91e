"""The end-to-end half of "From the Hub": ``modelcar build`` from the Hub on a fresh
workspace, with ``native`` and ``native --stream``, each pushing to a loopback
docker-registry of its own (fresh storage, so every layer is really sent).

Two measurements:
- next to ``modelcar fetch`` under the per-connection cap (the table of hub_fetch), so the
  build's wall time reads against the download's and ``--stream`` against the disk path;
- the overlap, without the cap: ``fetch`` alone, ``build`` after that fetch alone, and
  ``build`` fresh, whose ideal is the larger of the first two (download and push at once).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .common import MB
from .hub_runs import HubRun, median_run
from .services import Registry

BUILD = "modelcar build (fresh)"
STREAM_BUILD = "modelcar build --stream"
FETCH_ALONE = "fetch alone"
AFTER_FETCH = "build after fetch"
OVERLAP_REPO = "bench/sharded"


def build_cmd(repo: str, ws: Path, registry: Registry, stream: bool) -> list[str]:
    """A native build of ``repo`` from the Hub into ``registry``, defaults otherwise."""
    tag = "stream" if stream else "disk"
    cmd = [
        sys.executable, "-m", "modelcar_builder", "build", repo,
        "--workspace", str(ws),
        "--image", f"{registry.host}/{repo}:{tag}",
        "--engine", "native", "--base-image", "scratch", "--no-tls-verify",
    ]  # fmt: skip
    return [*cmd, "--stream"] if stream else cmd


def fetch_cmd(repo: str, ws: Path) -> list[str]:
    return [sys.executable, "-m", "modelcar_builder", "fetch", repo, "--workspace", str(ws)]


def with_registry(run_dir: Path, work):
    """Run ``work(registry)`` against a fresh loopback registry, stopped afterwards."""
    home = run_dir.with_name(run_dir.name + "-registry")  # outside what the run's disk counts
    registry = Registry.start(home)
    try:
        return work(registry)
    finally:
        registry.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


def overlap_runs(measure, run_dir: Path) -> list:
    """One round of the overlap: fetch alone, build after it, build fresh (disk and
    --stream). ``measure(name, cmd, run_dir, workspace)`` runs and times one command."""
    ws = run_dir / "ws"
    out = [measure(FETCH_ALONE, fetch_cmd(OVERLAP_REPO, ws), run_dir / "fetch", ws)]

    def build(name: str, workspace: Path, stream: bool, slug: str) -> HubRun:
        def pushed_to(reg: Registry) -> HubRun:
            cmd = build_cmd(OVERLAP_REPO, workspace, reg, stream)
            return measure(name, cmd, run_dir / slug, workspace)

        return with_registry(run_dir / slug, pushed_to)

    out.append(build(AFTER_FETCH, ws, False, "after"))
    out.append(build(BUILD, run_dir / "ws-fresh", False, "fresh"))
    out.append(build(STREAM_BUILD, run_dir / "ws-stream", True, "stream"))
    return out


def overlap_section(runs: list[HubRun], rounds: int) -> list[str]:
    """The Markdown of the overlap measurement (medians), with its two targets and the
    floor the machine's cores allow."""
    med: dict[str, float] = {}
    machine: dict[str, float] = {}
    cores = os.cpu_count() or 1
    out = [
        "### Download and push at once (no per-connection cap)",
        "",
        f"`{OVERLAP_REPO}` (8 shards and small files) from the uncapped Hub imitation into a "
        f"fresh loopback registry, {rounds} round(s), medians. The ideal for a fresh build "
        "is the larger of `fetch` alone and `build` after that fetch: every layer pushed "
        "while the later shards download. `machine CPU s` is every process's CPU (ours, "
        "the Hub imitation's, the registry's): no overlap can finish before that work "
        f"divided by the {cores} cores.",
        "",
        "| run | wall s | MB/s | peak RSS MB | peak disk MB | CPU s | machine CPU s | status |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in (FETCH_ALONE, AFTER_FETCH, BUILD, STREAM_BUILD):
        m = median_run([r for r in runs if r.contender == name])
        if isinstance(m, str):
            out.append(f"| {name} | | | | | | | {m} |")
            continue
        med[name], machine[name] = m.wall, m.machine_cpu
        out.append(
            f"| {name} | {m.wall:.2f} | {m.mb_s:.0f} | {m.peak_rss / MB:.0f} | "
            f"{m.peak_disk / MB:.0f} | {m.cpu:.1f} | {m.machine_cpu:.1f} | ok |"
        )
    ideal = max(med.get(FETCH_ALONE, 0.0), med.get(AFTER_FETCH, 0.0))
    fresh, streamed = med.get(BUILD, 0.0), med.get(STREAM_BUILD, 0.0)
    ratio = fresh / ideal if ideal else 0.0
    total = med.get(FETCH_ALONE, 0.0) + med.get(AFTER_FETCH, 0.0)
    floor = (machine.get(FETCH_ALONE, 0.0) + machine.get(AFTER_FETCH, 0.0)) / cores
    speed = fresh / streamed if streamed else 0.0  # --stream's speed over the disk path's
    out += [
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| fresh build <= 1.15 x max(fetch alone, build after fetch) | {ratio:.2f} x "
        f"({fresh:.2f} s against {ideal:.2f} s; their sum is {total:.2f} s) | "
        f"{_yes(0 < ratio <= 1.15)} |",
        f"| --stream >= 0.8 x the disk path's speed, end to end | {speed:.2f} x | "
        f"{_yes(speed >= 0.8)} |",
        "",
        f"- The CPU floor: fetch alone and build after fetch together keep the machine busy "
        f"for {floor * cores:.1f} CPU-s, so on {cores} cores no fresh build can take less "
        f"than {floor:.2f} s ({floor / ideal if ideal else 0:.2f} x the ideal above); the "
        f"fresh build took {fresh / floor if floor else 0:.2f} x that floor.",
        "",
    ]
    return out


def stream_target(med: dict, repos: tuple[str, ...]) -> list[str]:
    """Targets rows for the capped builds, per repo: --stream's speed against the disk
    path's, and the disk each used (the model's size once; about nothing streaming).
    ``med`` maps (repo, contender) to the median run."""
    rows = []
    for repo in repos:
        disk, streamed = med.get((repo, BUILD)), med.get((repo, STREAM_BUILD))
        speed = disk.wall / streamed.wall if disk and streamed else 0.0
        rows.append(
            f"| --stream >= 0.8 x the disk path's speed on {repo} (capped) | {speed:.2f} x | "
            f"{_yes(speed >= 0.8)} |"
        )
        if disk and streamed:
            used, size = disk.peak_disk / disk.size, streamed.peak_disk / MB
            rows.append(
                f"| no extra disk on {repo}: disk path <= 1.05 x the model, --stream <= 1 MB "
                f"| {used:.2f} x, {size:.1f} MB | {_yes(used <= 1.05 and size <= 1)} |"
            )
    return rows


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"
