"""Sources: where a model comes from. ``parse_source`` reads a SOURCE argument;
``hub.py`` and ``local.py`` turn it into a pinned Snapshot (nothing is downloaded there);
``download.py`` brings a Hub snapshot's bytes onto the workspace, verified; ``stream.py``
reads them as self-checking streams for ``--stream``. Both take one road: ``http.py``
(every GET, its retry policy and 429 rule), ``pool.py`` (one segment pool) with its two
sinks ``partfile.py`` (the ``.part`` file) and ``window.py`` (the in-memory window),
``digest.py``, ``connections.py`` and ``fetch_options.py``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from modelcar_builder.errors import UsageError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "hub" or "local"
    location: str  # "org/name" or an absolute directory
    revision: str | None = None


def parse_source(text: str) -> SourceSpec:
    """``hf://ORG/NAME[@REV]``, bare ``ORG/NAME[@REV]``, or a local directory.

    A bare ``ORG/NAME`` that also exists as a relative directory is taken as the
    directory: a path the user can see on disk wins over a guess about the Hub.
    """
    text = text.strip()
    if not text:
        raise UsageError("SOURCE is empty", hint="pass hf://ORG/NAME[@REVISION] or a directory")
    if text.startswith("hf://"):
        return _parse_hub(text[len("hf://") :], text)
    if text.startswith(("/", "./", "../", "~")) or os.path.isdir(text):
        return SourceSpec("local", str(Path(text).expanduser().resolve()))
    if "://" in text:
        raise UsageError(
            f"unsupported SOURCE scheme in {text!r}",
            hint="use hf://ORG/NAME[@REVISION] or a local directory path",
        )
    return _parse_hub(text, text)


def _parse_hub(body: str, original: str) -> SourceSpec:
    repo, sep, revision = body.partition("@")
    if not _REPO_ID.match(repo) or "--" in repo or ".." in repo:
        raise UsageError(
            f"malformed Hub repo id in SOURCE {original!r}",
            hint="expected ORG/NAME, e.g. hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0@main, "
            "or a path to an existing directory",
        )
    if sep and not revision:
        raise UsageError(
            f"empty revision after '@' in SOURCE {original!r}",
            hint="write @BRANCH, @TAG, @refs/pr/N or @COMMIT, or drop the '@'",
        )
    return SourceSpec("hub", repo, revision or None)
