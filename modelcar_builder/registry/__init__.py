"""OCI distribution client over ``requests``: ping, auth, blobs, manifests.

``client`` is the API; ``transport`` the HTTP, retries and error mapping; ``tokens`` the
credentials (Basic, Bearer tokens and their renewal); ``uploads`` the upload protocols.
"""

from modelcar_builder.registry.client import (
    MANIFEST_ACCEPT,
    Manifest,
    ManifestInfo,
    RegistryClient,
)
from modelcar_builder.registry.transport import RetryPolicy, TransferStats
from modelcar_builder.registry.uploads import DEFAULT_CHUNK

__all__ = [
    "DEFAULT_CHUNK",
    "MANIFEST_ACCEPT",
    "Manifest",
    "ManifestInfo",
    "RegistryClient",
    "RetryPolicy",
    "TransferStats",
]
