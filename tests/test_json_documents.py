"""Every JSON document the CLI prints carries a version and validates against its schema
in docs/schemas/; `build --json` prints that document and nothing else on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.support.clitools import run

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "modelcar_builder" / "examples" / "tiny-model"


def _schema(name: str) -> dict:
    schema = json.loads((REPO / "docs" / "schemas" / f"{name}.v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _valid(doc: dict, name: str) -> None:
    jsonschema.Draft202012Validator(_schema(name)).validate(doc)
    assert doc["version"] == 1


def test_build_json_is_the_only_stdout_and_equals_the_report(tmp_path, capsys):
    report = tmp_path / "report.json"
    result = run(capsys, "build", str(TINY), "--engine", "native", "--base-image", "scratch",
                 "--image", f"oci:{tmp_path}/out:v1", "--workspace", str(tmp_path / "ws"),
                 "--report", str(report), "--json")  # fmt: skip
    assert result.code == 0, result.err
    doc = json.loads(result.out)  # one document: any other line would not parse
    _valid(doc, "build-report")
    assert doc["image_url"].startswith(f"oci:{tmp_path}/out@sha256:")
    assert json.loads(report.read_text()) == doc


def test_doctor_and_plan_json_validate(tmp_path, capsys):
    doctor = run(capsys, "doctor", str(TINY), "--engine", "native", "--base-image", "scratch",
                 "--image", f"oci:{tmp_path}/out:v1", "--workspace", str(tmp_path / "ws"),
                 "--json")  # fmt: skip
    _valid(json.loads(doctor.out), "doctor")
    plan = run(capsys, "plan", str(TINY), "--json")
    _valid(json.loads(plan.out), "plan")


def test_verify_json_validates_plain_and_deep(tmp_path, capsys):
    image, report = f"oci:{tmp_path}/out:v1", tmp_path / "report.json"
    built = run(capsys, "build", str(TINY), "--engine", "native", "--base-image", "scratch",
                "--image", image, "--workspace", str(tmp_path / "w"),
                "--report", str(report))  # fmt: skip
    assert built.code == 0, built.err
    plain = json.loads(run(capsys, "verify", image, "--json").out)
    _valid(plain, "verify")
    assert plain["deep"] is None
    deep = json.loads(run(capsys, "verify", image, "--json", "--deep", "--report", str(report)).out)
    _valid(deep, "verify")
    assert deep["deep"]["blobs_hashed"] == 1


@pytest.mark.parametrize("name", ["build-report", "doctor", "plan", "verify"])
def test_a_schema_refuses_a_document_of_another_version(name):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 2, "document": name}, _schema(name))
