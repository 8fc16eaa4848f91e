"""OCI building blocks: deterministic tar layers, config/manifest JSON, the on-disk layout.

This module only holds the names the OCI and Docker specs give to things, so every other
module (engines, registry, verify) spells them the same way.
"""

from __future__ import annotations

# --- OCI image spec media types -------------------------------------------------------
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# Deprecated by the spec but still found in Windows base images.
MEDIA_TYPE_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

# --- Docker image manifest v2 schema 2 media types (what many base images still use) ------
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # uncompressed
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_MANIFEST, DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_INDEX, DOCKER_MANIFEST_LIST})

# --- annotation keys --------------------------------------------------------------------
# Pre-defined by the OCI image spec (annotations.md).
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_SOURCE = "org.opencontainers.image.source"
ANNOTATION_REVISION = "org.opencontainers.image.revision"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
# CNCF ModelPack, "the file path of the layer":
# github.com/modelpack/model-spec/blob/main/docs/annotations.md
ANNOTATION_FILEPATH = "org.cncf.model.filepath"
# Ours. The sha256 is the bare hex the Hub shows as the LFS oid (not "sha256:<hex>"), so it
# can be compared with the Hub's page directly; the layer digest already is a digest.
ANNOTATION_FILE_SHA256 = "io.modelcar.file.sha256"
# JSON array of the relative paths a multi-file layer holds.
ANNOTATION_FILES = "io.modelcar.files"
ANNOTATION_TOOL_VERSION = "io.modelcar.builder.version"

__all__ = [name for name in dir() if name.isupper()]
