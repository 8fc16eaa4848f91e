"""What a source is at one point in time: a pinned commit and the files it holds.

Every later stage (plan, fetch, layers, engines) works from a Snapshot and never asks the
source again for *what* to build, so a branch that moves mid-build cannot mix revisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileEntry:
    """One model file. ``path`` is a POSIX path relative to the model root (and /models)."""

    path: str
    size: int
    sha256: str | None = None  # LFS sha256 on the Hub, or computed for local files
    blob_id: str | None = None  # git blob sha1 of non-LFS Hub files

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None and self.blob_id is None


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class Snapshot:
    kind: str  # "hub" or "local"
    location: str  # repo id ("org/name") or absolute directory
    revision: str | None  # what the user asked for (branch, tag, refs/pr/N, sha)
    commit: str | None  # 40-hex commit for the Hub; None for local directories
    files: tuple[FileEntry, ...]
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)
    url: str | None = None  # --source-url: where the model really lives (S3, git, ...)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def source_url(self) -> str:
        """For the org.opencontainers.image.source annotation."""
        if self.url:
            return self.url
        if self.kind == "hub":
            return f"https://huggingface.co/{self.location}"
        return f"file://{self.location}"

    @property
    def image_labels(self) -> dict[str, str]:
        """The image's provenance labels: where the model came from, and which commit."""
        labels = {"org.opencontainers.image.source": self.source_url}
        if self.commit:
            labels["org.opencontainers.image.revision"] = self.commit
        return labels

    @property
    def canonical(self) -> str:
        if self.kind == "hub":
            return f"hf://{self.location}@{self.commit}"
        return self.location
