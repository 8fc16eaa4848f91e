"""Every user-facing failure, in one place: a one-line message, a fix hint, an exit code.

The CLI prints ``error: <message>`` and ``hint: <hint>`` and exits with ``exit_code``;
no traceback unless ``--debug``. Exit codes are documented in README.md and must stay
stable: Tekton pipelines branch on them.
"""

from __future__ import annotations


class ModelcarError(Exception):
    """Base class. Subclasses set a distinct exit code and a default hint."""

    exit_code = 1
    default_hint = "rerun with --debug for the details"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(ModelcarError):
    """Malformed SOURCE, IMAGE or option values."""

    exit_code = 2
    default_hint = "see `modelcar COMMAND --help`"


class SourceNotFound(ModelcarError):
    """Repo or local directory does not exist (or is private and no token was given)."""

    exit_code = 10
    default_hint = "check the repo id / path; for a private repo set HF_TOKEN or --hf-token-file"


class RevisionNotFound(ModelcarError):
    exit_code = 11
    default_hint = "use a branch, tag, refs/pr/N or a 40-hex commit that exists in the repo"


class AccessDenied(ModelcarError):
    """Gated or private repo: token missing or refused."""

    exit_code = 12
    default_hint = (
        "accept the repo's conditions on the Hub and pass a token with read access "
        "(HF_TOKEN or --hf-token-file)"
    )


class MalformedToken(AccessDenied):
    """A token no server could accept: non-ASCII, or whitespace or control characters
    inside it (a pasted second line). Named by its source, never shown."""

    default_hint = (
        "a token is one line of printable ASCII: rewrite it with only the token "
        "(one trailing newline is fine)"
    )


class UnsafeSource(ModelcarError):
    """A path that would escape /models, or a symlink leaving the source directory."""

    exit_code = 13
    default_hint = (
        'fix the source so every path stays inside it (no "..", no absolute paths, no links out)'
    )


class PlatformNotFound(UsageError):
    """The base image has no variant for the requested platform."""

    default_hint = "pick one the base image has with --platform OS/ARCH, or another base"


class EmptySelection(ModelcarError):
    exit_code = 14
    default_hint = "loosen --include/--exclude, or pass --all-files"


class IncompleteModel(ModelcarError):
    """A selected shard index (``*.safetensors.index.json``) names files the selection or
    the repo does not hold: the image would build and the model server fail at load."""

    exit_code = 15
    default_hint = (
        "loosen --include/--exclude so every shard is selected, or pass --allow-incomplete"
    )


class TooManyLayers(ModelcarError):
    """The base image alone uses the whole --max-layers budget (subclasses: a file over
    --max-layer-size, or the two limits in conflict; all exit 16)."""

    exit_code = 16
    default_hint = (
        "use a base image with fewer layers (ubi-micro and busybox have one), "
        "or raise --max-layers if every runtime that runs the image allows it"
    )


class LayerTooLarge(TooManyLayers):
    """A single file is larger than --max-layer-size: a layer holds whole files, so no
    plan keeps that layer within the limit (a registry that caps blobs refuses it)."""

    default_hint = (
        "raise --max-layer-size to at least the file's size, or pass --allow-large-layer "
        "if the registry takes a blob that large"
    )


class LayerLimitsConflict(TooManyLayers):
    """--max-layers and --max-layer-size cannot both hold: the model needs more layers
    than allowed, or larger ones."""

    default_hint = (
        "raise --max-layers (if every runtime that runs the image allows it) or "
        "--max-layer-size (if the registry takes blobs that large), or use a base image "
        "with fewer layers"
    )


class DownloadFailed(ModelcarError):
    """Network or server failure that retries could not overcome. Rerun to resume."""

    exit_code = 20
    default_hint = "rerun the same command: finished files are kept and partial ones resume"


class IntegrityError(ModelcarError):
    """Downloaded bytes do not match the Hub's sha256 / git blob id."""

    exit_code = 21
    default_hint = "the bad file was deleted; rerun to fetch it again"


class SourceSizeMismatch(IntegrityError):
    """A file gave more or fewer bytes than the size the plan (and the tar header) promised."""

    default_hint = (
        "the file changed while the image was being built; rerun so sizes and digests are "
        "taken again"
    )


class BlobDigestMismatch(IntegrityError):
    """A blob written to an OCI layout does not hash to the digest it was stored under."""

    default_hint = "the bytes changed on the way; the partial blob was removed, rerun"


class WorkspaceError(ModelcarError):
    """Workspace not writable, wrong layout, or owned so we cannot write."""

    exit_code = 30
    default_hint = (
        "make the workspace writable by this UID or group (OpenShift: fsGroup / GID 0 "
        "with g+rwx), or pass --workspace to a writable directory"
    )


