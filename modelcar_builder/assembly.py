"""`modelcar assemble`: the image of a model built by N parts (`build --part K/N`).

It waits (bounded, with progress) for the N part records in the registry, refuses
records that are not of one build, checks that every blob they list is there with its
size, writes the config and manifest with the one function a one-pod build uses
(``oci.template.image_documents``: the same model gives the same digest), verifies the
image as a build does and writes the Tekton results. It needs no SOURCE and no volume."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from modelcar_builder.engines.part import first_absent, read_record
from modelcar_builder.errors import OutputNotWritable, PartsDisagree, PartsMissing, UsageError
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST
from modelcar_builder.oci.image import Descriptor
from modelcar_builder.oci.partrecord import PartLayer, PartRecord, record_tag
from modelcar_builder.oci.template import image_documents
from modelcar_builder.preflight import results_dir
from modelcar_builder.registry import RegistryClient
from modelcar_builder.run import image_url, verify_target, write_image_results
from modelcar_builder.settings import Bounds, RegistryOptions, check_number
from modelcar_builder.shares import MAX_PARTS
from modelcar_builder.target import RegistryTarget, parse_target
from modelcar_builder.verify import VerifyResult
from modelcar_builder.workspace import writable_problem

log = logging.getLogger("modelcar.assembly")

PARTS = Bounds(int, 1, MAX_PARTS, "4")
WAIT = Bounds(float, 0, 7 * 86400, "3600")  # seconds
# Seconds between two looks at the records (N HEADs each): 2 at first, growing with the
# wait to 30, so a long wait on many parts does not hammer the registry.
POLL, MAX_POLL = 2.0, 30.0
PROGRESS_EVERY = 30.0  # seconds between two "waiting" lines when nothing changes


@dataclass(frozen=True)
class Assembled:
    image_url: str  # oci://REGISTRY/REPO@sha256:…
    digest: str
    parts: int
    layers: int  # model layers
    verified: VerifyResult


def assemble(
    image: str,
    parts: int,
    registry: RegistryOptions,
    wait: float = float(WAIT.example),
    results_dir: str | None = None,
) -> Assembled:
    """Raises PartsMissing (62) naming the parts with no record when ``wait`` seconds
    pass, PartsDisagree (63) when the records are not of one build."""
    check_number(parts, "--parts", PARTS)
    check_number(wait, "--wait", WAIT)
    target = parse_target(image)
    if not isinstance(target, RegistryTarget) or target.ref.digest:
        raise UsageError(f"--image {image}: assemble writes a tag in a registry",
                         hint="give --image REGISTRY/REPO:TAG, as the parts had")  # fmt: skip
    results = _results_dir(results_dir)  # before the wait: a path that fails, fails now
    with registry.client_for(target.ref) as client:
        client.ping()
        records = _wait_for_records(client, target, parts, wait)
        layers = _layers(records, target)
        template = records[0].template
        blobs: list[Descriptor | PartLayer] = [*template.base_layers, *layers]
        absent = first_absent(client, target.repository, blobs)
        if absent is not None:
            blob, size = absent
            owner = next((f"part {r.k}/{r.n}" for r in records if blob in r.layers), "")
            raise PartsMissing(
                f"{target}: {owner + ' lists ' if owner else 'the base layer '}"
                f"{blob.digest} of {blob.size} bytes, but the registry "
                f"{'has no such blob' if size is None else f'holds {size} bytes'}",
                hint=f"rerun {owner or 'any part'}: it pushes what is missing",
            )
        docs = image_documents(template, layers)
        if client.blob_size(target.repository, docs.config_digest) != len(docs.config):
            client.upload_blob(target.repository, docs.config_digest, len(docs.config),
                               lambda: [docs.config])  # fmt: skip
        digest = client.put_manifest(target.repository, target.tag, docs.manifest,
                                     MEDIA_TYPE_MANIFEST)  # fmt: skip
    verified = verify_target(target, digest, dict(template.labels), registry)
    log.info("assembled %s from %d parts: %d model layers, %s verified", target, parts,
             len(layers), digest)  # fmt: skip
    if results is not None:
        write_image_results(target, digest, results)
    return Assembled(image_url(target, digest), digest, parts, len(layers), verified)


def _results_dir(given: str | None) -> Path | None:
    """Where the Tekton results go (--results-dir, else /tekton/results when present),
    made and probed as build's preflight does (exit 32)."""
    results = results_dir(given)
    if results is not None:
        problem = writable_problem(results, None, create=True)
        if problem is not None:
            raise OutputNotWritable(f"--results-dir {results}: {problem}")
    return results


