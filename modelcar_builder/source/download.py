"""Download a Hub snapshot onto the workspace, verified and resumable.

huggingface_hub 2.4 neither resumes across processes nor checks sha256, so bytes are
fetched here with requests, each file by the segment pool into its ``.part``
(``partfile.py``): partial files survive a crash and continue with HTTP Range, every file
is checked against the Hub's LFS sha256 or its git blob id, and a file that fails is
deleted, never used. This module decides which files, in which order, with which
connections, retries a file whose bytes failed their check, and records what verified.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelcar_builder.errors import (
    DownloadFailed,
    IntegrityError,
    ModelcarError,
    SourceNotFound,
)
from modelcar_builder.oci.layer import LayerEntry, TarLayer
from modelcar_builder.parallel import run_parallel
from modelcar_builder.plan import Plan
from modelcar_builder.progress import HighWater, Progress
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source import partfile
from modelcar_builder.source.connections import ConnectionBudget
from modelcar_builder.source.digest import Hashes, expected_id
from modelcar_builder.source.fetch_options import CHUNK, FetchOptions
from modelcar_builder.source.http import Transient, check_status, hub_session, retrying
from modelcar_builder.source.pool import Counter
from modelcar_builder.state import BuildState, LayerRecord, layer_key
from modelcar_builder.units import human
from modelcar_builder.workspace import FILE_MODE, Workspace, make_dir

if TYPE_CHECKING:  # huggingface_hub is slow to import; local builds never need it
    from modelcar_builder.source.hub import HubAccess

log = logging.getLogger("modelcar.source.download")
__all__ = ["CHUNK", "FetchOptions", "FetchResult", "Transient", "check_status", "fetch"]


@dataclass(frozen=True)
class FetchResult:
    files_dir: Path
    downloaded_bytes: int
    fetched: tuple[str, ...]
    reused: tuple[str, ...]


def fetch(
    plan: Plan,
    workspace: Workspace,
    access: HubAccess | None,
    opts: FetchOptions,
    state: BuildState | None = None,
    on_verified: Callable[[str], None] | None = None,
) -> FetchResult:
    """Bring every file of the plan onto the workspace, verified. ``on_verified`` hears of
    each file as soon as it is in place (an engine may start pushing its layer);
    ``state`` shares the workspace record with that engine."""
    snapshot = plan.snapshot
    announce = on_verified or (lambda _path: None)
    files_dir = workspace.files_dir(snapshot)
    if snapshot.kind == "local":
        _check_local(files_dir, snapshot.files)
        for f in snapshot.files:
            announce(f.path)
        return FetchResult(files_dir, 0, (), tuple(f.path for f in snapshot.files))
    if access is None or snapshot.commit is None:
        raise ModelcarError(
            f"{snapshot.canonical}: a Hub snapshot without access or commit",
            hint="this is a bug: please report it with the --debug output",
        )
    state = state if state is not None else workspace.state(snapshot)
    partial_dir = workspace.partial_dir(snapshot)

    todo: list[FileEntry] = []
    reused: list[str] = []
    recorded = dict(state.verified)
    for entry in snapshot.files:
        if _already_verified(files_dir / entry.path, entry, state):
            reused.append(entry.path)
        else:
            todo.append(entry)
    if state.verified != recorded:
        state.save()  # files re-verified from disk (or found gone) are remembered
    for path in reused:
        announce(path)

    if not todo:
        log.info("all %d files already downloaded and verified; nothing to fetch", len(reused))
        return FetchResult(files_dir, 0, (), tuple(reused))

    have = sum(partfile.partial_bytes(partial_dir / f"{e.path}.part", e.size) for e in todo)
    need = sum(e.size for e in todo) - have
    workspace.require_space(need, f"downloading {len(todo)} files")
    log.info(
        "fetching %d files (%s; %s already partial), %d already verified",
        len(todo),
        human(need),
        human(have),
        len(reused),
    )
    progress = Progress("fetch", need, stream=opts.progress_stream, interval=opts.progress_interval)
    session = hub_session(opts)
    budget = ConnectionBudget(opts.connections)
    downloaded = Counter()
    failures: list[ModelcarError] = []
    lock = threading.Lock()
    frames = _single_file_layers(plan)

    # Plan order (layer 0's files first), and connections go to the earliest file that
    # wants one: layer 0 is complete early and an engine can push it while the rest
    # download. Plan order puts the large files first anyway (small ones are the last layer).
    place = {f.path: i for i, f in enumerate(f for layer in plan.layers for f in layer.files)}
    ordered = sorted(todo, key=lambda e: place.get(e.path, len(place)))
    rank = {e.path: i for i, e in enumerate(ordered)}

    def one(entry: FileEntry) -> None:
        if opts.cancelled():
            return  # the build ended: leave the file for a rerun
        part = partial_dir / f"{entry.path}.part"
        framed = frames.get(entry.path)
        budget.acquire(rank[entry.path])  # every file in flight holds a connection
        try:
            layer_digest, sha256 = _fetch_one(
                session, access, snapshot.location, snapshot.commit, entry, part,
                files_dir / entry.path, opts, progress, downloaded,
                framed[1] if framed else None, budget, rank[entry.path],
            )  # fmt: skip
        except (DownloadFailed, IntegrityError) as exc:
            # Keep going: every other file that verifies is kept for the rerun.
            log.error("%s", exc)
            with lock:
                failures.append(exc)
            return
        finally:
            budget.release()
        with lock:
            state.mark_verified(entry.path, expected_id(entry))
            state.remember_sha256(expected_id(entry), sha256)
            if framed and layer_digest:
                key, _frame, size = framed
                state.remember_layer(key, LayerRecord(layer_digest, size, layer_digest))
            state.save()
        announce(entry.path)

    try:
        run_parallel(one, ordered, opts.jobs)
    finally:
        progress.close()
        session.close()
    if failures:
        first = failures[0]
        if len(failures) > 1:
            first.message += f" (and {len(failures) - 1} more files failed)"
        raise first
    return FetchResult(files_dir, downloaded.value, tuple(e.path for e in todo), tuple(reused))


def _single_file_layers(plan: Plan) -> dict[str, tuple[str, tuple[bytes, bytes], int]]:
    """path -> (layer cache key, tar frame, layer size) for every layer of one file: its
    uncompressed layer digest is computed during the download (see Hashes)."""
    out = {}
    for layer in plan.layers:
        if len(layer.files) != 1:
            continue
        (f,) = layer.files
        tar = TarLayer([LayerEntry(f.path, f.size)])
        out[f.path] = (layer_key(layer, "none"), tar.frame(), tar.size)
    return out


def _check_local(root: Path, files) -> None:
    for entry in files:
        p = root / entry.path
        if not p.is_file() or p.stat().st_size != entry.size:
            raise SourceNotFound(
                f"local file {p} changed or vanished while building",
                hint="rerun once nothing writes to the source directory",
            )


def _part_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _already_verified(final: Path, entry: FileEntry, state: BuildState) -> bool:
    try:
        if final.stat().st_size != entry.size:
            return False
    except FileNotFoundError:
        state.forget(entry.path)
        return False
    if state.is_verified(entry.path, expected_id(entry)):
        return True
    # A file that is present but not recorded (a crash between rename and state save):
    # verify it from disk instead of downloading it again.
    h = _digest_file(final, entry)
    if h.hexdigest() == expected_id(entry):
        state.mark_verified(entry.path, expected_id(entry))
        state.remember_sha256(expected_id(entry), h.file_sha256())
        return True
    final.unlink()
    return False


def _digest_file(path: Path, entry: FileEntry) -> Hashes:
    h = Hashes(entry, None)
    with open(path, "rb") as f:
        while block := f.read(8 * CHUNK):
            h.update(block)
    return h


def _fetch_one(
    session, access, repo_id, commit, entry, part, final, opts, progress, counter, frame=None,
    budget: ConnectionBudget | None = None, rank: int = 0,
) -> tuple[str | None, str]:  # fmt: skip
    """Download, verify and move one file into place; returns its layer digest when
    ``frame`` (the file's one-file tar layer around it) is given, and its sha256."""
    url = access.file_url(repo_id, entry.path, commit)
    shown = HighWater(progress, _part_size(part))
    budget = budget or ConnectionBudget(opts.connections)

    def say(exc: BaseException | None, wait: float, tries: int) -> None:
        log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)",
                    entry.path, exc, wait, tries + 1, opts.attempts)  # fmt: skip

    policy = retrying(opts, say, retry_on=(Transient, IntegrityError), give_up=_same_wrong_bytes)
    try:
        for attempt in policy:
            with attempt:
                hashes = partfile.download_part(
                    session, url, access, entry, part, opts, shown, counter, frame, budget, rank
                )
    except Transient as exc:
        raise DownloadFailed(
            f"downloading {entry.path} failed after {opts.attempts} attempts: {exc}"
        ) from None
    make_dir(final.parent)
    os.chmod(part, FILE_MODE)
    os.replace(part, final)
    return hashes.layer_digest(), hashes.file_sha256()


def _same_wrong_bytes(exc: BaseException | None, tries: int) -> bool:
    """Stop after two sha256 mismatches at once: the same wrong bytes twice are not a
    network accident, and each try of a 10 GB shard costs 10 GB."""
    return isinstance(exc, IntegrityError) and tries >= 2
