"""Smoke run of the scripts/bench package: it runs end to end at a tiny size and writes a
table with a row per contender. Speed numbers are never asserted: CI machines differ."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = (
    "native",
    "native --stream",
    "modelcar buildah",
    "stock buildah",
    "olot + skopeo",
    "raw curl -T",
    "native 2 platforms",
    "native --modelpack",
)
# Columns of the main table that hold numbers for a contender that ran.
NUMERIC = ("wall s (median)", "MB/s", "peak RSS MB", "peak extra disk MB", "CPU s")

pytestmark = pytest.mark.skipif(
    shutil.which("docker-registry") is None or shutil.which("curl") is None,
    reason="needs docker-registry and curl",
)


def must_run(name: str) -> bool:
    """Contenders whose tools are here must produce numbers; the others may say why not."""
    if name in (
        "native",
        "native --stream",
        "raw curl -T",
        "native 2 platforms",
        "native --modelpack",
    ):
        return True
    if name == "stock buildah":
        return shutil.which("buildah") is not None
    if name == "olot + skopeo":
        tools = all(shutil.which(t) for t in ("umoci", "skopeo"))
        return tools and importlib.util.find_spec("olot") is not None
    # Our buildah engine: required once its module exists.
    return (
        shutil.which("buildah") is not None
        and (REPO / "modelcar_builder" / "engines" / "buildah" / "__init__.py").exists()
    )


def main_table(markdown: str) -> dict[str, dict[str, str]]:
    """The first table after the "## End to end" heading, as {contender: {column: cell}}."""
    rows: list[list[str]] = []
    for line in markdown.split("## End to end", 1)[1].splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    header, body = rows[0], rows[2:]
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in body}


@pytest.mark.timeout(120)
def test_quick_bench_writes_a_row_per_contender(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--quick", "--out", str(out), "--budget-min", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    table = main_table(text)
    assert set(table) == set(CONTENDERS), table.keys()
    for name in CONTENDERS:
        row = table[name]
        if row["status"].startswith("ok"):
            for column in NUMERIC:
                float(row[column])  # a number, whatever its value
        else:
            # e.g. "not available: ..." — allowed only where the tool is really missing
            assert not must_run(name), f"{name}: {row['status']}"
    assert "## Targets" in text and "## Machine" in text
    # From the Hub: every contender ran on both repos, and the overlap rows have numbers.
    hub = text.split("## From the Hub", 1)[1]
    for repo in ("bench/one-file", "bench/sharded"):
        for name in ("modelcar fetch", "snapshot_download", "modelcar build (fresh)",
                     "modelcar build --stream"):  # fmt: skip
            row = next(line for line in hub.splitlines() if line.startswith(f"| {repo} | {name} |"))
            assert row.rstrip().endswith("| ok |"), row
    overlap = hub.split("### Download and push at once", 1)[1]
    for name in ("fetch alone", "build after fetch", "modelcar build (fresh)"):
        row = next(line for line in overlap.splitlines() if line.startswith(f"| {name} |"))
        assert row.rstrip().endswith("| ok |") and float(row.split("|")[2]) > 0, row
    assert "python3 -m scripts.bench --quick" in text
    # The chart is made, or the report says why not.
    charts = tmp_path / "benchmarks"
    assert (charts / "throughput.png").exists() or "No charts:" in text
    # Nothing left behind in the scratch area but the report.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("modelcar-bench-")]
    assert leftovers == []


def test_bench_imports_without_pytest() -> None:
    """The benchmark and the Hub imitation it serves must not need the test framework:
    pytest is a test extra, the benchmark is not a test."""
    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "import scripts.bench.__main__, scripts.bench.report, scripts.bench.charts\n"
        "import tests.support.hubsim, tests.support.ports\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.timeout(120)
def test_verify_bench_writes_its_section_and_keeps_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Every run\n\nkept\n")
    argv = [sys.executable, "-m", "scripts.bench.verify_deep", "--size-gib", "0.01",
            "--rounds", "1", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n") and text.endswith("## Every run\n\nkept\n")
    rows = [line for line in text.split("## verify", 1)[1].splitlines() if line.startswith("| `")]
    names = [row.split("|")[1].strip() for row in rows]
    assert names == ["`verify (none)`", "`verify --deep (none)`", "`verify (gzip)`",
                     "`verify --deep (gzip)`"]  # fmt: skip
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        float(cells[1])  # wall seconds: a number, whatever its value
        assert int(cells[3]) > 0  # bytes read
    deep_read = int(rows[1].split("|")[4])
    assert deep_read > 10 * 1024 * 1024  # --deep read the whole ~10 MiB model
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("modelcar-bench-")] == []


@pytest.mark.timeout(120)
def test_parts_bench_writes_its_section_and_keeps_the_rest(tmp_path: Path) -> None:
    """scripts/bench/parts.py at a tiny size: 2 part processes then assemble, next to the
    one-pod build; the assembled image has the one-pod build's digest."""
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Every run\n\nkept\n")
    argv = [sys.executable, "-m", "scripts.bench.parts", "--size-mib", "2", "--shards", "2",
            "--cap-mbs", "50", "--parts", "2", "--rounds", "1", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n") and text.endswith("## Every run\n\nkept\n")
    section = text.split("## Parts: one model, N pods", 1)[1]
    rows = {
        cells[0]: cells
        for line in section.split("### N pods", 1)[0].splitlines()
        if line.startswith("| ") and not line.startswith("| N ")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {"one pod (no `--part`)", "2"}, rows
    for cells in rows.values():
        float(cells[1])  # wall seconds: a number, whatever its value
    assert rows["2"][7] == "yes"  # the same digest as the one-pod build
    assert float(rows["2"][5]) > 0  # the assemble ran
    assert "| 4 | 175 |" in section  # the 700 GB arithmetic
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("modelcar-bench-")] == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_peers_bench_writes_its_table_inside_from_the_hub(tmp_path: Path) -> None:
    """scripts/bench/peers.py at a tiny size, our two contenders only (the peers' venv
    would need PyPI): a row each with a time and a ratio, the --stream target, the load,
    spliced at the end of "## From the Hub" and the rest of the report kept."""
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## From the Hub\n\nhub\n\n## verify\n\nkept\n")
    argv = [sys.executable, "-m", "scripts.bench.peers", "--rounds", "1", "--shard-mib", "2",
            "--capped-shard-mib", "1", "--contenders",
            "modelcar build --engine native,modelcar build --stream",
            "--workdir", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    hub, _, rest = text.partition("### Peers side by side")
    assert hub.endswith("## From the Hub\n\nhub\n\n") and rest.endswith("\n## verify\n\nkept\n")
    rows = [line for line in rest.splitlines() if line.startswith("| `modelcar")]
    assert [r.split("|")[1].strip() for r in rows] == [
        "`modelcar build --engine native`",
        "`modelcar build --stream`",
    ]
    for row in rows:
        for cell in row.strip("|").split("|")[1:]:
            assert cell.strip().endswith("x)") and " s (" in cell, row  # a time and a ratio
    assert "| --stream <= 1.11 x the disk path's wall, capped |" in rest
    assert "load average" in rest
