"""The project carries its own docs: every document the code, tests or README cite is a
file in the repository, and nothing points outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CITED = re.compile(r"(?<![\w/.])(docs/[\w./-]+\.(?:md|json))")  # not a URL's docs/


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return [REPO / line for line in out.splitlines()
            if line.endswith((".py", ".md", ".sh", ".yaml", ".toml", ".ini", ".txt"))]  # fmt: skip


def test_every_cited_document_exists_and_nothing_points_outside():
    missing, outside = [], []
    for path in _tracked():
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        text = path.read_text(errors="replace")
        missing += [f"{path.relative_to(REPO)}: {doc}" for doc in CITED.findall(text)
                    if not (REPO / doc).is_file()]  # fmt: skip
        pointing = [line for line in text.splitlines()
                    if ("../shared" in line or "DESIGN.md" in line)
                    and " not in " not in line]  # fmt: skip
        if pointing:  # a test asserting the absence ("… not in text") does not point
            outside.append(str(path.relative_to(REPO)))
    outside = [p for p in outside if p != "tests/test_docs.py"]  # this test names them
    assert not missing
    assert not outside
