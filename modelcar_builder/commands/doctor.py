"""`modelcar doctor`: every check `build` runs before its download, printed as
PASS / WARN / FAIL / INFO lines (or JSON), in seconds. It takes exactly `build`'s
arguments: its parameters are `build`'s own objects, so the two cannot drift."""

from __future__ import annotations

import functools

import click

from modelcar_builder.commands.build import build
from modelcar_builder.commands.helpgroups import GroupedCommand
from modelcar_builder.commands.options import build_options
from modelcar_builder.pipeline import resolve_source
from modelcar_builder.preflight import Report, Request, diagnose
from modelcar_builder.report import dumps

_WIDTH = 9  # the longest check name, "workspace"


def _doctor(as_json: bool, **params) -> None:
    options = build_options(params)
    report = diagnose(Request(options), functools.partial(resolve_source, options.source_options))
    click.echo(dumps(report.as_dict()) if as_json else text(report))
    report.raise_first()  # error + hint on stderr, the first FAIL's exit code


def text(report: Report) -> str:
    lines = []
    for check in report.checks:
        lines.append(f"{check.status:<4}  {check.check:<{_WIDTH}}  {check.message}")
        if check.status in ("WARN", "FAIL") and check.fix:
            lines.append(f"{'':<4}  {'':<{_WIDTH}}  fix: {check.fix}")
    counts = report.as_dict()["counts"]
    lines.append(
        f"doctor: {counts['FAIL']} FAIL, {counts['WARN']} WARN, {counts['PASS']} PASS "
        f"in {report.seconds:.1f} s"
    )
    return "\n".join(lines)


doctor = GroupedCommand(
    "doctor",
    callback=_doctor,
    params=[
        *(p for p in build.params if p.name not in ("no_preflight", "as_json")),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the checks as JSON."),
    ],
    help="Check, in seconds and without downloading the model, everything `build` with "
    "the same arguments needs: Hub, disk, workspace, engine, registry push, outputs. "
    "Exits with the first FAIL's exit code.",
    short_help="Check a build's setup before downloading anything.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
