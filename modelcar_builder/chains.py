"""Tekton Chains' input-artifact type hint for a build: the Hub repo the model came from,
with its commit as the digest.

Chains reads the subject of its provenance from the IMAGE_URL/IMAGE_DIGEST results the
build writes itself; what went *into* the build it reads from an object result whose name
ends in ``ARTIFACT_INPUTS``, holding exactly ``uri`` and ``digest`` (``sha1:<commit>`` for
a git commit, as the Hub's are). The builder image's entrypoint runs this after a build
in a Tekton step (``python -m modelcar_builder.chains REPORT RESULTS_DIR``): the build's
report names the commit that was actually built. A directory source has no commit, so no
result is written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from modelcar_builder.settings import environment

RESULT = "MODEL_SOURCE_ARTIFACT_INPUTS"
DEFAULT_ENDPOINT = "https://huggingface.co"


def source_artifact(report: dict, endpoint: str | None = None) -> dict[str, str] | None:
    """``{"uri": ENDPOINT/ORG/NAME, "digest": "sha1:COMMIT"}`` for a Hub build, else None."""
    source, commit = report.get("source") or "", report.get("commit") or ""
    if not source.startswith("hf://") or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None
    repo = source.removeprefix("hf://").split("@", 1)[0]
    base = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
    return {"uri": f"{base}/{repo}", "digest": f"sha1:{commit}"}


def write_source_artifact(report_path: Path, results_dir: Path, endpoint: str | None) -> bool:
    """Write the result when the report is of a Hub build; say whether it was written."""
    artifact = source_artifact(json.loads(report_path.read_text()), endpoint)
    if artifact is None:
        return False
    (results_dir / RESULT).write_text(json.dumps(artifact, separators=(",", ":")))
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m modelcar_builder.chains REPORT RESULTS_DIR", file=sys.stderr)
        return 2
    report, results = Path(argv[0]), Path(argv[1])
    if not report.is_file() or not results.is_dir():
        return 0  # no report (the build did not get that far) or no results dir: nothing to add
    endpoint = environment().get("HF_ENDPOINT") or None
    write_source_artifact(report, results, endpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
