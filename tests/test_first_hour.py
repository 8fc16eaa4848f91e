"""What a new user meets first: a base image that cannot be read says which option to
change, and `prepare` names its base by digest (a tag moves), with build's registry options."""

from __future__ import annotations

import pytest

from modelcar_builder import errors
from tests.support.clitools import run
from tests.support.models import SMALL_MODEL, make_model
from tests.support.ports import free_port


def test_an_unreachable_base_names_base_image_in_its_hint(capsys, tmp_path):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    unreachable = f"127.0.0.1:{free_port()}/ubi9/ubi-micro:9"
    res = run(capsys, "build", str(model), "--engine", "native", "--base-image", unreachable,
              "--image", f"oci:{tmp_path}/out:v1", "--workspace", str(tmp_path / "ws"))  # fmt: skip
    assert res.code == errors.RegistryUnreachable.exit_code
    assert f"error: cannot read the base image {unreachable}" in res.err
    hint = [line for line in res.err.splitlines() if line.startswith("hint:")]
    assert len(hint) == 1 and "--base-image" in hint[0] and "scratch" in hint[0]
    assert "Traceback" not in res.err


def _from_line(res) -> str:
    from pathlib import Path

    containerfile = (Path(res.last_line) / "Containerfile").read_text()
    return next(line for line in containerfile.splitlines() if line.startswith("FROM "))


@pytest.mark.slow
def test_prepare_pins_a_readable_base_by_its_registry_digest(capsys, tmp_path, base_image):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    res = run(capsys, "prepare", str(model), "--workspace", str(tmp_path / "ws"),
              "--base-image", base_image.ref, "--no-tls-verify")  # fmt: skip
    assert res.code == 0, res.err
    assert _from_line(res) == f"FROM {base_image.ref}@{base_image.digest}"


def test_prepare_keeps_the_tag_of_an_unreadable_base_with_one_warning(capsys, tmp_path):
    model = make_model(tmp_path / "m", SMALL_MODEL)
    unreachable = f"127.0.0.1:{free_port()}/ubi9/ubi-micro:9"
    res = run(capsys, "prepare", str(model), "--workspace", str(tmp_path / "ws"),
              "--base-image", unreachable)  # fmt: skip
    assert res.code == 0, res.err
    assert _from_line(res) == f"FROM {unreachable}"
    warnings = [line for line in res.err.splitlines() if "cannot read base image" in line]
    assert len(warnings) == 1 and "FROM keeps the tag" in warnings[0]
