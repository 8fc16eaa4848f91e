"""BENCHMARKS.md: the machine, the tables, the targets and how it was all measured."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import GIB, MB, RAW, REPO_ROOT, STOCK_BUILDAH, STREAM, cpu_model
from .measurement import meminfo
from .model import Model
from .native_profile import ProfileRow
from .options import Options
from .results import RunResult, Summary, linear_fit, targets

METHOD = [
    "wall: from the first command of a contender to its verified image (or its last blob "
    "checked, for the raw limit); model generation and registry start/stop are outside it.",
    "peak RSS: the sum of VmRSS over the whole process tree under the benchmark (registry "
    "and Hub imitation excluded), sampled from /proc every 0.1 s.",
    "peak extra disk: growth over the run's start of the run's scratch dir (workspace, "
    "TMPDIR, buildah --root/--runroot, OCI layout) and of /var/tmp, sampled every 0.1 s; "
    "hard links to the model files do not count. The registry's storage is reported apart.",
    "CPU s: user + system of every command the contender ran (wait4 rusage, children "
    "included); registry CPU s from /proc/PID/stat of the registry over the run.",
    "`native` / `modelcar buildah`: `python -m modelcar_builder build DIR --engine E --image "
    "HOST/REPO:TAG --no-tls-verify --base-image scratch --workspace W --report R`.",
    "`native --stream`: the same from `hf://bench/model@main` served by "
    "`tests/support/hubsim.py` in a child process (it keeps files in memory, so it runs only "
    "at sizes ≤ `--stream-max-gib` and ≤ 1/4 of available memory); the Hub imitation's CPU "
    "is in the per-run table.",
    "`stock buildah`: `Containerfile` `FROM scratch` + `COPY model/ /models/`; `buildah "
    "--root R --runroot RR --storage-driver vfs bud`, then `buildah push --tls-verify=false` "
    "(default compression: gzip), TMPDIR in the run dir, as the seed pipeline did "
    "(vfs is the OpenShift Pipelines buildah task default).",
    "`olot + skopeo`: `umoci init` + `umoci new` + one empty layer (olot refuses a base "
    "without layers), `olot --root-dir MODEL "
    "LAYOUT FILES…` (one tar layer per file, written into the layout), `skopeo copy "
    "oci:LAYOUT:latest docker://…` (which gzips uncompressed layers for a docker:// "
    "destination).",
    "`raw curl -T`: `openssl dgst -sha256` of all files (read + hash; coreutils `sha256sum` "
    "is ~4× slower here, see the profile), then per file `curl -X POST "
    "/v2/<repo>/blobs/uploads/` and `curl -T FILE` to `<location>&digest=sha256:…` "
    "(`--raw-jobs` at a time, default 2 like native's `--jobs`), then HEAD of every blob.",
    "re-push: `native` to the same repo and tag right after a first push, with the same "
    "workspace and with a fresh one; bytes from the report's `bytes_uploaded`.",
    "The profile runs each stage alone in the benchmark process on the same files.",
    "other CPU s (per run): busy CPU of the whole machine (/proc/stat) minus the contender's, "
    "the registry's, the Hub imitation's and the benchmark's own: how much something else "
    "running on the machine competed with that run (kernel writeback counts here too).",
]


def tool_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return "not installed"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine_info() -> dict[str, str]:
    cpu = cpu_model()
    sys.path.insert(0, str(REPO_ROOT))
    from modelcar_builder import __version__

    olot = "not installed"
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        olot = version("olot")
    disk = shutil.disk_usage(tempfile.gettempdir())
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{meminfo()['MemTotal'] / GIB:.1f} GiB",
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "modelcar": __version__,
        "buildah": tool_version(["buildah", "--version"]),
        "skopeo": tool_version(["skopeo", "--version"]),
        "docker-registry": tool_version(["docker-registry", "--version"]),
        "umoci": tool_version(["umoci", "--version"]),
        "olot": olot,
        "curl": tool_version(["curl", "--version"]).split(" (")[0],
        "disk": f"{disk.free / GIB:.0f} GiB free of {disk.total / GIB:.0f} GiB (one disk)",
    }


def _num(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def results_table(summaries: dict[str, Summary], model_bytes: int) -> list[str]:
    raw, stock = summaries[RAW], summaries[STOCK_BUILDAH]
    lines = [
        "| contender | status | wall s (median) | wall s (min–max) | MB/s | × raw limit "
        "| × stock buildah | peak RSS MB | peak extra disk MB | disk × model | CPU s "
        "| registry CPU s | registry storage MB |",
        "|---|---|" + "---:|" * 11,
    ]
    for s in summaries.values():
        if not s.ok:
            lines.append(f"| {s.name} | {s.status}: {s.note} |" + " — |" * 11)
            continue
        vs_raw = _num(raw.wall / s.wall, 2) if raw.ok else "—"
        vs_stock = _num(stock.wall / s.wall, 2) if stock.ok else "—"
        status = "ok" + (f" ({s.note})" if s.note else "")
        lines.append(
            f"| {s.name} | {status} | {_num(s.wall)} | {_num(s.wall_min)}–{_num(s.wall_max)} "
            f"| {s.mb_s:.0f} | {vs_raw} | {vs_stock} | {s.peak_rss / MB:.0f} "
            f"| {s.peak_disk / MB:.1f} | {s.peak_disk / model_bytes:.2f} | {_num(s.cpu)} "
            f"| {_num(s.registry_cpu)} | {s.registry_bytes / MB:.0f} |"
        )
    return lines


def runs_table(results: list[RunResult]) -> list[str]:
    lines = [
        "| contender | size GiB | run | status | wall s | MB/s | peak RSS MB | peak disk MB "
        "| CPU s | registry CPU s | other CPU s | bytes uploaded | parts |",
        "|---|---:|---|---|" + "---:|" * 8 + "---|",
    ]
    for r in results:
        shown = ("build_push", "layers", "push", "verify")
        parts = {**{k: v for k, v in r.timings.items() if k in shown}, **r.marks}
        detail = ", ".join(f"{k} {v:.1f} s" for k, v in parts.items())
        if r.hub_cpu and r.contender == STREAM:
            detail += f", Hub imitation CPU {r.hub_cpu:.1f} s"
        if not r.ok:
            lines.append(f"| {r.contender} | {r.size_bytes / GIB:.3g} | {r.label} | {r.status} |"
                         + " — |" * 8 + f" {r.note} |")  # fmt: skip
            continue
        up = "—" if r.bytes_uploaded is None else str(r.bytes_uploaded)
        lines.append(
            f"| {r.contender} | {r.size_bytes / GIB:.3g} | {r.label} | {r.status} | {_num(r.wall)} "
            f"| {r.mb_s:.0f} | {r.peak_rss / MB:.0f} | {r.peak_disk / MB:.1f} | {_num(r.cpu)} "
            f"| {_num(r.registry_cpu)} | {_num(r.foreign_cpu)} | {up} | {detail} |"
        )
    return lines


def write_markdown(
    opts: Options,
    info: dict[str, str],
    model: Model,
    summaries: dict[str, Summary],
    results: list[RunResult],
    profile: list[ProfileRow],
    charts: list[Path],
    notes: list[str],
    minutes: float,
) -> None:
    size = model.total_bytes
    out = [
        *header_section(opts, info, minutes),
        *end_to_end_section(opts, model, summaries),
    ]
    if charts:
        out += [f"![{c.stem}]({os.path.relpath(c, opts.out.parent)})" for c in charts] + [""]
    out += targets_section(summaries, results, size)
    out += scaling_section(results)
    out += profile_section(profile, size)
    out += ["", "## Every run", "", *runs_table(results), "", "## How it is measured", ""]
    out += [f"- {line}" for line in METHOD + notes]
    # Fixed text: the buildah engine's design measurements (this script does not re-run them).
    out += ["", (REPO_ROOT / "benchmarks" / "buildah-engine.md").read_text().rstrip("\n")]
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text("\n".join(out) + "\n")


def header_section(opts: Options, info: dict[str, str], minutes: float) -> list[str]:
    """Title, the command that re-runs it (so the report is reproducible) and the machine."""
    cmd = shlex.join(["python3", "-m", "scripts.bench", *opts.argv])
    return [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench/`; do not edit by hand. Re-run with:",
        "",
        f"    {cmd}",
        "",
        f"Run on {datetime.date.today().isoformat()}, {minutes:.1f} min of machine time.",
        "",
        "## Machine",
        "",
        "| " + " | ".join(info) + " |",
        "|" + "---|" * len(info),
        "| " + " | ".join(info.values()) + " |",
        "",
    ]


def end_to_end_section(opts: Options, model: Model, summaries: dict[str, Summary]) -> list[str]:
    size = model.total_bytes
    return [
        f"## End to end: {size / GIB:.3g} GiB model ({size / MB:.0f} MB), "
        f"{opts.rounds} round(s), medians",
        "",
        f"Model: {len(model.files)} files — {sum(f.endswith('.safetensors') for f in model.files)} "
        "safetensors shards of random (incompressible) bytes plus config/tokenizer files — "
        "read from a local directory (warm page cache). Every contender goes from the source "
        "to a pushed image whose tag is read back and whose blobs are checked (the raw limit "
        "pushes blobs only, checked by HEAD). Each run gets a fresh loopback `docker-registry` "
        "(storage on the same disk), so nothing is ever skipped; contenders alternate, the "
        "order rotating each round. `× raw limit` and `× stock buildah` are speed ratios "
        "(their wall time / this one's): > 1 is faster. Peaks are the worst round.",
        "",
        *results_table(summaries, size),
        "",
    ]


def targets_section(
    summaries: dict[str, Summary], results: list[RunResult], size: int
) -> list[str]:
    out = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in targets(summaries, results, size):
        met = {True: "yes", False: "**no**", None: "n/a"}[t.met]
        out.append(f"| {t.what} | {t.measured} | {met} |")
    return out


def scaling_section(results: list[RunResult]) -> list[str]:
    """native at each --scaling size, with a straight-line fit; empty if none ran."""
    scaling = [r for r in results if r.label == "scaling"]
    if not scaling:
        return []
    out = ["", "## Scaling of `native` (one run per size)", "",
           "| size GiB | wall s | MB/s | peak RSS MB | peak extra disk MB | CPU s "
           "| other CPU s |",
           "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(scaling, key=lambda r: r.size_bytes):
        out.append(
            f"| {r.size_bytes / GIB:.3g} | {_num(r.wall)} | {r.mb_s:.0f} "
            f"| {r.peak_rss / MB:.0f} | {r.peak_disk / MB:.1f} | {_num(r.cpu)} "
            f"| {_num(r.foreign_cpu)} |"
        )
    fit = linear_fit([r for r in scaling if r.ok])
    if fit:
        slope, intercept = fit
        out += ["", f"Least-squares line: wall ≈ {intercept:.2f} s + {slope:.2f} s/GiB "
                    f"({GIB / MB / slope:.0f} MB/s marginal)."]  # fmt: skip
    return out


def profile_section(profile: list[ProfileRow], size: int) -> list[str]:
    if not profile:
        return []
    out = ["", f"## Where `native`'s time goes ({size / GIB:.3g} GiB, each part alone)", "",
           "| part | s | MB/s | note |", "|---|---:|---:|---|"]  # fmt: skip
    for p in profile:
        rate = f"{p.mb_s:.0f}" if p.size_bytes else "—"
        out.append(f"| {p.what} | {p.seconds:.2f} | {rate} | {p.note} |")
    return out
