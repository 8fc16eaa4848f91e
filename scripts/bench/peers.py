"""Peers side by side, from the Hub to a registry: ``python3 -m scripts.bench.peers``.

One sharded repo (4 x 512 MiB) from the uncapped Hub imitation, and one (4 x 256 MiB)
behind a per-connection cap (40 MB/s); every contender builds the model from the Hub and
pushes it to a loopback docker-registry, a fresh one per build (so every byte is really
sent), each build to a repository of its own. Medians of ``--rounds`` fresh builds; the
order of the contenders turns every round. Contenders:

- ``modelcar build --engine native`` (the disk path) and ``modelcar build --stream``;
- ``oci-modelcar push --workers 4`` (PyPI), installed into a venv of its own, never a
  project dependency (``--peers-venv``; made and filled with pip when missing);
- ``snapshot_download`` + olot + skopeo: huggingface_hub's download (xet disabled), olot's
  layers on an empty umoci layout, skopeo copy to the registry.

Ratios are against the disk path of the same rounds, so a shared machine moves them less
than the times; ``--repeat`` measures again that many times (the table gives medians), and
the load average before, between and after each measurement is written beside them.
The table is spliced into --out under "### Peers side by side" (in "## From the Hub").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from .common import MB, MIB, REPO_ROOT
from .hub_build import build_cmd, with_registry
from .hub_fetch import SNAPSHOT_CODE, measure
from .hub_runs import HubRun
from .services import HubServer, Registry

REPO = "bench/peers"
DISK = "modelcar build --engine native"
STREAM = "modelcar build --stream"
OCI_MODELCAR = "oci-modelcar push --workers 4"
SNAPSHOT_OLOT = "snapshot_download + olot + skopeo"
CONTENDERS = (DISK, STREAM, OCI_MODELCAR, SNAPSHOT_OLOT)
OCI_MODELCAR_VERSION = "1.3.0"
HEADING = "### Peers side by side"


def peers_hub(shard: int, cap: float) -> HubServer:
    """``REPO`` of 4 shards of ``shard`` bytes (and a config), behind ``cap`` per connection."""
    files = {f"model-{i:05d}-of-00004.safetensors": shard for i in range(1, 5)}
    files["config.json"] = 2_000
    spec = {"size": 0, "cap": cap, "repos": {REPO: files}}
    return HubServer("--serve-hub-repos", json.dumps(spec))


def ensure_venv(venv: Path) -> Path:
    """The peers' own venv, with oci-modelcar pinned: never the project's environment."""
    exe = venv / "bin" / "oci-modelcar"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, f"oci-modelcar=={OCI_MODELCAR_VERSION}"], check=True)
    return exe


def command(name: str, hub: HubServer, reg: Registry, run_dir: Path, target: str,
            oci_modelcar: Path) -> list[str]:  # fmt: skip
    """The command line of one contender, pushing ``REPO`` to ``reg`` as ``target``."""
    if name in (DISK, STREAM):
        cmd = build_cmd(REPO, run_dir / "ws", reg, name == STREAM)
        i = cmd.index("--image")
        cmd[i + 1] = f"{reg.host}/{target}:latest"
        return cmd
    if name == OCI_MODELCAR:
        return [
            str(oci_modelcar), "push", "--hf-repo", REPO, "--hf-endpoint", hub.endpoint,
            "--registry", reg.host, "--target-repo", target, "--target-tag", "latest",
            "--workers", "4", "--spool-dir", str(run_dir / "ws"), "--no-reuse-records",
            "--quiet",
        ]  # fmt: skip
    return [sys.executable, "-m", "scripts.bench.peers", "--olot-run", str(run_dir / "ws"),
            f"{reg.host}/{target}:latest"]  # fmt: skip


def olot_run(work: Path, image: str) -> None:
    """Child side of ``snapshot_download + olot + skopeo`` (the Konflux and
    modelcar-maker way): download, lay the files as olot layers on an empty layout
    (olot refuses a manifest with no layers: one empty layer), copy to the registry."""
    model, layout = work / "model", work / "layout"
    py = sys.executable
    subprocess.run([py, "-c", SNAPSHOT_CODE, REPO, str(model)], check=True)
    empty = work / "empty.tar"
    empty.write_bytes(b"\0" * 1024)
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:latest"], check=True)
    subprocess.run(["umoci", "raw", "add-layer", "--image", f"{layout}:latest", str(empty)],
                   check=True)  # fmt: skip
    files = sorted(str(p) for p in model.rglob("*") if p.is_file() and ".cache" not in p.parts)
    olot = "import sys; from olot.cli import cli; sys.exit(cli())"
    subprocess.run([py, "-c", olot, "--root-dir", str(model), str(layout), *files], check=True)
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest",
                    f"docker://{image}"], check=True)  # fmt: skip


def run_section(workdir: Path, shard: int, cap: float, rounds: int, venv: Path,
                names: tuple[str, ...]) -> list[HubRun]:  # fmt: skip
    exe = ensure_venv(venv) if OCI_MODELCAR in names else venv
    total = 4 * shard + 2_000
    hub = peers_hub(shard, cap)
    runs: list[HubRun] = []
    label = f"{'capped' if cap else 'uncapped'}"
    try:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                slug = name.split()[0].replace("_", "-") + ("-stream" if name == STREAM else "")
                run_dir = workdir / f"{label}-{r}-{slug}"
                target = f"peers/{label}-{slug}-{r}"

                def pushed(reg: Registry, name: str = name, run_dir: Path = run_dir,
                           target: str = target) -> HubRun:  # fmt: skip
                    cmd = command(name, hub, reg, run_dir, target, exe)
                    return measure(hub, REPO, name, total, run_dir, False, cmd, run_dir / "ws")

                run = with_registry(run_dir, pushed)
                runs.append(run)
                print(f"peers: {label:8s} {name:36s} {run.status} {run.wall:6.1f} s "
                      f"rss {run.peak_rss / MB:4.0f} MB", file=sys.stderr, flush=True)  # fmt: skip
                subprocess.run(["rm", "-rf", str(run_dir)], check=False)
    finally:
        hub.stop()
    return runs


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _median(runs: list[HubRun], name: str) -> float | None:
    ok = [r.wall for r in runs if r.contender == name and r.status == "ok"]
    return statistics.median(ok) if ok else None


Measured = tuple[list[HubRun], list[HubRun], list[str]]  # uncapped, capped, load averages


def _runs(m: Measured, capped: int) -> list[HubRun]:
    return m[1] if capped else m[0]


def section(measured: list[Measured],
            shard: tuple[int, int], cap: float, rounds: int,
            names: tuple[str, ...]) -> list[str]:  # fmt: skip
    """The Markdown: per contender, the median over the measurements of each one's
    median wall time, and of its ratio to the disk path measured in the same rounds."""

    def cell(k: int, name: str) -> str:
        walls: list[float] = []
        ratios: list[float] = []
        bad: list[str] = []
        for m in measured:
            wall, base = _median(_runs(m, k), name), _median(_runs(m, k), DISK)
            if wall is None:
                bad += [r.status for r in _runs(m, k) if r.contender == name]
                continue
            walls.append(wall)
            if base:
                ratios.append(wall / base)
        if not walls:
            return bad[0] if bad else "not run"
        ratio = f" ({statistics.median(ratios):.2f}x)" if ratios else ""
        return f"{statistics.median(walls):.1f} s{ratio}"

    n = len(measured)
    out = [
        HEADING,
        "",
        f"`python3 -m scripts.bench.peers --rounds {rounds} --repeat {n}`: Hub imitation -> "
        f"loopback registry, end to end. Uncapped: 4 x {shard[0] // MIB} MiB; capped: 4 x "
        f"{shard[1] // MIB} MiB at {cap / MB:.0f} MB/s per connection. A measurement is the "
        f"median wall time of {rounds} fresh builds of each contender (fresh workspace, fresh "
        "registry, a repository of its own; the order turns every round); the table gives "
        f"the median of {n} such measurement(s), and in brackets the median of the ratios to "
        "the disk path measured in the same rounds. The load average of each measurement "
        f"({os.cpu_count()} cores) is below: other work on the machine moves the times more "
        "than the ratios.",
        "",
        f"| contender | uncapped | {cap / MB:.0f} MB/s per connection |",
        "|---|---|---|",
    ]
    for name in names:
        shown = f"`{name}`" + (f" ({OCI_MODELCAR_VERSION})" if name == OCI_MODELCAR else "")
        out.append(f"| {shown} | {cell(0, name)} | {cell(1, name)} |")
    out.append("")
    if DISK not in names or STREAM not in names:
        return out
    per_run: list[str] = []
    medians: dict[int, list[float]] = {0: [], 1: []}
    for i, (uncapped, capped, loads) in enumerate(measured, 1):
        ratios = []
        for k, runs in ((0, uncapped), (1, capped)):
            d, st = _median(runs, DISK), _median(runs, STREAM)
            ratio = st / d if d and st else 0.0
            medians[k].append(ratio)
            ratios.append(f"{ratio:.2f} x")
        per_run.append(f"- measurement {i}: --stream / disk path {ratios[0]} uncapped, "
                       f"{ratios[1]} capped; load average (1, 5, 15 min) before, between "
                       f"and after: {'; '.join(loads)}")  # fmt: skip
    rows = []
    for k, label in ((0, "uncapped"), (1, "capped")):
        ratio = statistics.median(medians[k]) if medians[k] else 0.0
        met = "yes" if 0 < ratio <= 1.11 else "**no**"
        rows.append(f"| --stream <= 1.11 x the disk path's wall, {label} | {ratio:.2f} x | {met} |")
    return [*out, "| target | measured | met |", "|---|---|---|", *rows, "", *per_run, ""]


def splice(path: Path, lines: list[str]) -> None:
    """Put the section at the end of "## From the Hub" (in place of an older one)."""
    text = path.read_text() if path.exists() else ""
    body = "\n".join(lines).rstrip("\n") + "\n"
    head, sep, rest = text.partition(HEADING)
    if sep:
        after = rest.find("\n## ")
        after3 = rest.find("\n### ")
        ends = [a for a in (after, after3) if a >= 0]
        cut = min(ends) if ends else -1
        text = head + body + ("\n" + rest[cut + 1 :] if cut >= 0 else "")
    else:
        hub = text.find("## From the Hub")
        nxt = text.find("\n## ", hub + 1) if hub >= 0 else -1
        if nxt >= 0:
            text = text[: nxt + 1] + body + "\n" + text[nxt + 1 :]
        else:
            text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m scripts.bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="fresh builds per measurement")
    p.add_argument("--repeat", type=int, default=1, help="measurements, each of --rounds")
    p.add_argument("--shard-mib", type=int, default=512, help="uncapped shard size")
    p.add_argument("--capped-shard-mib", type=int, default=256)
    p.add_argument("--cap-mbs", type=float, default=40.0, help="MB/s per connection")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated")
    p.add_argument("--peers-venv", type=Path, default=Path("/tmp/modelcar-bench-peers-venv"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/modelcar-bench-peers"))
    p.add_argument("--out", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    p.add_argument("--no-splice", action="store_true", help="print the table only")
    p.add_argument("--olot-run", nargs=2, help=argparse.SUPPRESS)  # internal: one olot build
    a = p.parse_args(argv)
    if a.olot_run:
        olot_run(Path(a.olot_run[0]), a.olot_run[1])
        return 0
    names = tuple(n for n in CONTENDERS if n in a.contenders.split(","))
    shard, capped_shard, cap = a.shard_mib * MIB, a.capped_shard_mib * MIB, a.cap_mbs * MB
    measured: list[Measured] = []
    for _ in range(max(1, a.repeat)):
        loads = [load()]
        uncapped = run_section(a.workdir, shard, 0, a.rounds, a.peers_venv, names)
        loads.append(load())
        capped = run_section(a.workdir, capped_shard, cap, a.rounds, a.peers_venv, names)
        loads.append(load())
        measured.append((uncapped, capped, loads))
    lines = section(measured, (shard, capped_shard), cap, a.rounds, names)
    print("\n".join(lines))
    if not a.no_splice:
        splice(a.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
