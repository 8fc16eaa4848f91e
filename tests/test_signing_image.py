"""Image signatures in cosign's format, judged by containers/image: skopeo and podman
with a policy.json that requires a sigstore signature by our public key.

The judging skopeo and podman are the binaries MODELCAR_TEST_SKOPEO and
MODELCAR_TEST_PODMAN name (paths), else the ones on PATH. Debian's skopeo 1.9.3 and
podman 4.3.1 are built with sigstore cut out: with them the enforcement tests skip and
say why, and the Debian-only test below checks what such a skopeo still reads. To run
the enforcement tests, point the variables at an upstream build (skopeo 1.13.3 and
podman 4.4.4, built from their vendored sources with Go 1.19, pass them all); the
other skopeo calls here (pushing, re-pushing, copying the signature out) use PATH's.
The run prints one line naming the skopeo and podman that judged."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.support.clitools import run
from tests.support.models import build_args
from tests.support.multiarch import build_index, build_multiarch_base
from tests.support.podman import make_podman, podman_available
from tests.support.signing import (
    delete_signature,
    put_raw_manifest,
    raw_manifest,
    signature_tag,
)
from tests.support.sigpolicy import judging_tool, make_policy, tool_version

PASSWORD = "s3cret-for-tests"
DEBIAN_DISABLED = "sigstore disabled"
NO_SIGNATURE = "A signature was required, but no signature exists"
REFUSED_KEY = "cryptographic signature verification failed"  # a signature, by another key


def skip_if_sigstore_disabled(proc: subprocess.CompletedProcess[str], tool: str) -> None:
    """Debian builds containers/image (skopeo 1.9.3, podman 4.3.1) with sigstore cut
    out: every sigstore signature or policy check fails with "Debian-local change:
    sigstore disabled". Such a tool cannot judge our signatures either way: skip, and
    say why, rather than count its refusal as a pass."""
    if proc.returncode != 0 and DEBIAN_DISABLED in proc.stderr:
        line = proc.stderr.strip().splitlines()[-1]
        which = tool_version(judging_tool(tool))
        print(f"{which} cannot check sigstore signatures: {line}")
        pytest.skip(
            f"{which} is built without sigstore support (MODELCAR_TEST_{tool.upper()} "
            f"may name one that has it): {line}"
        )


@pytest.fixture(scope="module", autouse=True)
def say_which_tools_judge(pytestconfig):
    """One line in the terminal: which skopeo and podman the policy tests ran."""
    tools = "; ".join(tool_version(judging_tool(t)) for t in ("skopeo", "podman"))
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nsignature policies judged by: {tools}")


@pytest.fixture
def keypair(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COSIGN_PASSWORD", PASSWORD)
    res = run(capsys, "keygen", str(tmp_path / "keys"))
    assert res.code == 0, res.err
    return tmp_path / "keys" / "cosign.key", tmp_path / "keys" / "cosign.pub"


def repush_other_image(base_image, dest: str) -> None:
    """Put another image (the base converted to Docker schema 2: another digest) at
    ``dest``, as anyone with push access could."""
    subprocess.run(
        ["skopeo", "copy", "-q", "--dest-tls-verify=false", "--format", "v2s2",
         base_image.oci_ref, f"docker://{dest}"],
        env=base_image.env, check=True, capture_output=True,
    )  # fmt: skip


@pytest.mark.slow
def test_skopeo_policy_accepts_signed_refuses_unsigned_and_repushed(
    registry, base_image, keypair, capsys, tmp_path
):
    private, public = keypair
    signed = base_image.copy_to(registry, "sig/model", "v1")
    unsigned = base_image.copy_to(registry, "sig/unsigned", "v1")
    res = run(capsys, "sign", signed, "--key", str(private), "--no-tls-verify")
    assert res.code == 0, res.err
    assert PASSWORD not in res.out + res.err
    policy = make_policy(tmp_path / "policy", registry.host, public)

    ok = policy.skopeo_copy(f"docker://{signed}", f"dir:{tmp_path / 'out-ok'}")
    skip_if_sigstore_disabled(ok, "skopeo")
    assert ok.returncode == 0, ok.stderr
    by_digest = res.out.split()[-1]  # "signed host/repo@sha256:…"
    ok2 = policy.skopeo_copy(f"docker://{by_digest}", f"dir:{tmp_path / 'out-digest'}")
    assert ok2.returncode == 0, ok2.stderr

    refused = policy.skopeo_copy(f"docker://{unsigned}", f"dir:{tmp_path / 'out-unsigned'}")
    assert refused.returncode != 0 and NO_SIGNATURE in refused.stderr, refused.stderr

    assert run(capsys, "keygen", str(tmp_path / "stranger")).code == 0
    stranger = make_policy(tmp_path / "stranger-policy", registry.host,
                           tmp_path / "stranger" / "cosign.pub")  # fmt: skip
    not_theirs = stranger.skopeo_copy(f"docker://{signed}", f"dir:{tmp_path / 'out-stranger'}")
    assert not_theirs.returncode != 0 and REFUSED_KEY in not_theirs.stderr, not_theirs.stderr

    repush_other_image(base_image, signed)
    replaced = policy.skopeo_copy(f"docker://{signed}", f"dir:{tmp_path / 'out-repushed'}")
    assert replaced.returncode != 0 and NO_SIGNATURE in replaced.stderr, replaced.stderr


@pytest.mark.slow
def test_skopeo_accepts_an_image_signed_by_digest_when_pulled_by_that_digest(
    registry, base_image, keypair, capsys, tmp_path
):
    """`modelcar sign host/repo@sha256:…` vouches for that digest: the policy's
    matchRepoDigestOrExact accepts a pull by it (a name-only identity it would refuse,
    "Signature for identity host/repo is not accepted") and refuses the tag, which the
    signer never named."""
    private, public = keypair
    tagged = base_image.copy_to(registry, "sig/by-digest", "v1")
    pinned = f"{registry.host}/sig/by-digest@{base_image.digest}"
    res = run(capsys, "sign", pinned, "--key", str(private), "--no-tls-verify")
    assert res.code == 0, res.err
    assert (
        run(capsys, "sign", "--verify", pinned, "--key", str(public), "--no-tls-verify").code == 0
    )
    policy = make_policy(tmp_path / "policy", registry.host, public)
    ok = policy.skopeo_copy(f"docker://{pinned}", f"dir:{tmp_path / 'out-digest'}")
    skip_if_sigstore_disabled(ok, "skopeo")
    assert ok.returncode == 0, ok.stderr
    by_tag = policy.skopeo_copy(f"docker://{tagged}", f"dir:{tmp_path / 'out-tag'}")
    assert by_tag.returncode != 0, by_tag.stderr
    assert f"Signature for identity {pinned} is not accepted" in by_tag.stderr, by_tag.stderr


@pytest.mark.slow
def test_our_verify_accepts_signed_refuses_unsigned_and_repushed(
    registry, base_image, keypair, capsys
):
    private, public = keypair
    signed = base_image.copy_to(registry, "sig/ours", "v1")
    unsigned = base_image.copy_to(registry, "sig/ours-unsigned", "v1")
    res = run(capsys, "sign", signed, "--key", str(private), "--no-tls-verify")
    assert res.code == 0, res.err
    by_digest = res.out.split()[-1]
    check = ("--key", str(public), "--no-tls-verify")
    assert run(capsys, "sign", "--verify", signed, *check).code == 0
    refused = run(capsys, "sign", "--verify", unsigned, *check)
    assert refused.code == 60 and "no signature" in refused.err
    repush_other_image(base_image, signed)
    assert run(capsys, "sign", "--verify", by_digest, *check).code == 0  # old digest: signed
    now = run(capsys, "sign", "--verify", signed, *check)
    assert now.code == 60 and "no signature" in now.err


@pytest.mark.slow
def test_a_second_signer_keeps_the_first_signature(registry, base_image, keypair, capsys,
                                                   tmp_path, monkeypatch):  # fmt: skip
    private, public = keypair
    image = base_image.copy_to(registry, "sig/two", "v1")
    assert run(capsys, "keygen", str(tmp_path / "other")).code == 0
    other_private, other_public = (tmp_path / "other" / n for n in ("cosign.key", "cosign.pub"))
    for key in (private, other_private):
        res = run(capsys, "sign", image, "--key", str(key), "--no-tls-verify")
        assert res.code == 0, res.err
    for pub in (public, other_public):  # our check finds both signatures
        res = run(capsys, "sign", "--verify", image, "--key", str(pub), "--no-tls-verify")
        assert res.code == 0 and "1 signature(s)" in res.out, res.err
    for pub in (public, other_public):
        policy = make_policy(tmp_path / f"policy-{pub.parent.name}", registry.host, pub)
        got = policy.skopeo_copy(
            f"docker://{image}", f"dir:{tmp_path / ('out-' + pub.parent.name)}"
        )
        skip_if_sigstore_disabled(got, "skopeo")
        assert got.returncode == 0, got.stderr


@pytest.mark.slow
def test_skopeo_signs_with_a_keygen_key_and_we_verify_it(
    registry, base_image, keypair, capsys, tmp_path
):
    """skopeo (containers/image) reads the private key `modelcar keygen` wrote: the
    encrypted cosign format is the one it knows. Our --verify accepts its signature."""
    private, public = keypair
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    dest = f"{registry.host}/sig/by-skopeo:v1"
    policy = make_policy(tmp_path / "policy", registry.host, public)
    proc = policy.skopeo(
        "copy", "-q", "--dest-tls-verify=false", "--sign-by-sigstore-private-key", str(private),
        "--sign-passphrase-file", str(pw), base_image.oci_ref, f"docker://{dest}",
    )  # fmt: skip
    skip_if_sigstore_disabled(proc, "skopeo")
    assert proc.returncode == 0, proc.stderr
    res = run(capsys, "sign", "--verify", dest, "--key", str(public), "--no-tls-verify")
    assert res.code == 0, res.err
    assert "1 signature(s)" in res.out
    # and a key that did not sign it finds nothing
    assert run(capsys, "keygen", str(tmp_path / "stranger")).code == 0
    stranger = str(tmp_path / "stranger" / "cosign.pub")
    other = run(capsys, "sign", "--verify", dest, "--key", stranger, "--no-tls-verify")
    assert other.code == 60


def judging_podman(podman, *args: str) -> list[str]:
    """``podman.argv(args)`` run by the judging podman (MODELCAR_TEST_PODMAN) on the
    same private storage."""
    return [judging_tool("podman"), *podman.argv(*args)[1:]]


@pytest.mark.slow
def test_skopeo_accepts_what_build_sign_key_pushed(
    hub_repo, registry, base_image, keypair, capsys, tmp_path
):
    """The product itself: an image `build --sign-key` pushed (model.sig layer on top,
    provenance referrer beside it) passes the policy by tag and by digest; the same
    build unsigned does not. The policy is scoped as README's snippet is: host/models."""
    private, public = keypair
    signed, unsigned = (f"{registry.host}/models/llm:{t}" for t in ("signed", "unsigned"))
    res = run(capsys, *build_args(signed, tmp_path / "ws", base_image.ref),
              "--sign-key", str(private))  # fmt: skip
    assert res.code == 0, res.err
    plain = run(capsys, *build_args(unsigned, tmp_path / "ws", base_image.ref))
    assert plain.code == 0, plain.err
    policy = make_policy(tmp_path / "policy", f"{registry.host}/models", public)
    ok = policy.skopeo_copy(f"docker://{signed}", f"dir:{tmp_path / 'out-tag'}")
    skip_if_sigstore_disabled(ok, "skopeo")
    assert ok.returncode == 0, ok.stderr
    pinned = f"{registry.host}/models/llm@{res.last_line.split('@')[1]}"
    by_digest = policy.skopeo_copy(f"docker://{pinned}", f"dir:{tmp_path / 'out-digest'}")
    assert by_digest.returncode == 0, by_digest.stderr
    refused = policy.skopeo_copy(f"docker://{unsigned}", f"dir:{tmp_path / 'out-unsigned'}")
    assert refused.returncode != 0 and NO_SIGNATURE in refused.stderr, refused.stderr


