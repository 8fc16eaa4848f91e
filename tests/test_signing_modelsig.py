"""The OpenSSF model signature as we make it (model_signing's signer) and read it for
`verify --deep --key`; model_signing's own CLI is the judge of what we make."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys

import pytest

from modelcar_builder.errors import UsageError
from modelcar_builder.signing import keys, modelsig


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    files = {"config.json": b'{"a": 1}', "sub/w.bin": b"\x00" * 1000, "left-out.txt": b"no"}
    for path, data in files.items():
        (root / path).write_bytes(data)
    return root, files


def test_only_the_selected_files_are_signed_and_the_library_agrees(tree, tmp_path):
    root, files = tree
    private, public = keys.write_pair(tmp_path / "k", b"pw")
    key = keys.load_private_key(private, b"pw")
    sig = modelsig.sign_tree(root, ["config.json", "sub/w.bin"], key)
    signed = modelsig.signed_files(sig, keys.load_public_key(public))
    assert signed is not None
    signed.pop(modelsig.IGNORED)
    assert signed == {p: hashlib.sha256(files[p]).hexdigest() for p in ("config.json", "sub/w.bin")}
    # model_signing's CLI checks the tree as it would land in /models (the left-out file
    # is not shipped there), with model.sig beside the files
    shipped = tmp_path / "shipped"
    (shipped / "sub").mkdir(parents=True)
    for p in ("config.json", "sub/w.bin"):
        (shipped / p).write_bytes(files[p])
    (shipped / "model.sig").write_bytes(sig)
    argv = [sys.executable, "-m", "model_signing", "verify", "key", "--signature",
            str(shipped / "model.sig"), "--public_key", str(public), str(shipped)]  # fmt: skip
    ok = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_another_key_or_a_changed_statement_reads_as_unsigned(tree, tmp_path):
    root, _ = tree
    private, _ = keys.write_pair(tmp_path / "k", b"pw")
    _, stranger = keys.write_pair(tmp_path / "s", b"pw")
    key = keys.load_private_key(private, b"pw")
    sig = modelsig.sign_tree(root, ["config.json"], key)
    assert modelsig.signed_files(sig, keys.load_public_key(stranger)) is None
    bundle = json.loads(sig)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    assert modelsig.signed_files(json.dumps(bundle).encode(), key.public) is None


def test_a_model_file_named_model_sig_is_refused(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "model.sig").write_bytes(b"theirs")
    private, _ = keys.write_pair(tmp_path / "k", b"pw")
    with pytest.raises(UsageError) as exc:
        modelsig.sign_tree(root, ["model.sig"], keys.load_private_key(private, b"pw"))
    assert "model.sig" in exc.value.message


def test_the_signature_layer_holds_exactly_models_model_sig():
    layer = modelsig.signature_layer(b"sig-bytes")
    assert len(layer) % 512 == 0
    assert modelsig.read_from_layer(layer) == b"sig-bytes"
    listing = subprocess.run(["tar", "-tvf", "-"], input=layer, capture_output=True, check=True)
    names = [line.split()[-1] for line in listing.stdout.decode().splitlines()]
    assert names == ["models/", "models/model.sig"]
