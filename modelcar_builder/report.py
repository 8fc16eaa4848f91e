"""What the user sees: human summaries and JSON documents. No decisions are made here."""

from __future__ import annotations

import json
from typing import Any

from modelcar_builder.plan import Plan
from modelcar_builder.units import human
from modelcar_builder.verify import VerifyResult

# Every JSON document we print or write (`build --json`/`--report`, `doctor --json`,
# `verify --json`, `plan --json`) carries it. Raised when a field changes meaning or goes
# away; adding a field keeps it. docs/schemas/ describes this version.
DOCUMENT_VERSION = 1


def plan_document(plan: Plan, disk: dict[str, int]) -> dict[str, Any]:
    snap = plan.snapshot
    return {
        "version": DOCUMENT_VERSION,
        "document": "plan",
        "source": snap.canonical,
        "kind": snap.kind,
        "revision": snap.revision,
        "commit": snap.commit,
        "total_bytes": plan.total_bytes,
        "layer_threshold": plan.threshold,
        "max_layers": plan.max_layers,
        "max_layer_size": plan.max_layer_size,
        "base_layers": plan.base_layers,
        "grouping": plan.grouping,
        "layers": [
            {
                "name": layer.name,
                "size": layer.size,
                "files": [
                    {"path": f.path, "size": f.size, "sha256": f.sha256, "blob_id": f.blob_id}
                    for f in layer.files
                ],
            }
            for layer in plan.layers
        ],
        "skipped": [{"path": s.path, "reason": s.reason} for s in snap.skipped],
        "disk_needed": disk,
    }


def plan_text(plan: Plan, disk: dict[str, int], free: int | None) -> str:
    snap = plan.snapshot
    asked = f" (asked: {snap.revision or 'main'})" if snap.kind == "hub" else ""
    out = [
        f"source  {snap.canonical}{asked}",
        f"files   {len(snap.files)} selected, {len(snap.skipped)} skipped, "
        f"{human(plan.total_bytes)} in {len(plan.layers)} layers",
        f"layers  {len(plan.layers)} model + {plan.base_layers} base = {plan.total_layers} "
        f"(--max-layers {plan.max_layers}"
        + (f", --max-layer-size {plan.max_layer_size})" if plan.max_layer_size else ")"),
    ]
    if plan.grouping:
        out.append(f"grouped {plan.grouping}")
    for layer in plan.layers:
        out.append(f"{layer.name}  {len(layer.files)} file(s)  {human(layer.size)}")
        for f in layer.files:
            digest = f"sha256 {f.sha256}" if f.sha256 else (f"git {f.blob_id}" if f.blob_id else "")
            out.append(f"    /models/{f.path}  {human(f.size)}  {digest}".rstrip())
    for s in snap.skipped:
        out.append(f"skipped {s.path}: {s.reason}")
    needs = ", ".join(f"{name} {human(n)}" for name, n in disk.items())
    free_txt = f" (free on workspace: {human(free)})" if free is not None else ""
    out.append(f"disk needed: {needs}{free_txt}")
    return "\n".join(out)


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False)


def build_document(plan: Plan, outcome) -> dict[str, Any]:
    """The --report JSON: what was built from what, where it went, how long it took.
    Holds no credential of any kind (the token never reaches this module)."""
    result = outcome.result
    layer_of = {}
    for layer, pushed in zip(plan.layers, result.layers, strict=True):
        for f in layer.files:
            layer_of[f.path] = pushed.digest
    snap = plan.snapshot
    computed = outcome.file_sha256()  # for the files the source gives no sha256 of
    return {
        "version": DOCUMENT_VERSION,
        "document": "build",
        "source": snap.canonical,
        "revision": snap.revision,
        "commit": snap.commit,
        "engine": result.engine,
        "image": result.target,
        "image_url": outcome.image_url,
        "manifest_digest": result.manifest_digest,
        "config_digest": result.config_digest,
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "sha256": f.sha256 or computed.get(f.path),
                "blob_id": f.blob_id,
                "layer": layer_of.get(f.path),
            }
            for f in snap.files
        ],
        "layers": [
            {
                "digest": p.digest,
                "size": p.size,
                "diff_id": p.diff_id,
                "media_type": p.media_type,
                "uploaded": p.uploaded,
                "mounted": p.mounted,
            }
            for p in result.layers
        ],
        "base_layers": result.base_layers,
        "bytes_downloaded": outcome.downloaded_bytes,
        "bytes_uploaded": result.bytes_uploaded,
        "timings": {k: round(v, 3) for k, v in {**outcome.timings, **result.timings}.items()},
    }


def verify_document(verified: VerifyResult, url: str) -> dict[str, Any]:
    """`verify --json`: what was checked, with the counts, as one document."""
    deep = verified.deep
    return {
        "version": DOCUMENT_VERSION,
        "document": "verify",
        "image": url,
        "digest": verified.digest,
        "media_type": verified.media_type,
        "config_digest": verified.config_digest,
        "revision": verified.revision,
        "layers": verified.layer_count,
        "total_size": verified.total_size,
        "blobs_present": verified.blobs_present,
        "bytes_read": verified.bytes_read,
        "checks": list(verified.checks),
        "unchecked": list(verified.unchecked),
        "deep": None
        if deep is None
        else {
            "blobs_hashed": deep.blobs_hashed,
            "diff_ids_checked": deep.diff_ids_checked,
            "model_layers": deep.model_layers,
            "files_checked": deep.files_checked,
            "files_unhashed": deep.files_unhashed,
            "files_compared": deep.compared,
            "expected_from": deep.expected_from,
        },
        "labels": verified.labels,
    }


def verify_text(verified: VerifyResult) -> list[str]:
    """`verify`: one line per thing proved, then what it cost."""
    out = [f"checked {check}" for check in verified.checks]
    if verified.revision:
        out.append(f"revision {verified.revision} (label org.opencontainers.image.revision)")
    deep = verified.deep
    if deep is None:
        out.append("not read: layer contents (--deep hashes every blob and every model file)")
        out += [f"not told: {phrase}" for phrase in verified.unchecked]
    else:
        out.append(
            f"hashed  {deep.blobs_hashed} layer blobs = their digests, "
            f"{deep.diff_ids_checked} compressed layer(s) unpacked = their diff_id"
        )
        if deep.compared:
            unhashed = f", {deep.files_unhashed} without a hash there (size only)"
            out.append(
                f"files   {deep.files_checked} files in {deep.model_layers} model layer(s) = "
                f"{deep.expected_from}{unhashed if deep.files_unhashed else ''}; "
                "no file missing, none extra"
            )
        else:
            out.append(f"files   not checked: {deep.expected_from}")
    out.append(f"read    {human(verified.bytes_read)} ({verified.bytes_read} bytes)")
    return out
