"""The options of `plan` and `build`, as one carrier from the CLI to the engines: the
frozen dataclasses the API takes (re-exported by ``api``) and the rules that check them.

``commands/options.py`` packs the click parameters into a ``BuildOptions``; the run
takes it, and every engine reads it as ``BuildRequest.options``, next to what the run
derived from it once (the target's RegistryOptions, the parsed platforms, the
compression resolved for the engine). The preflight's view of it is
``preflight.Request``. Fields are the CLI's options (``--read-timeout`` is
``FetchOptions.read_timeout``); defaults are the CLI's. Numbers are checked by the CLI's
own rule (finite, in range), choices against the CLI's choices."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from modelcar_builder.context import DEFAULT_BASE_IMAGE
from modelcar_builder.engines.catalog import DEFAULT_ENGINE, ENGINES
from modelcar_builder.errors import UsageError
from modelcar_builder.plan import DEFAULT_LAYER_THRESHOLD, DEFAULT_MAX_LAYERS
from modelcar_builder.reference import names_host
from modelcar_builder.settings import Bounds, RegistryOptions, check_number
from modelcar_builder.source.download import FetchOptions
from modelcar_builder.target import RegistryTarget, parse_target

# The range of every numeric option, for the CLI's click types and for the API alike.
LAYER_THRESHOLD = Bounds(int, 1, 1 << 50, str(DEFAULT_LAYER_THRESHOLD))
MAX_LAYERS = Bounds(int, 2, 127, str(DEFAULT_MAX_LAYERS))  # CRI-O/podman mount <= 127
MAX_LAYER_SIZE = Bounds(int, 1, 1 << 50, "10000000000")  # bytes; None (default): no limit
FETCH_JOBS = Bounds(int, 1, 64, str(FetchOptions.jobs))
CONNECTIONS = Bounds(int, 1, 256, str(FetchOptions.connections))
ATTEMPTS = Bounds(int, 1, 100, str(FetchOptions.attempts))
READ_TIMEOUT = Bounds(float, 0.1, 86400, f"{FetchOptions.read_timeout:g}")  # seconds
PROGRESS_INTERVAL = Bounds(float, 0, 86400, "5")  # seconds
JOBS = Bounds(int, 1, 16, "2")  # build --jobs: layers pushed at once
CHUNK_SIZE = Bounds(int, 1, 4096, "64")  # build --chunk-size, MiB
SEGMENT_SIZE = Bounds(int, 64 * 1024, 1 << 30, str(FetchOptions.segment_size))  # bytes

COMPRESSIONS = ("none", "gzip", "zstd")
UPLOADS = ("monolithic", "chunked")
LOADS = ("auto", "podman", "docker")


def _choice(value: str | None, option: str, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise UsageError(
            f"{option} must be one of {', '.join(choices)}, not {value!r}",
            hint=f"e.g. {option} {choices[0]}",
        )


@dataclass(frozen=True)
class SourceOptions:
    """SOURCE and what shapes what is read from it (``plan``, ``build``); the run's
    ``pipeline.resolve_source`` reads them."""

    source: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    all_files: bool = False
    hf_token_file: str | None = None
    layer_threshold: int = DEFAULT_LAYER_THRESHOLD
    max_layers: int = DEFAULT_MAX_LAYERS
    max_layer_size: int | None = None  # bytes: no layer larger (a registry's blob limit)
    allow_large_layer: bool = False  # a single file over max_layer_size gets its own layer
    allow_incomplete: bool = False
    source_url: str | None = None
    base_image: str | None = None  # plan only: count its layers (default: assume 1)

    def check(self) -> None:
        """Numbers, as click checks them on the command line."""
        check_number(self.layer_threshold, "--layer-threshold", LAYER_THRESHOLD)
        check_number(self.max_layers, "--max-layers", MAX_LAYERS)
        if self.max_layer_size is not None:
            check_number(self.max_layer_size, "--max-layer-size", MAX_LAYER_SIZE)


@dataclass(frozen=True)
class RegistryAccess:
    """How to reach the registries: the CLI's --authfile, --registry-token-file,
    --tls-verify and --ca-file."""

    authfile: str | None = None
    registry_token_file: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None

    def options(self, image: str | None) -> RegistryOptions:
        """Settings for ``image``'s registry (in a pod, its service CA where it applies)."""
        target = parse_target(image) if image and image != "scratch" else None
        host = target.ref.api_host if isinstance(target, RegistryTarget) else None
        return self.for_host(host)

    def for_host(self, host: str | None) -> RegistryOptions:
        """Settings for the registry at ``host`` (None: no registry of ours)."""
        return RegistryOptions.for_host(
            self.authfile, self.registry_token_file, self.tls_verify, self.ca_file, host
        )


