"""A Hub file's bytes checked against the Hub's id (its LFS sha256, or its git blob id),
and, for a file that is a layer of its own, that layer's digest from the same pass."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from modelcar_builder.errors import IntegrityError
from modelcar_builder.snapshot import FileEntry
from modelcar_builder.source.fetch_options import CHUNK

# The layer digest's second core: a few long-lived threads for the whole process, not one
# thread per block (a 10 GB file would start ~1,250). One per file fetched at once is
# enough (--jobs defaults to 4); a busy pool only delays, it never deadlocks: the file's
# thread waits on its own block only.
_SIDE_HASHERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="layer-hash")


def hasher_for(entry: FileEntry):
    """sha256 for LFS files; for git-stored files the blob id, sha1('blob N\\0' + bytes)."""
    if entry.sha256:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(b"blob %d\x00" % entry.size)
    return h


def expected_id(entry: FileEntry) -> str | None:
    return entry.sha256 or entry.blob_id


def check_digest(
    h: Hashes, entry: FileEntry, drop: Callable[[], None] | None = None, how: str = ""
) -> None:
    """The one check of a file's bytes against the Hub's id; ``drop`` removes what holds
    them first (a file that fails is never used). ``how`` replaces the digests in the
    message (--stream says where it was caught)."""
    got = h.hexdigest()
    if got == expected_id(entry):
        return
    if drop is not None:
        drop()
    kind = "sha256" if entry.sha256 else "git blob id"
    detail = how or f"(expected {expected_id(entry)}, got {got})"
    raise IntegrityError(f"{entry.path}: {kind} mismatch {detail}")


class Hashes:
    """The file's own hash (to verify it) and, for a file that is a layer of its own, the
    uncompressed layer digest (prefix + bytes + suffix), both from one pass over the
    bytes: the native engine then never reads the model again just to hash it."""

    def __init__(self, entry: FileEntry, frame: tuple[bytes, bytes] | None) -> None:
        self.file = hasher_for(entry)
        self.frame = frame
        self.layer = hashlib.sha256(frame[0]) if frame else None
        # A git-stored file is checked by its blob id (sha1), yet --report gives every
        # file's sha256: hashed in the same pass (such files are small, the Hub keeps
        # everything large in LFS, whose id is the sha256 itself).
        self._known_sha256 = entry.sha256
        self.sha256 = None if entry.sha256 else hashlib.sha256()

    def update(self, block) -> None:
        self.update_file(block)
        if self.layer is not None:
            self.layer.update(block)

    def update_file(self, block) -> None:
        """The file's own hashes, not the layer's."""
        self.file.update(block)
        if self.sha256 is not None:
            self.sha256.update(block)

    def update_both(self, block: memoryview) -> None:
        """Both digests of a one-file layer at once, on two cores (hashlib lets go of the
        GIL; the second is a long-lived pool thread): the file's sha256 and the layer
        digest are each one core's sha256 rate."""
        if self.layer is None or len(block) < CHUNK:
            self.update(block)
            return
        side = _SIDE_HASHERS.submit(self.layer.update, block)
        self.update_file(block)
        side.result()

    def hexdigest(self) -> str:
        return self.file.hexdigest()

    def file_sha256(self) -> str:
        if self._known_sha256:
            return self._known_sha256
        # A git-stored file: its sha256 was hashed alongside (set in __init__).
        return cast("hashlib._Hash", self.sha256).hexdigest()

    def layer_digest(self) -> str | None:
        if self.layer is None or self.frame is None:
            return None
        self.layer.update(self.frame[1])
        return "sha256:" + self.layer.hexdigest()
