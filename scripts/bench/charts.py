"""The report's PNG charts (matplotlib, imported only when charts are made)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import GIB, MB
from .options import Options
from .results import RunResult, Summary, linear_fit


def write_charts(
    opts: Options, summaries: dict[str, Summary], results: list[RunResult], model_bytes: int
) -> list[Path]:
    # Imported here: matplotlib is optional (the report says "No charts" without it), and
    # the Agg backend must be chosen before pyplot loads so no display is ever needed.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts.charts_dir.mkdir(parents=True, exist_ok=True)
    charts = []
    ok = [s for s in summaries.values() if s.ok]
    if ok:
        charts.append(throughput_chart(plt, ok, model_bytes, opts.charts_dir / "throughput.png"))
    scaling = sorted(
        (r for r in results if r.label == "scaling" and r.ok), key=lambda r: r.size_bytes
    )
    if scaling:
        charts.append(scaling_chart(plt, scaling, opts.charts_dir / "scaling.png"))
    return charts


def throughput_chart(plt: Any, ok: list[Summary], model_bytes: int, path: Path) -> Path:
    """Median end-to-end MB/s per contender that ran; native's bars green."""
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=90)
    names = [s.name for s in ok][::-1]
    speeds = [s.mb_s for s in ok][::-1]
    colors = ["tab:green" if n.startswith("native") else "tab:gray" for n in names]
    bars = ax.barh(names, speeds, color=colors)
    ax.bar_label(bars, fmt="%.0f", padding=3, fontsize=8)
    ax.set_xlabel("MB/s end to end (median)")
    ax.set_title(f"End to end, {model_bytes / GIB:.3g} GiB model")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def scaling_chart(plt: Any, scaling: list[RunResult], path: Path) -> Path:
    """native's wall time (with its linear fit) and peak RSS (against the 200 MB target)
    over model size."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3), dpi=90)
    sizes = [r.size_bytes / GIB for r in scaling]
    ax1.plot(sizes, [r.wall for r in scaling], "o-", color="tab:green", label="measured")
    fit = linear_fit(scaling)
    if fit:
        ends = [0, max(sizes)]
        ax1.plot(ends, [fit[1] + fit[0] * x for x in ends], ":", color="gray", label="linear fit")
        ax1.legend(fontsize=8)
    ax1.set_xlabel("model GiB")
    ax1.set_ylabel("wall s")
    ax1.set_title("native: time vs size")
    ax1.set_ylim(bottom=0)
    ax1.set_xlim(left=0)
    ax2.plot(sizes, [r.peak_rss / MB for r in scaling], "o-", color="tab:blue")
    ax2.axhline(200, color="tab:red", linestyle="--", linewidth=1, label="200 MB target")
    ax2.set_xlabel("model GiB")
    ax2.set_ylabel("peak RSS MB")
    ax2.set_title("native: memory vs size")
    ax2.set_ylim(0, 250)
    ax2.set_xlim(left=0)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
