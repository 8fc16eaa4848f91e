"""A section of BENCHMARKS.md by its "## " heading: read it, or write it in place.

The scripts measured on their own (``verify_deep``, ``parts``) write their section in
place, and the main benchmark, which rewrites the whole file, puts them back."""

from __future__ import annotations

from pathlib import Path


def current_section(path: Path, heading: str) -> list[str]:
    """The section under ``heading`` that ``path`` holds now (empty if none)."""
    text = path.read_text() if path.exists() else ""
    _, sep, rest = text.partition(heading + "\n")
    if not sep:
        return []
    after = rest.find("\n## ")
    return [heading, *(rest[:after] if after >= 0 else rest).splitlines()]


def replace_section(path: Path, heading: str, lines: list[str]) -> None:
    """Replace the section under ``heading``, else put it before "## Every run", else
    last. ``lines`` start with the heading."""
    text = path.read_text() if path.exists() else ""
    body = "\n".join(lines).rstrip("\n") + "\n"
    head, sep, rest = text.partition(heading + "\n")
    if sep:
        after = rest.find("\n## ")
        text = head + body + (rest[after:] if after >= 0 else "")
    elif "\n## Every run" in text:
        before, after = text.split("\n## Every run", 1)
        text = before.rstrip("\n") + "\n\n" + body + "\n## Every run" + after
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text)