def podman_pull(podman, policy, image: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``podman pull [extra]`` under ``policy`` (podman has no registries.d flag: it reads
    $HOME/.config/containers/registries.d before /etc, for root too)."""
    argv = judging_podman(podman, "pull", "-q", "--tls-verify=false", "--signature-policy",
                          str(policy.policy), *extra, f"docker://{image}")  # fmt: skip
    env = {**podman.env, "HOME": policy.env["HOME"]}
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_podman_pull_enforces_the_signature(
    registry, base_image, keypair, capsys, tmp_path, tmp_path_factory
):
    why = podman_available()
    if why:
        pytest.skip(why)
    podman = make_podman(tmp_path_factory.mktemp("podman"))
    try:
        check_podman_pulls(podman, registry, base_image, keypair, capsys, tmp_path)
    finally:  # the judging podman removes what it pulled, then PATH's cleans up
        subprocess.run(judging_podman(podman, "rmi", "-a", "-f"), env=podman.env, check=False,
                       capture_output=True)  # fmt: skip
        podman.close()


def check_podman_pulls(podman, registry, base_image, keypair, capsys, tmp_path) -> None:
    private, public = keypair
    signed = base_image.copy_to(registry, "sig/podman", "v1")
    unsigned = base_image.copy_to(registry, "sig/podman-unsigned", "v1")
    res = run(capsys, "sign", signed, "--key", str(private), "--no-tls-verify")
    assert res.code == 0, res.err
    policy = make_policy(tmp_path / "policy", registry.host, public)  # registries.d via HOME
    ok = podman_pull(podman, policy, signed)
    skip_if_sigstore_disabled(ok, "podman")
    assert ok.returncode == 0, ok.stderr
    by_digest = podman_pull(podman, policy, res.out.split()[-1])  # host/repo@sha256:…
    assert by_digest.returncode == 0, by_digest.stderr
    refused = podman_pull(podman, policy, unsigned)
    assert refused.returncode != 0 and NO_SIGNATURE in refused.stderr, refused.stderr
    assert run(capsys, "keygen", str(tmp_path / "stranger")).code == 0
    stranger = make_policy(tmp_path / "stranger-policy", registry.host,
                           tmp_path / "stranger" / "cosign.pub")  # fmt: skip
    not_theirs = podman_pull(podman, stranger, signed)
    assert not_theirs.returncode != 0 and REFUSED_KEY in not_theirs.stderr, not_theirs.stderr
    repush_other_image(base_image, signed)
    replaced = podman_pull(podman, policy, signed)
    assert replaced.returncode != 0 and NO_SIGNATURE in replaced.stderr, replaced.stderr


@pytest.mark.slow
def test_the_signature_skopeo_reads_back_verifies_with_openssl(
    registry, base_image, keypair, capsys, tmp_path
):
    """What we push at sha256-<hex>.sig is an OCI image skopeo copies like any other (it
    checks every digest), and openssl verifies the annotation's signature over the
    payload blob with our public key; the payload names the image's digest."""
    private, public = keypair
    image = base_image.copy_to(registry, "sig/openssl", "v1")
    res = run(capsys, "sign", image, "--key", str(private), "--no-tls-verify")
    assert res.code == 0, res.err
    digest = res.out.split("@")[-1].strip()
    sig_ref = f"docker://{registry.host}/sig/openssl:{digest.replace(':', '-')}.sig"
    out = tmp_path / "sig"
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", sig_ref, f"dir:{out}"],
                   env=base_image.env, check=True, capture_output=True)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    payload_file = out / layer["digest"].split(":")[1]
    payload = json.loads(payload_file.read_text())
    assert payload["critical"]["image"]["docker-manifest-digest"] == digest
    assert payload["critical"]["identity"]["docker-reference"] == image
    sig_file = tmp_path / "sig.der"
    sig_file.write_bytes(
        base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    )
    verify = ["openssl", "dgst", "-sha256", "-verify", str(public), "-signature", str(sig_file)]
    good = subprocess.run([*verify, str(payload_file)], capture_output=True, text=True)
    assert good.returncode == 0 and "Verified OK" in good.stdout, good.stdout + good.stderr
    tampered = tmp_path / "tampered"
    tampered.write_bytes(payload_file.read_bytes().replace(b"sha256:", b"sha256:0", 1))
    bad = subprocess.run([*verify, str(tampered)], capture_output=True, text=True)
    assert bad.returncode != 0