def _wait_for_records(
    client: RegistryClient, target: RegistryTarget, n: int, wait: float
) -> list[PartRecord]:
    """Every part's record, all of one build; a record that disagrees is read again on
    each look (a part still running may be about to replace a stale one)."""
    started = time.monotonic()
    seen: dict[int, tuple[str, PartRecord | None]] = {}  # part -> (manifest digest, record)
    said, said_at = "", 0.0
    while True:
        for k in range(1, n + 1):
            where = RegistryTarget(target.ref.with_tag(record_tag(target.tag, k, n)))
            info = client.head_manifest(target.repository, where.tag,
                                        accept=(MEDIA_TYPE_MANIFEST,))  # fmt: skip
            if info is None:
                seen.pop(k, None)
            elif k not in seen or seen[k][0] != info.digest:
                seen[k] = (info.digest, read_record(client, where))
        records = {k: r for k, (_, r) in seen.items() if r is not None and r.complete}
        # parts still pushing (or that died mid-way): their records say how far they got
        busy = {k: len(r.layers) for k, (_, r) in seen.items() if r is not None and not r.complete}
        missing = [k for k in range(1, n + 1) if k not in records]
        odd = _disagreeing(records, n)
        if not missing and not odd:
            return [records[k] for k in range(1, n + 1)]
        elapsed = time.monotonic() - started
        if elapsed >= wait:
            foreign = [k for k, (_, r) in seen.items() if r is None]
            _give_up(target, n, _awaited(missing, busy, n), odd, len(records), wait, foreign)
        now = f"{n - len(missing)} of {n} parts recorded"
        awaited = _awaited(missing, busy, n)
        if now + awaited != said or time.monotonic() - said_at >= PROGRESS_EVERY:
            log.info("assemble %s: %s; waiting for %s (%.0f s of %.0f s)", target, now,
                     awaited or f"{_names(odd, n)} to agree", elapsed, wait)  # fmt: skip
            said, said_at = now + awaited, time.monotonic()
        time.sleep(min(POLL + elapsed / 20, MAX_POLL, max(0.0, wait - elapsed)))


def _disagreeing(records: dict[int, PartRecord], n: int) -> dict[int, str]:
    """part -> why it is not of the build most records are of (ties: the lowest part's)."""
    if not records:
        return {}
    votes = Counter((r.plan, r.template.digest) for r in records.values())
    best = max(votes.values())
    ref = next(r for _, r in sorted(records.items())
               if votes[(r.plan, r.template.digest)] == best)  # fmt: skip
    odd: dict[int, str] = {}
    for k, r in sorted(records.items()):
        if (r.k, r.n) != (k, n):
            odd[k] = f"its record says part {r.k}/{r.n}"
        elif r.plan != ref.plan:
            odd[k] = f"it planned {r.source} (plan {r.plan[:19]}), part {ref.k}/{n} {ref.source} " \
                f"(plan {ref.plan[:19]})"  # fmt: skip
        elif r.template.digest != ref.template.digest:
            odd[k] = (
                "its image settings (base image, created timestamp, platform, compression or "
                f"modelcar version) differ from part {ref.k}/{n}'s"
            )
    return odd


def _awaited(missing: list[int], busy: dict[int, int], n: int) -> str:
    """``part 2/4 (3 layers pushed so far), 4/4``: the parts without a finished record."""
    if not missing:
        return ""
    names = [f"{k}/{n}" + (f" ({_layers_word(busy[k])} pushed so far)" if k in busy else "")
             for k in missing]  # fmt: skip
    return ("part " if len(names) == 1 else "parts ") + ", ".join(names)


def _layers_word(count: int) -> str:
    return f"{count} layer" if count == 1 else f"{count} layers"


def _give_up(target, n: int, awaited: str, odd: dict[int, str], recorded: int, wait,
             foreign) -> None:  # fmt: skip
    waited = f"after {wait:g} s"
    if awaited:
        also = f"; and {_why(odd, n)}" if odd else ""
        if foreign:  # a tag that holds something else (another tool's, a newer version's)
            also += f"; the tag of {_names(foreign, n)} holds no part record this version reads"
        raise PartsMissing(f"{target}: no finished record of {awaited} {waited} "
                           f"({recorded} of {n} recorded){also}")  # fmt: skip
    raise PartsDisagree(f"{target}: the parts are not of one build {waited}: {_why(odd, n)}")


def _why(odd: dict[int, str], n: int) -> str:
    return "; ".join(f"part {k}/{n}: {why}" for k, why in sorted(odd.items()))


def _names(parts, n: int) -> str:
    names = [f"{k}/{n}" for k in sorted(parts)]
    return ("part " if len(names) == 1 else "parts ") + ", ".join(names) if names else ""


def _layers(records: list[PartRecord], target: RegistryTarget) -> list[PartLayer]:
    """Every model layer once, in plan order, from the records of all parts."""
    count = len(records[0].template.history)
    by_index: dict[int, PartLayer] = {}
    for r in records:
        for x in r.layers:
            if x.index in by_index or not 0 <= x.index < count:
                raise PartsDisagree(
                    f"{target}: part {r.k}/{r.n} records layer {x.index}, which another part "
                    f"recorded too or the plan lacks"
                )
            by_index[x.index] = x
    absent = [i for i in range(count) if i not in by_index]
    if absent:
        raise PartsDisagree(f"{target}: no part recorded layer(s) {', '.join(map(str, absent))} "
                            f"of {count}")  # fmt: skip
    return [by_index[i] for i in range(count)]
