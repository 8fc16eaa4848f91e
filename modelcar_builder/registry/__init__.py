"""OCI distribution client over ``requests``: ping, auth, blobs, manifests.

``client`` is the API; ``transport`` the HTTP, retries and error mapping; ``tokens`` the
credentials (Basic, Bearer tokens and their renewal); ``uploads`` the upload protocols.
"""

# Transitional, not a second definition: engines/buildah.py (edited concurrently on main)
# still imports these two names from here. New code imports them from modelcar_builder.oci;
# drop these lines once buildah.py does too.
from modelcar_builder.oci import DOCKER_MANIFEST
from modelcar_builder.oci import MEDIA_TYPE_MANIFEST as OCI_MANIFEST
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
    "DOCKER_MANIFEST",
    "MANIFEST_ACCEPT",
    "OCI_MANIFEST",
    "Manifest",
    "ManifestInfo",
    "RegistryClient",
    "RetryPolicy",
    "TransferStats",
]
