"""ImageRef parsing: the forms podman/skopeo/KServe accept, and one-line errors otherwise."""

from __future__ import annotations

import pytest

from modelcar_builder.errors import UsageError
from modelcar_builder.reference import ImageRef, names_host

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("quay.io/org/model:v1", "quay.io", "org/model", "v1", None),
        ("quay.io/org/model", "quay.io", "org/model", "latest", None),
        ("127.0.0.1:5000/models/tiny:dev", "127.0.0.1:5000", "models/tiny", "dev", None),
        ("localhost/a", "localhost", "a", "latest", None),
        ("localhost:5000/a/b/c:1.0-rc_1", "localhost:5000", "a/b/c", "1.0-rc_1", None),
        (f"quay.io/org/model@{D}", "quay.io", "org/model", None, D),
        (f"quay.io/org/model:v1@{D}", "quay.io", "org/model", "v1", D),
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("org/model", "docker.io", "org/model", "latest", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/org/x:y", "docker.io", "org/x", "y", None),
        (
            "image-registry.openshift-image-registry.svc:5000/ns/model:v2",
            "image-registry.openshift-image-registry.svc:5000",
            "ns/model",
            "v2",
            None,
        ),
        (f"oci://quay.io/org/model@{D}", "quay.io", "org/model", None, D),
        ("docker://quay.io/org/model:v1", "quay.io", "org/model", "v1", None),
        ("[::1]:5000/a:b", "[::1]:5000", "a", "b", None),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str, digest: str | None) -> None:
    ref = ImageRef.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert ImageRef.parse(str(ref)) == ref  # str() round-trips


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("quay.io/Org/model", "lowercase"),
        ("quay.io/org/model:", "tag"),
        ("quay.io/org/model:-bad", "tag"),
        ("quay.io/org/model@sha256:1234", "digest"),
        ("quay.io/org/model@md5:" + "a" * 32, "digest"),
        ("https://quay.io/org/model", "docker:// or oci://"),
        ("quay.io/", "missing"),
        ("quay.io//model", "repository"),
        ("bad_host.io:port/x", "host"),
        ("quay.io/org/model:" + "a" * 200, "tag"),
        ("quay.io/" + "a" * 300, "255"),
        ("127.0.0.1:99999/x", "port 99999 is out of range"),
        ("localhost:0/x", "port 0"),
        ("UPPER/case", "lowercase"),
        ("Registry/org/model", "lowercase"),  # docker would take it as a host: DNS fails
    ],
)
def test_parse_errors(text: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        ImageRef.parse(text)
    message = str(info.value)
    assert "\n" not in message
    assert needle in message
    assert info.value.hint
    assert info.value.exit_code == 2


def test_properties() -> None:
    ref = ImageRef.parse("127.0.0.1:5000/models/tiny:v1")
    assert ref.name == "127.0.0.1:5000/models/tiny"
    assert ref.reference == "v1"
    assert ref.name_for_pull == "127.0.0.1:5000/models/tiny:v1"
    assert ref.docker_uri == "docker://127.0.0.1:5000/models/tiny:v1"
    assert ref.api_host == "127.0.0.1:5000"
    with pytest.raises(UsageError):
        _ = ref.oci_uri  # no digest yet

    pinned = ref.with_digest(D)
    assert str(pinned) == f"127.0.0.1:5000/models/tiny:v1@{D}"
    assert pinned.reference == D
    assert pinned.name_for_pull == f"127.0.0.1:5000/models/tiny@{D}"
    assert pinned.oci_uri == f"oci://127.0.0.1:5000/models/tiny@{D}"
    assert ref.with_tag("v2").tag == "v2"
    with pytest.raises(UsageError):
        ref.with_digest("sha256:nope")
    with pytest.raises(UsageError):
        ref.with_tag(".bad")


def test_docker_hub_api_host_and_default_tag() -> None:
    ref = ImageRef.parse("busybox")
    assert str(ref) == "docker.io/library/busybox:latest"
    assert ref.api_host == "registry-1.docker.io"
    assert ImageRef.parse("busybox", default_tag=None).tag is None
    frozen = ImageRef.parse("quay.io/a/b")
    with pytest.raises(AttributeError):
        frozen.tag = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("image", "local"),
    [("quay.io/org/m:v1", False), ("127.0.0.1:5000/m", False), ("localhost/m", True),
     ("org/m:v1", True), ("m", True)],
)  # fmt: skip
def test_one_registry_host_rule_for_parse_load_and_mount_from(image: str, local: bool) -> None:
    """--load's local names and --mount-from's hosts ask the rule ImageRef.parse applies."""
    from modelcar_builder.api import mount_sources
    from modelcar_builder.buildopts import is_local_name
    from modelcar_builder.target import parse_target

    first = image.partition("/")[0]
    named = "/" in image and names_host(first)
    assert named == (ImageRef.parse(image).registry == first)
    assert is_local_name(image) is local
    target = parse_target("127.0.0.1:5000/models/x:v1")
    if named and first != "127.0.0.1:5000":
        with pytest.raises(UsageError, match="another registry"):
            mount_sources((image.partition(":v1")[0],), target)
