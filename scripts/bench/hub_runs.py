"""One run of "From the Hub" (any contender, either repo) and the median of several, as
both halves of the section (hub_fetch: capped; hub_build: the overlap) report them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .common import MB


@dataclass
class HubRun:
    repo: str
    contender: str
    size: int
    wall: float = 0.0
    peak_rss: int = 0
    peak_disk: int = 0  # growth of the workspace (or snapshot_download's directory)
    cpu: float = 0.0
    machine_cpu: float = 0.0  # every process on the machine: ours, the Hub's, the registry's
    hub_cpu: float = 0.0  # the Hub imitation's process alone
    status: str = "ok"

    @property
    def mb_s(self) -> float:
        return self.size / MB / self.wall if self.wall else 0.0


def median_run(runs: list[HubRun]) -> HubRun | str:
    """The runs that worked as one: medians of time and CPU, peaks at their worst; or,
    when none worked, the status that says why."""
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        return runs[0].status if runs else "not run"

    def median(field: str) -> float:
        return statistics.median(getattr(r, field) for r in ok)

    return HubRun(
        ok[0].repo,
        ok[0].contender,
        ok[0].size,
        wall=median("wall"),
        peak_rss=max(r.peak_rss for r in ok),
        peak_disk=max(r.peak_disk for r in ok),
        cpu=median("cpu"),
        machine_cpu=median("machine_cpu"),
        hub_cpu=median("hub_cpu"),
    )
