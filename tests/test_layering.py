"""The one-way house, checked: every import in the package points down the flow
CLI -> commands -> run -> pipeline/report -> engines -> stages (context, verify,
sources) -> infrastructure (registry, workspace, state, settings) -> vocabulary (oci,
plan, references) -> errors. A module may import its own rank or below, never above."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "modelcar_builder"

RANKS = [  # (rank, module prefixes); the longest matching prefix decides
    (9, ("cli", "__main__")),
    (8, ("commands", "api", "chains")),
    (7, ("run", "signed_build", "assembly")),
    (6, ("pipeline", "report", "preflight")),
    (5, ("engines", "buildopts")),
    (4, ("context", "verify", "source", "shards", "signing")),
    (3, ("registry", "settings", "workspace", "state")),
    (2, ("oci", "auth", "reference", "target", "plan", "selection", "progress", "parallel")),
    (2, ("shares",)),  # which layers each part of a model built by N pods builds
    (1, ("snapshot", "units", "errors", "")),
]


def rank(module: str) -> int:
    best = (-1, 0)
    for r, prefixes in RANKS:
        for p in prefixes:
            if module == p or module.startswith(p + ".") or p == "":
                best = max(best, (len(p), r))
    return best[1]


def imports() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__")
        found = out.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "modelcar_builder" or name.startswith("modelcar_builder."):
                    found.add(name.removeprefix("modelcar_builder").lstrip("."))
    return out


def test_every_import_points_down_the_flow():
    upward = [
        f"{m} (rank {rank(m)}) imports {t} (rank {rank(t)})"
        for m, targets in imports().items()
        for t in targets
        if rank(t) > rank(m)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_every_module_has_a_rank_and_engines_never_reach_for_the_hub():
    graph = imports()
    assert all(rank(m) > 1 or m.startswith(("snapshot", "units", "errors")) or m == ""
               for m in graph), [m for m in graph if rank(m) == 1]  # fmt: skip
    to_sources = [(m, t) for m, ts in graph.items() if m.startswith("engines")
                  for t in ts if t.startswith("source")]  # fmt: skip
    assert not to_sources


def test_no_module_is_over_500_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long


def test_no_assert_statement_in_the_package():
    """Checks and type narrowing are ``if ...: raise`` (a typed error) or typing.cast:
    ``python -O`` strips asserts, and a failed one is a traceback, not an exit code."""
    found = {
        f"{p.relative_to(PACKAGE)}:{node.lineno}"
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Assert)
    }
    assert not found


# The process environment is read through settings.environment() only. auth.py sits below
# settings (its callers pass the mapping; os.environ is its default for direct callers).
ENVIRONMENT_READERS = {"settings.py", "auth.py"}


def test_only_settings_reads_the_environment():
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                    and isinstance(node.value, ast.Name) and node.value.id == "os"):  # fmt: skip
                readers.add(str(path.relative_to(PACKAGE)))
    assert readers <= ENVIRONMENT_READERS, readers - ENVIRONMENT_READERS
    assert "settings.py" in readers


LOGGERS_PENDING: set[str] = set()


def test_every_module_logs_below_modelcar_under_its_own_name():
    """cli.py puts the one handler on "modelcar"; each module logs on
    "modelcar.<its module path>" (modelcar.engines.native, ...), so a line says where it
    comes from and --debug/-q still reach every module through the tree."""
    wrong = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in LOGGERS_PENDING or str(rel) == "cli.py":
            continue
        own = ".".join(["modelcar", *(p for p in rel.with_suffix("").parts if p != "__init__")])
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr == "getLogger" and node.args:
                name = node.args[0]
                if not (isinstance(name, ast.Constant) and name.value == own):
                    wrong[str(rel)] = ast.unparse(name)
    assert not wrong, wrong


def test_no_test_imports_another_test():
    """Shared builders and fixtures live in tests/support/; a test module importing another
    runs that module's fixtures and tests twice and ties the two together."""
    tests = Path(__file__).parent
    offenders = []
    for path in tests.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n.startswith("tests.test_") for n in names):
                offenders.append(path.name)
    assert not offenders