@pytest.mark.slow
def test_debian_skopeo_finds_our_attachments_where_it_cannot_verify_them(
    registry, base_image, keypair, capsys, tmp_path
):
    """Debian's containers/image still reads sigstore attachments (the .sig tag, the
    layers' media type and annotations) before its stub refuses to verify. Its messages
    then say how many signatures it found: one, two after a second signer, none on an
    unsigned image or on a tag re-pushed with another image. It runs PATH's skopeo even
    when MODELCAR_TEST_SKOPEO names another; where PATH's skopeo can verify, the policy
    test above covers it and this one is skipped."""
    private, public = keypair
    signed = base_image.copy_to(registry, "sig/found", "v1")
    unsigned = base_image.copy_to(registry, "sig/found-unsigned", "v1")
    assert run(capsys, "sign", signed, "--key", str(private), "--no-tls-verify").code == 0
    policy = make_policy(tmp_path / "policy", registry.host, public)

    def copy(image: str) -> str:
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        proc = policy.skopeo_copy(f"docker://{image}", f"dir:{out}", tool="skopeo")  # PATH's
        if proc.returncode == 0:
            pytest.skip("this skopeo verifies sigstore signatures: the policy test applies")
        return proc.stderr

    none = "A signature was required, but no signature exists"
    one = copy(signed)
    assert DEBIAN_DISABLED in one and none not in one and "None of the signatures" not in one
    assert none in copy(unsigned)
    assert run(capsys, "keygen", str(tmp_path / "second")).code == 0
    second = str(tmp_path / "second" / "cosign.key")
    assert run(capsys, "sign", signed, "--key", second, "--no-tls-verify").code == 0
    two = copy(signed)
    assert "None of the signatures were accepted" in two
    assert two.count(DEBIAN_DISABLED) == 2
    repush_other_image(base_image, signed)
    assert none in copy(signed)