class InsufficientSpace(ModelcarError):
    exit_code = 31
    default_hint = (
        "enlarge the volume (PVC) or use --engine native (--stream needs no disk for the model)"
    )


class OutputNotWritable(ModelcarError):
    """``--results-dir`` or ``--report`` (or an ``oci:`` layout target) cannot be written:
    checked before the download, so a verified push never ends in a lost result."""

    exit_code = 32
    default_hint = (
        "point --results-dir / --report at a writable place (a missing directory is "
        "created when its parent is writable)"
    )


class EngineUnavailable(ModelcarError):
    """The chosen build engine is not installed."""

    exit_code = 40
    default_hint = "install the engine, or use --engine native (needs nothing)"


class EnginePrivilegeError(ModelcarError):
    """buildah lacks a privilege it needs: its user namespace (SETFCAP / SETUID / SETGID)
    or, for the overlay storage driver, mounting (CAP_SYS_ADMIN)."""

    exit_code = 41
    default_hint = (
        "run the builder pod with SETFCAP (OpenShift: the pipelines-scc SCC) or use "
        "--engine native, which needs no privilege"
    )


class BuildFailed(ModelcarError):
    exit_code = 42
    default_hint = (
        "the line above says what failed; rerun with --debug for the engine output, or "
        "use --engine native"
    )


class StorageDriverUnsupported(ModelcarError):
    """We have the privilege to mount, yet the kernel or the workspace's filesystem cannot
    hold buildah's overlay storage (e.g. a workspace on overlay, NFS or some FUSE)."""

    exit_code = 43
    default_hint = (
        "set MODELCAR_BUILDAH_STORAGE_DRIVER=vfs (or leave it unset: auto falls back to vfs), "
        "put the workspace on a filesystem overlay supports (ext4, xfs), or use --engine native"
    )


class RegistryUnreachable(ModelcarError):
    exit_code = 50
    default_hint = "check the registry host:port, DNS, and --tls-verify/--ca-file"


class RegistryAuthError(ModelcarError):
    """The registry refused our credentials (401/403)."""

    exit_code = 51
    default_hint = (
        "check the credentials (--authfile, REGISTRY_AUTH_FILE, --registry-token-file); "
        "in OpenShift grant the service account system:image-builder on the namespace"
    )


class BaseImageNotFound(ModelcarError):
    """--base-image names an image the registry does not have."""

    exit_code = 17
    default_hint = (
        "check --base-image (REGISTRY/REPO:TAG, oci:PATH[:TAG] or scratch) and that the "
        "credentials can pull it"
    )


class MalformedBaseImage(ModelcarError):
    """The base image is there but is not a well-formed image: a manifest that is not an
    image manifest, an index that is not an index, or a manifest whose layers and its
    config's diff_ids disagree. Building on it would give an image no runtime accepts."""

    exit_code = 18
    default_hint = (
        "the base image is broken where it is stored: pass another --base-image (or "
        "scratch), or rebuild and re-push this one"
    )


class RegistryError(ModelcarError):
    """Any other unexpected registry answer."""

    exit_code = 52
    default_hint = (
        "the registry answered something unexpected (above); rerun with --debug to see each request"
    )


class VerificationFailed(ModelcarError):
    """The pushed image does not match what we built."""

    exit_code = 60
    default_hint = "rerun the build; if it repeats, the registry is rewriting the image"


class ImageNotFound(ModelcarError):
    """The tag, digest or layout entry to verify does not exist: nothing was there to check,
    which a pipeline must tell apart from an image that is there and wrong (60)."""

    exit_code = 61
    default_hint = "check the tag and repository (or the oci: layout path and tag); push first"


class PartsMissing(ModelcarError):
    """`modelcar assemble`: a part's record (or a layer it lists) is not in the registry
    when the wait ends; the message names every missing part."""

    exit_code = 62
    default_hint = (
        "run (or rerun) the missing parts with `modelcar build SOURCE --image REF --part K/N`, "
        "or give them longer with --wait"
    )


class PartsDisagree(ModelcarError):
    """`modelcar assemble`: the part records are not of one build (another plan, another
    N, another base, created timestamp or compression): they cannot make one image."""

    exit_code = 63
    default_hint = (
        "rerun every part with the same SOURCE, revision and options (and the same "
        "SOURCE_DATE_EPOCH), then assemble again"
    )


class Interrupted(ModelcarError):
    exit_code = 130
    default_hint = "rerun the same command to continue where it stopped"
