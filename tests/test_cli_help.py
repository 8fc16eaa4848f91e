"""`--help` a new user can read: options in sections, every default shown, and the
top-level command list not cut short."""

from __future__ import annotations

import click
from click.testing import CliRunner

from modelcar_builder.cli import cli

SECTIONS = ["Source:", "Selection and layers:", "Image and base:", "Registry and auth:",
            "Engine:", "Download tuning:", "Outputs:"]  # fmt: skip


def _help(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_build_and_doctor_help_are_grouped_in_order():
    for command in ("build", "doctor"):
        out = _help(command)
        positions = [out.index(f"\n{title}\n") for title in SECTIONS]
        assert positions == sorted(positions), command
        assert "--tls-verify" in out.split("\nRegistry and auth:\n")[1].split("\nEngine:\n")[0]


def test_every_option_with_a_default_shows_it():
    for name in ("build", "doctor", "fetch", "prepare", "plan", "verify"):
        command = cli.commands[name]
        ctx = click.Context(command)
        for param in command.get_params(ctx):
            if (
                isinstance(param, click.Option)
                and not param.is_eager
                and param.default not in (None, False, ())
            ):
                assert param.show_default, f"{name} {param.opts[0]}"
    out = _help("build")
    for flag in ("--fetch-jobs", "--attempts", "--read-timeout"):
        entry = out.split(flag, 1)[1].split("\n  --", 1)[0]
        assert "default:" in entry, flag


def test_the_command_list_is_not_cut():
    out = _help()
    listing = out.split("Commands:\n", 1)[1].split("\n\n", 1)[0]
    assert len(listing.splitlines()) == len(cli.commands)
    assert "..." not in listing
