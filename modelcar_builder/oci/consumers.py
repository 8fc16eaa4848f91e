"""What each consumer of a ModelCar image can read (README: "How each consumer reads the
image"). Vocabulary only: the checks that use it (`doctor`, `build`'s preflight) wrap
these sentences in their own results."""

from __future__ import annotations

from typing import Literal

ConsumerStatus = Literal["PASS", "WARN"]

# Layer compressions KServe's `oci+fetch://` storage initializer extracts
# (kserve-storage's _LAYER_MEDIA_TYPE_MODES): tar and tar+gzip. It refuses tar+zstd
# (Python's tarfile reads zstd only from 3.14; the initializer runs 3.11).
FETCH_READS = frozenset({"none", "gzip"})


def consumers_check(compression: str | None) -> tuple[ConsumerStatus, str, str]:
    """(status, message, fix) of `doctor`'s "consumers" check: WARN when ``--compression``
    writes layers a KServe mode cannot read (tar+zstd: oci+fetch:// refuses it). None
    means the engine's default, which is gzip or none for every engine."""
    if compression is None or compression in FETCH_READS:
        shown = compression or "the engine's default"
        return ("PASS", f"{shown} layers: KServe's oci://, oci+native:// and oci+fetch:// "
                "read them", "")  # fmt: skip
    return (
        "WARN",
        f"--compression {compression} writes tar+{compression} layers: KServe's "
        "oci+fetch:// storage initializer refuses them (it reads tar and tar+gzip); "
        "oci:// and oci+native:// read them only where the node's runtime does",
        "use --compression gzip (or --engine native, uncompressed) for an image every "
        "KServe mode reads",
    )
