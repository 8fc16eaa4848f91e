"""Results: one run's numbers, a contender's summary over the rounds, and the targets
they are checked against."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from .common import GIB, MB, MODELPACK, MULTIARCH, NATIVE, OUR_BUILDAH, RAW, STOCK_BUILDAH, STREAM


@dataclass
class RunResult:
    contender: str
    size_bytes: int
    label: str  # "round 2", "scaling", "re-push", ...
    status: str  # ok | not available | failed
    note: str = ""
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss: int = 0
    peak_disk: int = 0
    registry_cpu: float = 0.0
    hub_cpu: float = 0.0
    foreign_cpu: float = 0.0  # CPU used by processes that are not part of the benchmark
    registry_bytes: int = 0
    bytes_uploaded: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def mb_s(self) -> float:
        return self.size_bytes / MB / self.wall if self.wall else 0.0


@dataclass(frozen=True)
class Summary:
    """One contender at the main size: medians of time and CPU, worst case of the peaks."""

    name: str
    status: str
    note: str
    runs: int
    wall: float = 0.0
    wall_min: float = 0.0
    wall_max: float = 0.0
    mb_s: float = 0.0
    peak_rss: int = 0
    peak_disk: int = 0
    cpu: float = 0.0
    registry_cpu: float = 0.0
    registry_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def summarize(name: str, runs: list[RunResult]) -> Summary:
    good = [r for r in runs if r.ok]
    if not good:
        bad = runs[-1] if runs else None
        status = bad.status if bad else "not run"
        return Summary(name, status, bad.note if bad else "not selected (--contenders)", len(runs))
    walls = [r.wall for r in good]
    wall = statistics.median(walls)
    note = "" if len(good) == len(runs) else f"{len(runs) - len(good)} run(s) failed"
    return Summary(
        name=name,
        status="ok",
        note=note,
        runs=len(good),
        wall=wall,
        wall_min=min(walls),
        wall_max=max(walls),
        mb_s=good[0].size_bytes / MB / wall,
        peak_rss=max(r.peak_rss for r in good),
        peak_disk=max(r.peak_disk for r in good),
        cpu=statistics.median(r.cpu for r in good),
        registry_cpu=statistics.median(r.registry_cpu for r in good),
        registry_bytes=max(r.registry_bytes for r in good),
    )


@dataclass(frozen=True)
class Target:
    what: str
    measured: str
    met: bool | None  # None: could not be measured


def targets(
    summaries: dict[str, Summary], results: list[RunResult], model_bytes: int
) -> list[Target]:
    native, raw = summaries[NATIVE], summaries[RAW]
    stock, ours, stream = summaries[STOCK_BUILDAH], summaries[OUR_BUILDAH], summaries[STREAM]
    out = []

    def ratio(a: Summary, b: Summary) -> float | None:
        return b.wall / a.wall if a.ok and b.ok else None

    vs_raw, vs_stock = ratio(native, raw), ratio(native, stock)
    out.append(_target("`native` ≥ 0.8× the raw limit", vs_raw, lambda x: x >= 0.8, "{:.2f}×"))
    out.append(_target("`native` ≥ 4× stock buildah", vs_stock, lambda x: x >= 4, "{:.2f}×"))
    share = stream.peak_disk / model_bytes if stream.ok else None
    out.append(_target("`--stream` peak extra disk ≤ 1 % of the model", share,
                       lambda x: x <= 0.01, "{:.2%}"))  # fmt: skip
    native_runs = [r for r in results if r.ok and r.contender in (NATIVE, STREAM)]
    rss = max((r.peak_rss for r in native_runs), default=None)
    sizes = sorted({r.size_bytes for r in native_runs})
    where = ", ".join(f"{s / GIB:.3g}" for s in sizes)
    out.append(_target(f"peak RSS ≤ 200 MB at every size (native, stream; {where} GiB)",
                       rss / MB if rss else None, lambda x: x <= 200, "max {:.0f} MB"))  # fmt: skip
    speed = ratio(ours, stock)
    disk = ours.peak_disk / model_bytes if ours.ok else None
    measured = (
        f"{speed:.2f}× faster, disk {disk:.2f}× the model"
        if speed is not None and disk is not None
        else f"{ours.status}: {ours.note}"
    )
    met = None if speed is None or disk is None else speed >= 1.5 and disk <= 2
    out.append(Target("our `buildah` engine ≥ 1.5× stock buildah, ≤ 2× model disk", measured, met))
    again = [r for r in results if r.label.startswith("re-push") and r.ok]
    if again:
        worst = max(again, key=lambda r: (r.bytes_uploaded or 0, r.wall))
        text = ", ".join(f"{r.label.split(', ')[1]}: {r.bytes_uploaded} B in {r.wall:.1f} s"
                         for r in again)  # fmt: skip
        out.append(Target("re-push unchanged: 0 bytes, < 5 s", text,
                          (worst.bytes_uploaded == 0) and worst.wall < 5))  # fmt: skip
    else:
        out.append(Target("re-push unchanged: 0 bytes, < 5 s", "not measured", None))
    out += [_same_blobs(native, summaries[name], what) for name, what in
            ((MULTIARCH, "an index of 2 platforms"), (MODELPACK, "`--modelpack`"))]  # fmt: skip
    return out


SMALL_DOCS = 1 << 20  # allocated by manifests, configs, an index and their link files


def _same_blobs(native: Summary, other: Summary, what: str) -> Target:
    """``other`` against plain native: the registry's storage grows by documents only (0
    extra weight bytes), and its median wall time is ≤ 5 % more, or inside native's
    own min–max spread over the rounds."""
    label = f"{what}: 0 extra weight bytes, ≤ 5 % wall (or within native's spread)"
    if not (native.ok and other.ok):
        return Target(label, "not measured", None)
    extra = other.registry_bytes - native.registry_bytes
    slower = other.wall / native.wall - 1
    spread = other.wall <= native.wall_max
    text = (
        f"registry storage +{extra / 1024:.0f} KiB allocated (< 1 MiB: documents, no layer), "
        f"wall {other.wall:.2f} s vs {native.wall:.2f} s ({slower:+.1%}; native "
        f"{native.wall_min:.2f}–{native.wall_max:.2f} s, {other.runs} rounds)"
    )
    return Target(label, text, extra < SMALL_DOCS and (slower <= 0.05 or spread))


def linear_fit(runs: list[RunResult]) -> tuple[float, float] | None:
    """(seconds per GiB, intercept) of wall time over size, or None with < 2 sizes."""
    if len({r.size_bytes for r in runs}) < 2:
        return None
    slope, intercept = statistics.linear_regression(
        [r.size_bytes / GIB for r in runs], [r.wall for r in runs]
    )
    return slope, intercept


def _target(what: str, value: float | None, ok: Callable[[float], bool], fmt: str) -> Target:
    if value is None:
        return Target(what, "not measured", None)
    return Target(what, fmt.format(value), ok(value))