# -- a signed index: `build --platform linux/amd64,linux/arm64 --sign-key` -----------------


@pytest.fixture
def multi_base(base_image, registry, tmp_path) -> str:
    return build_multiarch_base(base_image, registry, tmp_path / "multi-base")


def copied_digest(out) -> str:
    """The digest of the one image manifest skopeo copied into the dir: ``out`` (kept
    byte for byte: dir: takes OCI manifests as they are)."""
    return f"sha256:{hashlib.sha256((out / 'manifest.json').read_bytes()).hexdigest()}"


@pytest.mark.slow
def test_skopeo_policy_judges_each_platform_manifest_of_a_signed_index(
    hub_repo, registry, multi_base, keypair, capsys, tmp_path
):
    """containers/image checks the signature of the platform manifest it picks from an
    index (the host's, or --override-arch's), by tag, by the index digest and by the
    manifest's own digest. A build signed for two platforms passes for both; with the
    arm64 manifest's signature deleted, or the tag re-pushed with an index whose arm64
    entry is an unsigned build's, arm64 is refused ("no signature exists") while amd64,
    still signed, passes: the refusal is about that one platform. containers/image
    (skopeo 1.13.3) does not judge the index's own signature: the re-pushed index has
    none and amd64 passes (our `verify --key` checks it)."""
    private, public = keypair
    signed = build_index(
        capsys, registry, multi_base, tmp_path, "signed", "--sign-key", str(private)
    )
    unsigned = build_index(capsys, registry, multi_base, tmp_path, "unsigned")
    policy = make_policy(tmp_path / "policy", f"{registry.host}/models", public)
    outs = iter(range(100))

    def copy(
        image: str, *arch: str, every: bool = False
    ) -> tuple[subprocess.CompletedProcess[str], Path]:
        out = tmp_path / f"out-{next(outs)}"
        copy_all = ("--all",) if every else ()
        return policy.skopeo(*arch, "copy", "-q", *copy_all, "--src-tls-verify=false",
                             f"docker://{image}", f"dir:{out}"), out  # fmt: skip

    def accepted(image: str, arch: str) -> None:
        proc, out = copy(image, "--override-arch", arch)
        skip_if_sigstore_disabled(proc, "skopeo")
        assert proc.returncode == 0, f"{image} ({arch}): {proc.stderr}"
        assert copied_digest(out) == signed.by_arch[arch]

    def refused(image: str, *arch: str, every: bool = False) -> None:
        proc, _ = copy(image, *arch, every=every)
        assert proc.returncode != 0, f"{image} {arch} was accepted"
        assert f"Source image rejected: {NO_SIGNATURE}" in proc.stderr, proc.stderr

    default, _ = copy(signed.image)  # the host's platform: amd64 here
    skip_if_sigstore_disabled(default, "skopeo")
    assert default.returncode == 0, default.stderr
    for arch in ("amd64", "arm64"):
        accepted(signed.image, arch)
        accepted(signed.pinned(signed.index), arch)
    arm64 = signed.pinned(signed.by_arch["arm64"])
    accepted(arm64, "arm64")  # a manifest by its own digest: no index in between
    every, out = copy(signed.image, every=True)  # --all: each platform judged in turn
    assert every.returncode == 0, every.stderr
    assert {f"sha256:{p.name.split('.')[0]}" for p in out.glob("*.manifest.json")} == set(
        signed.by_arch.values()
    )
    refused(unsigned.image)
    refused(unsigned.image, "--override-arch", "arm64")

    delete_signature(registry, signed.repo, signed.by_arch["arm64"])
    accepted(signed.image, "amd64")
    for image in (signed.image, signed.pinned(signed.index), arm64):
        refused(image, "--override-arch", "arm64")
    refused(signed.image, every=True)

    # signed again (`modelcar sign` signs the index and each manifest): arm64 passes again
    res = run(capsys, "sign", signed.image, "--key", str(private), "--no-tls-verify")
    assert res.code == 0, res.err
    accepted(signed.image, "arm64")

    # the tag re-pushed: the same index, but its arm64 entry is the unsigned build's
    index = raw_manifest(registry, signed.repo, signed.index)
    swapped = {**index, "manifests": [
        m if m["platform"]["architecture"] != "arm64"
        else next(u for u in raw_manifest(registry, unsigned.repo, unsigned.index)["manifests"]
                  if u["platform"]["architecture"] == "arm64")
        for m in index["manifests"]
    ]}  # fmt: skip
    repushed = put_raw_manifest(registry, signed.repo, "signed", swapped)
    # containers/image judges the platform manifest it picks, not the index: this index
    # has no signature at all, and amd64 (its entry and signature unchanged) still passes
    assert signature_tag(registry, signed.repo, repushed).status_code == 404
    accepted(signed.image, "amd64")
    refused(signed.image, "--override-arch", "arm64")


