"""The "from the Hub" section: Hub -> workspace alone, against the Hub imitation with a
per-connection rate cap (the real Hub's CDN serves one connection at some tens of MB/s)
and no link cap. Two repos: one large file, and 8 shards plus small files. Contenders:
``modelcar fetch`` and ``huggingface_hub.snapshot_download`` (xet disabled), next to the
arithmetic limit min(link, connections x cap); and ``modelcar build`` from the Hub, with
and without ``--stream`` (hub_build.py, which also measures the overlap uncapped)."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .common import MB, MIB, REPO_ROOT
from .hub_build import (
    BUILD,
    STREAM_BUILD,
    build_cmd,
    fetch_cmd,
    overlap_runs,
    overlap_section,
    stream_target,
    with_registry,
)
from .hub_runs import HubRun, median_run
from .measurement import Sampler, machine_busy_seconds
from .services import HubServer, Registry

ONE_FILE = "bench/one-file"
SHARDED = "bench/sharded"
FETCH = "modelcar fetch"
SNAPSHOT = "snapshot_download"
CONNECTIONS = 16  # modelcar's default --connections
SMALL_FILES = {
    "config.json": 2_000,
    "generation_config.json": 200,
    "tokenizer.json": 2 * MIB,
    "tokenizer_config.json": 50_000,
    "README.md": 5_000,
    "model.safetensors.index.json": 30_000,
}
SNAPSHOT_CODE = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], local_dir=sys.argv[2])
"""


def repo_files(repo: str, size: int) -> dict[str, int]:
    """path -> size for one bench repo of about ``size`` bytes."""
    if repo == ONE_FILE:
        return {"model.safetensors": size, "config.json": 2_000}
    shard = size // 8
    shards = {f"model-{i:05d}-of-00008.safetensors": shard for i in range(1, 9)}
    return {**shards, **SMALL_FILES}


