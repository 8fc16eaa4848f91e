"""Credential sources, their precedence, and the private authfile handed to buildah/skopeo."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from pathlib import Path

import pytest

from modelcar_builder.auth import (
    Credentials,
    default_ca_file,
    private_authfile,
    resolve_credentials,
)
from modelcar_builder.errors import UsageError
from modelcar_builder.registry import RegistryClient
from tests.support.registry import RegistryInstance, private_containers_env

HOST = "reg.example:5000"
OPENSHIFT = "image-registry.openshift-image-registry.svc:5000"


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def _authjson(user: str, password: str, host: str = HOST) -> dict:
    return {"auths": {host: {"auth": _auth(user, password)}}}


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """Every source populated with a different user, so the winner is visible."""
    home = tmp_path / "home"
    paths = {
        "home": home,
        "explicit": _write(tmp_path / "explicit.json", _authjson("explicit", "p1")),
        "env_file": _write(tmp_path / "env-auth.json", _authjson("envfile", "p2")),
        "token_file": tmp_path / "token",
        "sa_token": tmp_path / "sa" / "token",
        "xdg": _write(tmp_path / "run" / "containers" / "auth.json", _authjson("xdg", "p4")),
        "config": _write(home / ".config/containers/auth.json", _authjson("config", "p5")),
        "docker": _write(home / ".docker/config.json", _authjson("docker", "p6")),
    }
    paths["token_file"].write_text("  tok3\n")
    paths["sa_token"].parent.mkdir()
    paths["sa_token"].write_text("satoken\n")
    return paths


def _resolve(layout: dict[str, Path], host: str = HOST, **overrides: object) -> Credentials | None:
    kwargs: dict[str, object] = {
        "authfile": layout["explicit"],
        "token_file": layout["token_file"],
        "env": {
            "REGISTRY_AUTH_FILE": str(layout["env_file"]),
            "XDG_RUNTIME_DIR": str(layout["xdg"].parent.parent),
            "PATH": "/usr/bin:/bin",
        },
        "home": layout["home"],
        "sa_token_path": layout["sa_token"],
    }
    kwargs.update(overrides)
    return resolve_credentials(host, **kwargs)  # type: ignore[arg-type]


def test_precedence_first_match_wins(layout: dict[str, Path]) -> None:
    env = {
        "REGISTRY_AUTH_FILE": str(layout["env_file"]),
        "XDG_RUNTIME_DIR": str(layout["xdg"].parent.parent),
    }
    creds = _resolve(layout)
    assert creds is not None and creds.username == "explicit"
    assert creds.source == f"authfile {layout['explicit']}"

    creds = _resolve(layout, authfile=None)
    assert creds is not None and creds.username == "envfile"

    creds = _resolve(layout, authfile=None, env={"XDG_RUNTIME_DIR": env["XDG_RUNTIME_DIR"]})
    assert creds == Credentials("serviceaccount", "tok3", f"token file {layout['token_file']}")

    no_env = {"XDG_RUNTIME_DIR": env["XDG_RUNTIME_DIR"]}
    creds = _resolve(layout, authfile=None, token_file=None, env=no_env)
    assert creds is not None and creds.username == "xdg"  # SA token is for OpenShift only

    creds = _resolve(layout, host=OPENSHIFT, authfile=None, token_file=None, env=no_env)
    assert creds is not None
    assert (creds.username, creds.password) == ("serviceaccount", "satoken")
    assert creds.source.startswith("service account token ")

    creds = _resolve(layout, authfile=None, token_file=None, env={})
    assert creds is not None and creds.username == "config"

    layout["config"].unlink()
    creds = _resolve(layout, authfile=None, token_file=None, env={})
    assert creds is not None and creds.username == "docker"
    assert creds.source == f"authfile {layout['docker']}"

    layout["docker"].unlink()
    assert _resolve(layout, authfile=None, token_file=None, env={}) is None


def test_files_without_the_host_fall_through(layout: dict[str, Path]) -> None:
    _write(layout["explicit"], _authjson("other", "x", host="elsewhere.io"))
    _write(layout["env_file"], _authjson("other", "x", host="elsewhere.io"))
    creds = _resolve(layout, token_file=None)
    assert creds is not None and creds.username == "xdg"


def test_missing_registry_auth_file_is_ignored_but_explicit_is_an_error(
    layout: dict[str, Path], tmp_path: Path
) -> None:
    creds = _resolve(
        layout, authfile=None, token_file=None, env={"REGISTRY_AUTH_FILE": str(tmp_path / "no")}
    )
    assert creds is not None and creds.username == "config"
    with pytest.raises(UsageError, match="does not exist"):
        _resolve(layout, authfile=tmp_path / "nope.json")


def test_token_file_errors(layout: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        _resolve(layout, authfile=None, env={}, token_file=empty)
    with pytest.raises(UsageError, match="cannot read token file"):
        _resolve(layout, authfile=None, env={}, token_file=tmp_path / "missing")


def test_entry_formats(tmp_path: Path) -> None:
    secret = "pa:ss:word"  # colons after the first belong to the password
    f = _write(
        tmp_path / "a.json",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": _auth("hubuser", "hubpass")},
                "http://plain.example": {"username": "u2", "password": "p2"},
                "quay.io": {"auth": _auth("quayall", secret)},
                "quay.io/team": {"auth": _auth("quayteam", "t")},
                "id.example": {"identitytoken": "refresh-me"},
            }
        },
    )
    kw = {"authfile": f, "env": {}, "home": tmp_path}
    hub = resolve_credentials("docker.io", **kw)
    assert hub is not None and (hub.username, hub.password) == ("hubuser", "hubpass")
    plain = resolve_credentials("plain.example", **kw)
    assert plain is not None and plain.username == "u2"
    whole = resolve_credentials("quay.io", **kw)
    assert whole is not None and (whole.username, whole.password) == ("quayall", secret)
    team = resolve_credentials("quay.io", repository="team/model", **kw)
    assert team is not None and team.username == "quayteam"
    ident = resolve_credentials("id.example", **kw)
    assert ident is not None and ident.identity_token == "refresh-me"
    assert resolve_credentials("nothere.example", **kw) is None


def test_malformed_auth_names_file_not_content(tmp_path: Path) -> None:
    bad = base64.b64encode(b"no-colon-secret").decode()
    f = _write(tmp_path / "bad.json", {"auths": {HOST: {"auth": bad}}})
    with pytest.raises(UsageError) as info:
        resolve_credentials(HOST, authfile=f, env={}, home=tmp_path)
    assert str(f) in str(info.value) and "no-colon-secret" not in str(info.value)
    notjson = tmp_path / "x.json"
    notjson.write_text("{")
    with pytest.raises(UsageError, match="cannot read authfile"):
        resolve_credentials(HOST, authfile=notjson, env={}, home=tmp_path)


def _fake_helper(bindir: Path, name: str, username: str, secret: str) -> None:
    bindir.mkdir(exist_ok=True)
    script = bindir / f"docker-credential-{name}"
    # Answers only for HOST, like a real helper keyed by server URL.
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        "read host\n"
        f'[ "$host" = "{HOST}" ] || {{ echo "credentials not found" >&2; exit 1; }}\n'
        f'printf \'{{"ServerURL":"%s","Username":"{username}","Secret":"{secret}"}}\' "$host"\n'
    )
    script.chmod(0o755)


def test_credential_helpers(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _fake_helper(bindir, "vault", "helperuser", "helpersecret")
    _fake_helper(bindir, "store", "<token>", "idtok")
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    f = _write(tmp_path / "c.json", {"credHelpers": {HOST: "vault"}, "credsStore": "store"})
    creds = resolve_credentials(HOST, authfile=f, env=env, home=tmp_path)
    assert creds is not None
    assert (creds.username, creds.password) == ("helperuser", "helpersecret")
    assert creds.source == "credential helper docker-credential-vault"

    g = _write(tmp_path / "d.json", {"credsStore": "store"})
    creds = resolve_credentials(HOST, authfile=g, env=env, home=tmp_path)
    assert creds is not None and creds.identity_token == "idtok"
    assert resolve_credentials("other.example", authfile=g, env=env, home=tmp_path) is None

    missing = _write(tmp_path / "e.json", {"credsStore": "not-installed"})
    assert resolve_credentials(HOST, authfile=missing, env=env, home=tmp_path) is None


def test_repr_hides_secrets() -> None:
    creds = Credentials("serviceaccount", "s3cr3t-token", "token file /t", identity_token="idt")
    text = repr(creds)
    assert "s3cr3t" not in text and "idt'" not in text
    assert "serviceaccount" in text and "token file /t" in text


def test_default_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "service-ca.crt"
    assert default_ca_file(ca) is None
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert default_ca_file(ca) == str(ca)
    assert default_ca_file(ca, host=OPENSHIFT) == str(ca)
    assert default_ca_file(ca, host="quay.io") is None  # would hide the public CAs


def test_private_authfile_is_private_and_removed(tmp_path: Path) -> None:
    creds = Credentials("serviceaccount", "x" * 900, "test")
    with private_authfile(HOST, creds, directory=tmp_path) as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        entry = json.loads(path.read_text())["auths"][HOST]
        assert base64.b64decode(entry["auth"]).decode() == f"serviceaccount:{'x' * 900}"
        # It round-trips through our own reader.
        again = resolve_credentials(HOST, authfile=path, env={}, home=tmp_path)
        assert again is not None and again.password == "x" * 900
    assert not path.exists() and not path.parent.exists()

    with pytest.raises(RuntimeError), private_authfile(HOST, creds, directory=tmp_path) as path:
        raise RuntimeError("boom")
    assert not path.parent.exists()

    with private_authfile(HOST, None, directory=tmp_path) as path:
        assert json.loads(path.read_text()) == {"auths": {}}


def test_resolved_creds_work_against_htpasswd_registry(
    session_registry_htpasswd: RegistryInstance, tmp_path: Path
) -> None:
    reg = session_registry_htpasswd
    assert reg.password is not None and len(reg.password) > 800
    token_file = tmp_path / "sa-token"
    token_file.write_text(reg.password + "\n")
    creds = resolve_credentials(reg.host, token_file=token_file, env={}, home=tmp_path)
    assert creds is not None
    with RegistryClient(reg.host, creds, plain_http=True) as client:
        client.ping()

    # skopeo reads the private authfile (creds never on its argv).
    with private_authfile(reg.host, creds, directory=tmp_path) as authfile:
        proc = subprocess.run(
            ["skopeo", "list-tags", "--tls-verify=false", "--authfile", str(authfile),
             f"docker://{reg.host}/nothing/here"],
            env=private_containers_env(tmp_path / "containers"),
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        # Authenticated: the registry answers 404 for the unknown repository, not 401.
        assert "404" in proc.stderr, proc.stderr
        with private_authfile(reg.host, None, directory=tmp_path) as empty:
            denied = subprocess.run(
                [*proc.args[:4], str(empty), proc.args[-1]],
                env=private_containers_env(tmp_path / "containers"),
                capture_output=True,
                text=True,
                check=False,
            )
        assert "401" in denied.stderr or "unauthorized" in denied.stderr.lower(), denied.stderr
