"""One model built by N pods: which part a process is (``--part K/N``), which of the
plan's layers each part builds, and the digest that says two parts planned the same model.

Pure and deterministic, like the plan itself: every part plans the whole model, so every
part computes the same shares without talking to the others."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

from modelcar_builder.errors import UsageError
from modelcar_builder.plan import LayerPlan, Plan

# The Indexed Job's variable, read only when `--part index/N` asks for it: the per-model
# Indexed Job (deploy/) already gives it another meaning (which model of a list).
JOB_INDEX = "JOB_COMPLETION_INDEX"
MAX_PARTS = 1000  # more pods than layers just build nothing; this bounds typos
PART_HINT = "write --part K/N with 1 <= K <= N (e.g. --part 2/4), or --part index/N in an " \
    "Indexed Job (K = JOB_COMPLETION_INDEX + 1)"  # fmt: skip


@dataclass(frozen=True)
class Part:
    """Part ``k`` of ``n``, counting from 1."""

    k: int
    n: int

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


def parse_part(text: str, env: Mapping[str, str]) -> Part:
    """``K/N`` or ``index/N``; ``env`` is read for JOB_COMPLETION_INDEX only with
    ``index/``. Anything else is a UsageError (exit 2) in one line."""
    raw = text.strip()
    first, sep, second = raw.partition("/")
    n = _count(second) if sep else None
    if n is None or not 1 <= n <= MAX_PARTS:
        raise UsageError(f"--part {text!r}: N must be a whole number from 1 to {MAX_PARTS}",
                         hint=PART_HINT)  # fmt: skip
    if first == "index":
        index = env.get(JOB_INDEX)
        k = _count(index) if index is not None else None
        if k is None:
            got = "is not set" if index is None else f"is {index!r}, not a whole number"
            raise UsageError(f"--part {raw}: {JOB_INDEX} {got}",
                             hint="--part index/N is for a Kubernetes Indexed Job; "
                             "elsewhere write --part K/N")  # fmt: skip
        k += 1
    else:
        k = _count(first)
        if k is None:
            raise UsageError(f"--part {text!r}: K must be a whole number or 'index'",
                             hint=PART_HINT)  # fmt: skip
    if not 1 <= k <= n:
        raise UsageError(f"--part {raw}: part {k} of {n} does not exist (K counts from 1 "
                         f"to N)", hint=PART_HINT)  # fmt: skip
    return Part(k, n)


def _count(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def shares(plan: Plan, n: int) -> tuple[tuple[int, ...], ...]:
    """The layer indexes each of ``n`` parts builds, balanced by bytes: layers largest
    first (ties: lower index first) each go to the part with the fewest bytes so far
    (ties: the lower part). Each share lists its layers in plan order."""
    loads = [0] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for layer in sorted(plan.layers, key=lambda lp: (-lp.size, lp.index)):
        least = min(range(n), key=lambda p: (loads[p], p))
        loads[least] += layer.size
        out[least].append(layer.index)
    return tuple(tuple(sorted(s)) for s in out)


def share_of(plan: Plan, part: Part) -> tuple[LayerPlan, ...]:
    wanted = set(shares(plan, part.n)[part.k - 1])
    return tuple(lp for lp in plan.layers if lp.index in wanted)


def narrowed(plan: Plan, layers: tuple[LayerPlan, ...]) -> Plan:
    """``plan`` with only ``layers`` (and only their files in its snapshot): what a part
    fetches and pushes. The layers keep their index and name from the whole plan."""
    paths = {f.path for lp in layers for f in lp.files}
    files = tuple(f for f in plan.snapshot.files if f.path in paths)
    return replace(plan, layers=layers, snapshot=replace(plan.snapshot, files=files))


def plan_digest(plan: Plan) -> str:
    """sha256 of what decides the model layers: the pinned source and every file (path,
    size, content id) in its layer. Two parts with the same digest build shares of one
    image; a part of another revision or selection has another digest."""
    snap = plan.snapshot
    doc = {
        "source": [snap.kind, snap.location, snap.commit, snap.url],
        "layers": [
            [lp.index, lp.name, [[f.path, f.size, f.sha256, f.blob_id] for f in lp.files]]
            for lp in plan.layers
        ],
    }
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest()