def serve_hub_repos(spec: str) -> None:
    """Child side: a HubSim holding the repos of ``spec`` (JSON: size, cap, repos), printed
    endpoint, served until stdin closes. Bytes are random (incompressible), seeded."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.support.hubsim import HubSim

    params = json.loads(spec)
    hub = HubSim(connection_rate=params["cap"]).start()
    rng = random.Random(7)
    # "repos" (repo -> path -> size) for another layout (scripts/bench/peers.py)
    layout = params.get("repos") or {r: repo_files(r, params["size"]) for r in (ONE_FILE, SHARDED)}
    for repo, sizes in layout.items():
        hub.add_repo(repo, {path: _random(rng, n) for path, n in sizes.items()})
    print(json.dumps({"endpoint": hub.endpoint}), flush=True)
    sys.stdin.read()
    hub.stop()


def _random(rng: random.Random, n: int) -> bytes:
    block = 64 * MIB  # randbytes takes at most 256 MiB at once
    return b"".join(rng.randbytes(min(block, n - i)) for i in range(0, n, block))


def capped_hub(size: int, cap: float) -> HubServer:
    """The one-file and sharded repos behind a per-connection rate cap, in a child."""
    return HubServer("--serve-hub-repos", json.dumps({"size": size, "cap": cap}))


def run_hub_section(
    workdir: Path, size: int, cap: float, rounds: int, quick: bool
) -> tuple[list[HubRun], list[HubRun]]:
    """The capped runs (every contender on both repos), then the uncapped overlap runs."""
    runs: list[HubRun] = []
    names = [FETCH, SNAPSHOT, BUILD, STREAM_BUILD]
    hub = capped_hub(size, cap)
    try:
        for r in range(rounds):
            for repo in (ONE_FILE, SHARDED):
                total = sum(repo_files(repo, size).values())
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    slug = name.split()[-1].strip("()-")
                    run_dir = workdir / "hub" / f"{r}-{repo.split('/')[1]}-{slug}"
                    run = one_run(hub, repo, name, total, run_dir, quick)
                    runs.append(run)
                    _say(run)
                    subprocess.run(["rm", "-rf", str(run_dir)], check=False)
    finally:
        hub.stop()
    overlap: list[HubRun] = []
    hub = capped_hub(size, 0)  # no cap: the overlap is about our CPU, not the link
    total = sum(repo_files(SHARDED, size).values())
    try:
        for r in range(rounds):
            run_dir = workdir / "hub" / f"overlap-{r}"

            def timed(name: str, cmd: list[str], d: Path, ws: Path) -> HubRun:
                return measure(hub, SHARDED, name, total, d, quick, cmd, ws)

            for run in overlap_runs(timed, run_dir):
                overlap.append(run)
                _say(run)
            subprocess.run(["rm", "-rf", str(run_dir)], check=False)
    finally:
        hub.stop()
    return runs, overlap


def one_run(hub: HubServer, repo: str, name: str, total: int, run_dir: Path, quick: bool):
    if name not in (BUILD, STREAM_BUILD):
        return measure(hub, repo, name, total, run_dir, quick)

    def pushed_to(reg: Registry) -> HubRun:
        cmd = build_cmd(repo, run_dir / "ws", reg, name == STREAM_BUILD)
        return measure(hub, repo, name, total, run_dir, quick, cmd)

    return with_registry(run_dir, pushed_to)


def _say(run: HubRun) -> None:
    print(
        f"bench: hub {run.repo:16s} {run.contender:24s} {run.status} {run.wall:6.1f} s "
        f"{run.mb_s:6.0f} MB/s rss {run.peak_rss / MB:4.0f} MB",
        file=sys.stderr,
        flush=True,
    )


def measure(
    hub: HubServer, repo: str, name: str, total: int, run_dir: Path, quick: bool,
    cmd: list[str] | None = None, disk: Path | None = None,
) -> HubRun:  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    drop = ("MODELCAR_", "HF_TOKEN", "HF_HOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_ENABLE_HF_TRANSFER="0",
        HF_HOME=str(run_dir / "hf-home"),
        MODELCAR_PROGRESS_INTERVAL="3600",
    )
    if quick:
        env["MODELCAR_SEGMENT_SIZE"] = str(MIB)  # the tiny quick files still get segments
    if cmd is None and name == FETCH:
        cmd = fetch_cmd(repo, run_dir / "ws")
    elif cmd is None:
        cmd = [sys.executable, "-c", SNAPSHOT_CODE, repo, str(run_dir / "out")]
    run = HubRun(repo, name, total)
    os.sync()
    sampler = Sampler([disk or run_dir], frozenset(), {hub.proc.pid})
    sampler.start()
    busy0, hub0, t0 = machine_busy_seconds(), hub.cpu_seconds(), time.monotonic()
    with open(run_dir / "log.txt", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=run_dir)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    run.wall, run.machine_cpu = time.monotonic() - t0, machine_busy_seconds() - busy0
    run.hub_cpu = hub.cpu_seconds() - hub0
    sampler.finish()
    run.peak_rss, run.cpu = sampler.peak_rss, usage.ru_utime + usage.ru_stime
    run.peak_disk = sampler.peak_disk
    if proc.returncode != 0:
        tail = (run_dir / "log.txt").read_text(errors="replace").strip().splitlines()[-1:]
        run.status = f"failed: {tail[0] if tail else proc.returncode}"
    return run


def hub_section(
    runs: list[HubRun], overlap: list[HubRun], size: int, cap: float, rounds: int
) -> list[str]:
    """The Markdown section: a row per repo and contender (medians), the limit, targets."""
    limit = CONNECTIONS * cap / MB  # no link cap: connections x cap
    out = [
        "## From the Hub",
        "",
        "Hub -> workspace (`fetch`, `snapshot_download`) and Hub -> registry (`build`, "
        "native, fresh workspace and registry), against the Hub imitation with a "
        f"per-connection cap of {cap / MB:.0f} MB/s and no link cap (token buckets in "
        "tests/support/hubsim.py), "
        f"{rounds} round(s), medians. `modelcar fetch` uses its defaults (16 connections, "
        "segments of 8-64 MiB, sha256 and layer digest checked); `snapshot_download` is "
        "huggingface_hub's, xet disabled, default 8 workers. The limit is "
        f"min(link, connections x cap) = 16 x {cap / MB:.0f} = {limit:.0f} MB/s.",
        "",
        "| repo | contender | size MB | wall s | MB/s | x limit | peak RSS MB | peak disk MB "
        "| CPU s | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    med: dict[tuple[str, str], HubRun] = {}
    for repo in (ONE_FILE, SHARDED):
        for name in (FETCH, SNAPSHOT, BUILD, STREAM_BUILD):
            m = median_run([r for r in runs if r.repo == repo and r.contender == name])
            if isinstance(m, str):
                out.append(f"| {repo} | {name} | | | | | | | | {m} |")
                continue
            med[(repo, name)] = m
            out.append(
                f"| {repo} | {name} | {m.size / MB:.0f} | {m.wall:.2f} | {m.mb_s:.0f} | "
                f"{m.mb_s / limit:.2f} | {m.peak_rss / MB:.0f} | {m.peak_disk / MB:.0f} | "
                f"{m.cpu:.1f} | ok |"
            )
        out.append(f"| {repo} | limit | | | {limit:.0f} | 1.00 | | | | arithmetic |")
    out += ["", "| target | measured | met |", "|---|---|---|"]
    for repo in (ONE_FILE, SHARDED):
        f = med.get((repo, FETCH))
        x = f.mb_s / limit if f else 0.0
        out.append(f"| fetch >= 0.8 x limit on {repo} | {x:.2f} x | {_yes(x >= 0.8)} |")
    f, s = med.get((ONE_FILE, FETCH)), med.get((ONE_FILE, SNAPSHOT))
    speedup = s.wall / f.wall if f and s else 0.0
    out.append(
        f"| fetch >= 3 x faster than snapshot_download on {ONE_FILE} | {speedup:.1f} x | "
        f"{_yes(speedup >= 3)} |"
    )
    rss = max((m.peak_rss for (_r, n), m in med.items() if n == FETCH), default=0)
    out.append(f"| fetch peak RSS <= 200 MB with 16 connections | {rss / MB:.0f} MB | "
               f"{_yes(0 < rss <= 200 * MB)} |")  # fmt: skip
    out += stream_target(med, (ONE_FILE, SHARDED))
    sha = sha256_rate()
    out += [
        "",
        *cpu_notes(runs),
        f"- The hash pass: sha256 runs at {sha:.0f} MB/s on one core here; reading the "
        "written prefix back from the page cache costs about 0.5 CPU-s per GB (measured "
        "~2 GB/s). A file that is a layer of its own gets its layer digest from the same "
        "pass, on a second thread (a second core's sha256).",
        "",
        *overlap_section(overlap, rounds),
    ]
    return [*out, ""]


def cpu_notes(runs: list[HubRun]) -> list[str]:
    """Where `modelcar fetch`'s time goes under the cap: its CPU per GB and the cores it
    kept busy, next to the Hub imitation's CPU, on this machine's cores."""
    ok = [r for r in runs if r.contender == FETCH and r.status == "ok" and r.wall]
    if not ok:
        return []
    gb = statistics.median(r.size / 1e9 for r in ok)
    ours = statistics.median(r.cpu for r in ok) / gb
    hub = statistics.median(r.hub_cpu for r in ok) / gb
    cores = statistics.median(r.cpu / r.wall for r in ok)
    machine = statistics.median(r.machine_cpu / r.wall for r in ok)
    n = os.cpu_count() or 1
    return [
        f"- Where `fetch`'s time goes: it spends {ours:.1f} CPU-s per GB (process start "
        f"included) and kept {cores:.1f} cores busy; the Hub imitation spent {hub:.1f} "
        f"CPU-s per GB; the whole machine was {machine:.1f} of {n} cores busy. At "
        f"{ours + hub:.1f} CPU-s per GB for both ends, {n} cores move at most "
        f"{n / (ours + hub) * 1000:.0f} MB/s, whatever the link.",
    ]


def sha256_rate() -> float:
    """MB/s of one core's sha256 on this machine (64 MiB in memory, best of 3)."""
    import hashlib

    block = os.urandom(64 * MIB)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        hashlib.sha256(block).digest()
        best = max(best, len(block) / MB / (time.perf_counter() - t0))
    return best


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def splice_section(path: Path, lines: list[str]) -> None:
    """Put the section into the report at ``path``: in place of an older one, else before
    "## Every run", else at the end."""
    text = path.read_text() if path.exists() else ""
    body = "\n".join(lines).rstrip("\n") + "\n"
    head, sep, rest = text.partition("## From the Hub")
    if sep:
        after = rest.find("\n## ")
        text = head + body + (rest[after + 1 :] if after >= 0 else "")
    elif "\n## Every run" in text:
        a, b = text.split("\n## Every run", 1)
        text = a.rstrip("\n") + "\n\n" + body + "\n## Every run" + b
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + body
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