def check_fetch(opts: FetchOptions) -> None:
    check_number(opts.jobs, "--fetch-jobs", FETCH_JOBS)
    check_number(opts.connections, "--connections", CONNECTIONS)
    check_number(opts.attempts, "--attempts", ATTEMPTS)
    check_number(opts.read_timeout, "--read-timeout", READ_TIMEOUT)
    if opts.progress_interval is not None:
        check_number(opts.progress_interval, "--progress-interval", PROGRESS_INTERVAL)
    check_number(opts.segment_size, "MODELCAR_SEGMENT_SIZE", SEGMENT_SIZE)


@dataclass(frozen=True)
class BuildOptions:
    """Everything `modelcar build` takes. ``source`` may be a plain SOURCE string."""

    source: SourceOptions | str
    image: str
    workspace: str = "./modelcar-work"
    engine: str = DEFAULT_ENGINE
    base_image: str = DEFAULT_BASE_IMAGE
    platform: str = "linux/amd64"
    compression: str | None = None  # None: the engine's default
    load: str | None = None
    stream: bool = False
    jobs: int = 2
    upload: str = "monolithic"
    chunk_size: int = 64  # MiB
    registry: RegistryAccess = field(default_factory=RegistryAccess)
    fetch: FetchOptions = field(default_factory=FetchOptions)
    results_dir: str | None = None
    report_file: str | None = None
    preflight: bool = True  # False: --no-preflight
    sign_key: str | None = None  # cosign-format or PKCS#8 PEM key (README: Signing)
    sign_key_password_file: str | None = None  # else COSIGN_PASSWORD
    modelpack: bool = False  # also a ModelPack manifest on the same blobs (a referrer)
    mount_from: tuple[str, ...] = ()  # repositories of --image's registry to mount from
    part: str | None = None  # --part K/N or index/N: one share of the layers (README)

    @property
    def source_options(self) -> SourceOptions:
        return self.source if isinstance(self.source, SourceOptions) else SourceOptions(self.source)

    def check(self) -> None:
        """Choices and numbers, as click checks them on the command line."""
        _choice(self.engine, "--engine", ENGINES)
        _choice(self.compression, "--compression", COMPRESSIONS)
        _choice(self.upload, "--upload", UPLOADS)
        _choice(self.load, "--load", LOADS)
        check_number(self.jobs, "--jobs", JOBS)
        check_number(self.chunk_size, "--chunk-size", CHUNK_SIZE)
        check_fetch(self.fetch)

    def target_image(self) -> tuple[str, bool]:
        """The image to write and whether it is pushed: with --load, a name without a
        registry host is a local store's image, and nothing is pushed."""
        if self.load and is_local_name(self.image):
            return local_name(self.image), False
        return self.image, True


def is_local_name(image: str) -> bool:
    """A name without a registry host (``NAME[:TAG]``, ``ORG/NAME[:TAG]``) or under
    ``localhost/``: with ``--load`` it names an image in the local store only."""
    if image.startswith(("oci:", "docker://")):
        return False
    first, sep, _rest = image.partition("/")
    return not sep or first == "localhost" or not names_host(first)


def local_name(image: str) -> str:
    """``localhost/NAME:TAG``, the form podman gives local images (docker takes it too)."""
    name = image if image.startswith("localhost/") else f"localhost/{image}"
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in last else f"{name}:latest"


SOURCE_FIELDS = tuple(f.name for f in fields(SourceOptions) if f.name != "base_image")
