"""What /models should hold, for ``verify --deep``: the Hub's file list at the commit the
image's revision label names (the same metadata call `plan` makes), or a build report
(``build --report``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelcar_builder.errors import UsageError
from modelcar_builder.oci import ANNOTATION_REVISION, ANNOTATION_SOURCE
from modelcar_builder.selection import Selection
from modelcar_builder.source.hub import DEFAULT_ENDPOINT, HubAccess, hub_snapshot

# The builder's source label for a Hub repo; see Snapshot.source_url.
HUB_URL_PREFIX = DEFAULT_ENDPOINT + "/"


@dataclass(frozen=True)
class ExpectedFile:
    path: str  # relative to /models
    size: int | None
    sha256: str | None = None
    blob_id: str | None = None  # git blob sha1, what the Hub gives for non-LFS files


@dataclass(frozen=True)
class Expected:
    source: str  # for messages: "the Hub's acme/llm@<commit>" or "report FILE"
    files: Mapping[str, ExpectedFile]


@dataclass(frozen=True)
class DeepOptions:
    """``verify --deep``: where the expected files come from and how many blobs at once.
    Without ``report``, the Hub (``access``) at the image's revision, through
    ``selection`` (the build's --include/--exclude/--all-files)."""

    report: Path | None = None
    access: HubAccess | None = None
    selection: Selection = field(default_factory=Selection)
    jobs: int = 3


def expected_files(opts: DeepOptions, labels: Mapping[str, str]) -> Expected | str:
    """The expected set, or why there is none (then only blobs are hashed)."""
    if opts.report is not None:
        return from_report(opts.report)
    source, commit = labels.get(ANNOTATION_SOURCE, ""), labels.get(ANNOTATION_REVISION)
    if not source.startswith(HUB_URL_PREFIX) or not commit:
        return "no Hub source and revision labels (a local model?); pass --report FILE"
    if opts.access is None:
        return "no Hub access given"
    repo_id = source.removeprefix(HUB_URL_PREFIX)
    snap = hub_snapshot(repo_id, commit, opts.selection, opts.access)
    files = {f.path: ExpectedFile(f.path, f.size, f.sha256, f.blob_id) for f in snap.files}
    return Expected(f"the Hub's {repo_id}@{commit}", files)


def from_report(path: Path) -> Expected:
    """``files[]`` of a build report: path, size and sha256 (blob_id where a git id is all
    the report has)."""
    try:
        doc = json.loads(path.read_text())
        entries = doc["files"]
        files = {
            str(e["path"]): ExpectedFile(
                str(e["path"]), e.get("size"), e.get("sha256") or None, e.get("blob_id") or None
            )
            for e in entries
        }
    except OSError as exc:
        raise UsageError(f"cannot read --report {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            f"--report {path} is not a build report (no files[] with paths)",
            hint="pass the JSON file `modelcar build --report FILE` wrote",
        ) from None
    return Expected(f"report {path}", files)
