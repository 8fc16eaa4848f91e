"""One model built by N parts, each its own process as each would be its own pod
(README "Very large models"):

    python3 -m scripts.bench.parts --out BENCHMARKS.md

The Hub imitation (a child process) serves one sharded repo behind a per-connection rate
cap, as the Hub's CDN caps one connection. A pod's own NIC is imitated by each part's own
``--connections``: N processes with C connections each draw N x C x cap, where one
process draws C x cap. For each N (default 1, 2 and 4), into a fresh loopback registry:
the N ``modelcar build --stream --part K/N`` at once, then ``modelcar assemble --parts
N``; next to them the plain one-pod ``modelcar build --stream`` with the same
connections. Every assembled image must have the one-pod build's digest.

Writes (or replaces) the "## Parts" section of ``--out``; ``python3 -m scripts.bench``
keeps it when it rewrites the file. The arithmetic for N pods of a 700 GB model (each pod
its own NIC and cores) is written beside the table."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .common import MB, MIB, REPO_ROOT, cpu_model
from .sections import replace_section
from .services import Registry, stop_process

HEADING = "## Parts: one model, N pods"
REPO = "bench/parts"
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json"
# The arithmetic of the section (issue #22): fetch costs about 5 CPU-seconds per GB, so a
# 2-core pod moves about 300 MB/s (hashing and pushing included); a 700 GB model.
BIG_MODEL_GB = 700
POD_MBS = 300


@dataclass
class Run:
    n: int  # parts; 0 = the plain one-pod build
    wall: float  # from the first start to the image's last step (assemble, or the build)
    parts_wall: float = 0.0  # the slowest part
    assemble_wall: float = 0.0
    digest: str = ""
    cpu: float = 0.0  # every process of the run (children's CPU, rusage)
    part_walls: list[float] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m scripts.bench.parts")
    p.add_argument("--size-mib", type=float, default=256, help="the repo's size")
    p.add_argument("--shards", type=int, default=8, help="safetensors shards (one layer each)")
    p.add_argument("--cap-mbs", type=float, default=4.0, help="Hub per-connection cap, MB/s")
    p.add_argument("--connections", type=int, default=2, help="each part's --connections")
    p.add_argument("--parts", default="1,2,4", help="the N to measure")
    p.add_argument("--rounds", type=int, default=3, help="medians of this many")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    p.add_argument("--serve-hub", help=argparse.SUPPRESS)  # internal: the Hub child
    a = p.parse_args(argv)
    if a.serve_hub:
        _serve_hub(a.serve_hub)
        return 0
    ns = [int(n) for n in a.parts.split(",")]
    size = int(a.size_mib * MIB)
    workdir = Path(tempfile.mkdtemp(prefix="modelcar-bench-parts-"))
    load = os.getloadavg()
    hub = _HubChild(json.dumps({"size": size, "shards": a.shards, "cap": a.cap_mbs * MB}))
    runs: list[Run] = []
    try:
        for r in range(a.rounds):
            order = [0, *ns]
            order = order[r % len(order) :] + order[: r % len(order)]  # no N always first
            for n in order:
                run = _one(workdir / f"{r}-{n}", hub.endpoint, n, a.connections, threshold(a))
                runs.append(run)
                label = n or "one pod"
                print(f"bench parts: round {r} N={label}: {run.wall:.2f} s", file=sys.stderr)
    finally:
        hub.stop()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    lines = section(runs, a, size, load, os.getloadavg())
    replace_section(a.out, HEADING, lines)
    print("\n".join(lines))
    return 0


def threshold(a: argparse.Namespace) -> int:
    """Half a shard: every shard a layer of its own, as a real model's multi-GB shards are
    at the default 64 MiB (a small repo's shards would all share one layer, one part)."""
    return max(1, int(a.size_mib * MIB) // a.shards // 2)


def _one(run_dir: Path, endpoint: str, n: int, connections: int, layer_threshold: int) -> Run:
    """One build of the repo into a fresh registry: N parts then assemble, or (n = 0) the
    plain one-pod build."""
    registry = Registry.start(run_dir / "registry")
    try:
        image = f"{registry.host}/{REPO}:v1"
        env = {**os.environ, "HF_ENDPOINT": endpoint, "PYTHONPATH": str(REPO_ROOT)}
        env.pop("SOURCE_DATE_EPOCH", None)
        common = ["--image", image, "--engine", "native", "--base-image", "scratch",
                  "--no-tls-verify", "--stream", "--connections", str(connections),
                  "--no-preflight", "--layer-threshold", str(layer_threshold)]  # fmt: skip
        t0 = time.monotonic()
        if n == 0:
            cmds = [_build(run_dir / "ws", common)]
        else:
            cmds = [_build(run_dir / f"ws-{k}", [*common, "--part", f"{k}/{n}"])
                    for k in range(1, n + 1)]  # fmt: skip
        walls, cpu, logs = _all_at_once(cmds, env, t0)
        for log in logs if n else ():  # each part must have had a share, or N is not N
            share = re.search(r"part \d+/\d+: (\d+) of the model's (\d+) layers", log)
            if not share or int(share.group(1)) == 0:
                raise SystemExit(f"bench parts: a part had no layer to build:\n{log[-1500:]}")
        parts_wall = time.monotonic() - t0
        assemble_wall = 0.0
        if n:
            t1 = time.monotonic()
            more, c, _ = _all_at_once(
                [_modelcar("assemble", "--image", image, "--parts", str(n), "--wait", "60",
                           "--no-tls-verify")], env, t1,
            )  # fmt: skip
            assemble_wall, cpu = more[0], cpu + c
        wall = time.monotonic() - t0
        return Run(n, wall, parts_wall, assemble_wall, _digest(registry.host), cpu, walls)
    finally:
        registry.stop()


def _modelcar(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelcar_builder", *args]


def _build(ws: Path, args: list[str]) -> list[str]:
    return _modelcar("build", f"hf://{REPO}@main", "--workspace", str(ws), *args)


def _all_at_once(
    cmds: list[list[str]], env: dict[str, str], t0: float
) -> tuple[list[float], float, list[str]]:
    """Start every command, wait for each; each one's wall time from ``t0``, their CPU
    seconds together and each one's stderr (through a file: a pipe read only at the end
    could fill and stall it). A failure stops the benchmark: a number of a broken build
    is no number."""
    # Closed below once read, after every process has ended.
    errs = [tempfile.TemporaryFile() for _ in cmds]  # noqa: SIM115
    procs = [
        subprocess.Popen(c, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=e,
                         start_new_session=True)
        for c, e in zip(cmds, errs, strict=True)
    ]  # fmt: skip
    walls, cpu = [0.0] * len(procs), 0.0
    pending = dict(enumerate(procs))
    while pending:  # each reaped as it ends (by its own pid: the registry is a child too)
        for i, proc in list(pending.items()):
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            walls[i] = time.monotonic() - t0
            cpu += usage.ru_utime + usage.ru_stime
            proc.returncode = os.waitstatus_to_exitcode(status)
            del pending[i]
        time.sleep(0.02)
    logs = []
    for p, c, e in zip(procs, cmds, errs, strict=True):
        e.seek(0)
        err = e.read().decode(errors="replace")
        e.close()
        logs.append(err)
        if p.returncode != 0:
            for q in procs:
                stop_process(q)
            what = " ".join(c[3:5])
            raise SystemExit(f"bench parts: {what} exited {p.returncode}:\n{err[-2000:]}")
    return walls, cpu, logs


def _digest(host: str) -> str:
    req = urllib.request.Request(f"http://{host}/v2/{REPO}/manifests/v1", method="HEAD",
                                 headers={"Accept": MANIFEST_TYPES})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.headers["Docker-Content-Digest"]


class _HubChild:
    """The Hub imitation in a child process (its CPU off the parts' process trees):
    ``python3 -m scripts.bench.parts --serve-hub SPEC``; it prints its endpoint, then
    serves until its stdin closes."""

    def __init__(self, spec: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.bench.parts", "--serve-hub", spec],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, start_new_session=True,
        )  # fmt: skip
        line = self.proc.stdout.readline() if self.proc.stdout else b""
        if not line:
            stop_process(self.proc)
            raise RuntimeError("the Hub imitation did not start")
        self.endpoint: str = json.loads(line)["endpoint"]

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        stop_process(self.proc)


def repo_files(size: int, shards: int) -> dict[str, int]:
    """path -> size: ``shards`` equal safetensors shards and a config."""
    each = size // shards
    files = {f"model-{i:05d}-of-{shards:05d}.safetensors": each for i in range(1, shards + 1)}
    return {**files, "config.json": 2_000}


def _serve_hub(spec: str) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from tests.support.hubsim import HubSim

    params = json.loads(spec)
    hub = HubSim(connection_rate=params["cap"]).start()
    rng = random.Random(22)
    files = {p: rng.randbytes(n) for p, n in repo_files(params["size"], params["shards"]).items()}
    hub.add_repo(REPO, files)
    print(json.dumps({"endpoint": hub.endpoint}), flush=True)
    sys.stdin.read()
    hub.stop()


def section(runs: list[Run], a: argparse.Namespace, size: int, load0, load1) -> list[str]:
    ns = sorted({r.n for r in runs if r.n})
    med = {n: statistics.median(r.wall for r in runs if r.n == n) for n in [0, *ns]}
    one_pod = {r.digest for r in runs if r.n == 0}
    cap = a.cap_mbs
    total = sum(repo_files(size, a.shards).values())

    def floor(n: int) -> float:  # the repo through N x connections x cap, nothing else
        return total / MB / (n * a.connections * cap)

    out = [
        HEADING,
        "",
        f"`python3 -m scripts.bench.parts --size-mib {a.size_mib:g} --shards {a.shards} "
        f"--cap-mbs {cap:g} --connections {a.connections} --parts {a.parts} --rounds "
        f"{a.rounds}`, run on {time.strftime('%Y-%m-%d')} ({cpu_model()}, {os.cpu_count()} "
        f"cores; load "
        f"average {load0[0]:.1f} before, {load1[0]:.1f} after: the machine was shared). "
        f"A {size / MB:.0f} MB repo ({a.shards} shards, one layer each) from the Hub "
        f"imitation capped at {cap:g} MB/s per connection, into a fresh loopback registry "
        f"per run; `--layer-threshold {threshold(a)}` makes each shard a layer of its own "
        "(a real model's multi-GB shards are at the default). Each part is its own "
        "process with its own `--connections "
        f"{a.connections}` (a pod's own NIC: {a.connections} x {cap:g} = "
        f"{a.connections * cap:g} MB/s each), all started at once, `--stream`; then "
        "`modelcar assemble`. `one pod` is the plain `modelcar build --stream` with the "
        f"same connections. Medians of {a.rounds} round(s); the order of N rotates. "
        "`link floor` is the repo's bytes over N x connections x cap: no build can be "
        "faster.",
        "",
        "| N | wall s | speedup vs one pod | link floor s | slowest part s | assemble s | "
        "CPU s | one-pod digest |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in [0, *ns]:
        mine = [r for r in runs if r.n == n]
        same = "yes" if {r.digest for r in mine} == one_pod and len(one_pod) == 1 else "**no**"
        parts = statistics.median(r.parts_wall for r in mine) if n else 0.0
        asm = statistics.median(r.assemble_wall for r in mine) if n else 0.0
        cpu = statistics.median(r.cpu for r in mine)
        label = "one pod (no `--part`)" if n == 0 else str(n)
        out.append(
            f"| {label} | {med[n]:.2f} | {med[0] / med[n]:.2f} x | {floor(max(n, 1)):.2f} | "
            f"{parts:.2f} | {asm:.2f} | {cpu:.1f} | {same if n else '(itself)'} |"
        )
    ideal = ", ".join(f"{n} for N = {n}" for n in ns)
    out += [
        "",
        f"The ideal speedup is N ({ideal}) while every part has a share: N pods draw N "
        "times the connections. It falls short by the fixed costs every part pays once "
        "(Python starting, the plan, the base), the assemble step, the byte balance of "
        f"{a.shards} equal layers over N parts, and here by the {os.cpu_count()} cores "
        "the parts share (on a cluster each pod has its own).",
        "",
        f"### N pods for a {BIG_MODEL_GB} GB model",
        "",
        f"Fetch costs about 5 CPU-seconds per GB, so a 2-core pod moves about {POD_MBS} "
        f"MB/s: one pod needs {BIG_MODEL_GB} GB / {POD_MBS} MB/s = "
        f"{BIG_MODEL_GB * 1000 / POD_MBS / 60:.0f} min before anything else. N pods, each "
        f"with its own NIC and 2 cores, move {BIG_MODEL_GB} / N GB each:",
        "",
        "| N | GB per pod | minutes at 300 MB/s a pod | aggregate GB/s |",
        "|---:|---:|---:|---:|",
    ]
    for n in (1, 2, 4, 8, 16):
        each = BIG_MODEL_GB / n
        out.append(
            f"| {n} | {each:.0f} | {each * 1000 / POD_MBS / 60:.1f} | {n * POD_MBS / 1000:.1f} |"
        )
    out += [
        "",
        "That holds while the Hub's CDN, the registry and its storage take N x 300 MB/s; "
        "past that they are the bound, not the pods. A part holds whole layers (balanced by "
        "bytes), so it takes at least as long as its largest layer: more pods than layers "
        "gain nothing (DeepSeek-V3: 163 shards of about 4 GB, one layer each).",
        "",
    ]
    return out


if __name__ == "__main__":
    sys.exit(main())
