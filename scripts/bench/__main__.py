"""Entry point: ``python3 -m scripts.bench [options]`` from the repository root."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from .charts import write_charts
from .common import CONTENDERS, GIB, MB, NATIVE
from .hub_fetch import hub_section, run_hub_section, splice_section
from .model import Model
from .native_profile import ProfileRow, run_profile
from .options import Options, ensure_python_packages, parse_args
from .parts import HEADING as PARTS_HEADING
from .report import machine_info, write_markdown
from .results import summarize
from .runner import Bench
from .sections import current_section, replace_section
from .verify_deep import HEADING as VERIFY_HEADING


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    for tool in ("docker-registry", "curl"):
        if not shutil.which(tool):
            print(f"bench: {tool} is required", file=sys.stderr)
            return 2
    problems = ensure_python_packages(("matplotlib", "olot"), opts.install)
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="modelcar-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(opts, workdir.resolve())
    try:
        if opts.hub_only:
            hub_phase(opts, workdir.resolve())
            print(f"bench: wrote 'From the Hub' into {opts.out}", file=sys.stderr)
            return 0
        model, profile = run_phases(bench, opts)
        hub_lines = hub_phase(opts, workdir.resolve(), write=False)
    finally:
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    main_runs = [r for r in bench.results if r.label.startswith("round")]
    summaries = {n: summarize(n, [r for r in main_runs if r.contender == n]) for n in CONTENDERS}
    charts: list[Path] = []
    if "matplotlib" in problems:
        bench.notes.append(f"No charts: matplotlib {problems['matplotlib']}.")
    else:
        charts = write_charts(opts, summaries, bench.results, model.total_bytes)
    bench.notes.extend(machine_notes(bench, opts))
    minutes = bench.elapsed_min()
    # measured on their own (verify_deep.py, parts.py): kept as they are
    verify_lines = current_section(opts.out, VERIFY_HEADING)
    parts_lines = current_section(opts.out, PARTS_HEADING)
    write_markdown(
        opts, machine_info(), model, summaries, bench.results, profile, charts, bench.notes,
        minutes,
    )  # fmt: skip
    splice_section(opts.out, hub_lines)
    for lines in (verify_lines, parts_lines):
        if lines:
            replace_section(opts.out, lines[0], lines)
    print(f"bench: wrote {opts.out} in {minutes:.1f} min", file=sys.stderr)
    return 0


def hub_phase(opts: Options, workdir: Path, write: bool = True) -> list[str]:
    """The "From the Hub" section (Hub -> workspace alone), spliced into the report."""
    size, cap = int(opts.hub_gib * GIB), opts.hub_cap_mbs * MB
    runs, overlap = run_hub_section(workdir, size, cap, opts.hub_rounds, opts.quick)
    lines = hub_section(runs, overlap, size, cap, opts.hub_rounds)
    if write:
        splice_section(opts.out, lines)
    return lines


def run_phases(bench: Bench, opts: Options) -> tuple[Model, list[ProfileRow]]:
    """Every measured phase, in order. The extra phases (re-push, profile, scaling) are
    all about native, so they run only when native is among the contenders."""
    profile: list[ProfileRow] = []
    model = bench.model(opts.size_gib)
    bench.main_rounds(model)
    if NATIVE in opts.contenders:
        bench.repush(model)
        profile = run_profile(bench, model)
        bench.scaling(model)
    return model, profile


def machine_notes(bench: Bench, opts: Options) -> list[str]:
    """Caveats for the report: a shared machine or a single round makes numbers noisier."""
    notes = []
    if bench.waited > 5:
        notes.append(
            f"The machine was shared: {bench.waited:.0f} s were spent waiting for other work "
            "to go idle before runs (`--quiet-wait`)."
        )
    busy = [r for r in bench.results if r.foreign_cpu > 1.0]
    if busy:
        notes.append(
            f"{len(busy)} of {len(bench.results)} runs shared the machine with other work "
            f"(> 1 CPU-s of other processes, up to {max(r.foreign_cpu for r in busy):.1f} s): "
            "see `other CPU s` in the per-run table."
        )
    if opts.rounds < 3:
        notes.append(f"Only {opts.rounds} round(s): medians are single runs.")
    return notes


if __name__ == "__main__":
    sys.exit(main())