@pytest.mark.slow
def test_podman_pull_judges_each_platform_manifest_of_a_signed_index(
    hub_repo, registry, multi_base, keypair, capsys, tmp_path, tmp_path_factory
):
    """podman pulls a signed two-platform build by tag, by the index digest, with --arch
    arm64, and the arm64 manifest by its own digest; with the arm64 manifest's signature
    deleted, --arch arm64 is refused ("no signature exists") and amd64 still pulls, also
    once the index's own signature is deleted too."""
    why = podman_available()
    if why:
        pytest.skip(why)
    podman = make_podman(tmp_path_factory.mktemp("podman"))
    try:
        check_podman_index_pulls(podman, registry, multi_base, keypair, capsys, tmp_path)
    finally:
        subprocess.run(judging_podman(podman, "rmi", "-a", "-f"), env=podman.env, check=False,
                       capture_output=True)  # fmt: skip
        podman.close()


def check_podman_index_pulls(podman, registry, multi_base, keypair, capsys, tmp_path) -> None:
    private, public = keypair
    signed = build_index(
        capsys, registry, multi_base, tmp_path, "signed", "--sign-key", str(private)
    )
    policy = make_policy(tmp_path / "policy", f"{registry.host}/models", public)

    def pulled(image: str, arch: str, *extra: str) -> None:
        proc = podman_pull(podman, policy, image, *extra)
        skip_if_sigstore_disabled(proc, "podman")
        assert proc.returncode == 0, f"{image} {extra}: {proc.stderr}"
        image_id = proc.stdout.strip().splitlines()[-1]
        got = subprocess.run(
            judging_podman(podman, "image", "inspect", "--format", "{{.Architecture}}", image_id),
            env=podman.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert got.stdout.strip() == arch, f"{image} {extra}: {got.stdout}"

    arm64 = signed.pinned(signed.by_arch["arm64"])
    pulled(signed.image, "amd64")  # the host's platform
    pulled(signed.pinned(signed.index), "amd64")
    pulled(signed.image, "arm64", "--arch", "arm64")
    pulled(signed.pinned(signed.index), "arm64", "--arch", "arm64")
    pulled(arm64, "arm64")  # by its own digest: no index in between
    delete_signature(registry, signed.repo, signed.by_arch["arm64"])
    pulled(signed.image, "amd64")
    for image in (signed.image, signed.pinned(signed.index), arm64):
        refused = podman_pull(podman, policy, image, "--arch", "arm64")
        assert refused.returncode != 0, f"{image} --arch arm64 was pulled"
        assert f"Source image rejected: {NO_SIGNATURE}" in refused.stderr, refused.stderr
    # podman judges the platform manifest it picks, not the index (as skopeo)
    delete_signature(registry, signed.repo, signed.index)
    pulled(signed.image, "amd64")
