"""Tekton Chains' input artifact (modelcar_builder.chains): the Hub repo at the commit a
real build (from the Hub imitation to the loopback registry) reports, as the object result
MODEL_SOURCE_ARTIFACT_INPUTS; none for a directory source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from modelcar_builder.chains import RESULT
from tests.support.clitools import run

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "modelcar_builder" / "examples" / "tiny-model"
REPO = "acme/tiny"


def _build(capsys, source: str, image: str, tmp_path: Path) -> Path:
    report = tmp_path / "report.json"
    res = run(capsys, "build", source, "--engine", "native", "--image", image,
              "--workspace", str(tmp_path / "ws"), "--base-image", "scratch",
              "--no-tls-verify", "--report", str(report))  # fmt: skip
    assert res.code == 0, res.err
    return report


def _chains(report: Path, results: Path, endpoint: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_ENDPOINT=endpoint)
    return subprocess.run([sys.executable, "-m", "modelcar_builder.chains", str(report),
                           str(results)], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=60)  # fmt: skip


def test_hub_build_gives_its_repo_and_commit_as_the_input_artifact(hub, registry, capsys,
                                                                  tmp_path):  # fmt: skip
    files = {p.relative_to(TINY).as_posix(): p.read_bytes() for p in TINY.rglob("*") if p.is_file()}
    hub.add_repo(REPO, files)
    report = _build(capsys, f"hf://{REPO}@main", f"{registry.host}/chains/tiny:v1", tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    proc = _chains(report, results, hub.endpoint)
    assert proc.returncode == 0, proc.stderr
    artifact = json.loads((results / RESULT).read_text())
    assert artifact == {"uri": f"{hub.endpoint}/{REPO}", "digest": f"sha1:{hub.head(REPO)}"}


def test_directory_build_has_no_input_artifact(registry, capsys, tmp_path):
    report = _build(capsys, str(TINY), f"{registry.host}/chains/dir:v1", tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    proc = _chains(report, results, "http://127.0.0.1:9")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["commit"] is None
    assert not (results / RESULT).exists()
