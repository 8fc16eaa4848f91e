"""The `modelcar` command group: registers the commands, sets up the one logger tree,
maps errors to exit codes. The commands live in ``commands/``, one module each."""

from __future__ import annotations

import errno
import logging
import signal
import sys
import traceback

import click

from modelcar_builder import __version__
from modelcar_builder.commands.assemble import assemble_cmd
from modelcar_builder.commands.build import build
from modelcar_builder.commands.doctor import doctor
from modelcar_builder.commands.fetch import fetch_cmd, prepare
from modelcar_builder.commands.keygen import keygen
from modelcar_builder.commands.options import spell_tls_verify
from modelcar_builder.commands.plan import plan
from modelcar_builder.commands.sign import sign
from modelcar_builder.commands.verify import verify
from modelcar_builder.errors import InsufficientSpace, Interrupted, ModelcarError, UsageError
from modelcar_builder.settings import environment

log = logging.getLogger("modelcar")  # the tree: each module logs on "modelcar.<module>"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time, not the one at setup (a test's
    capture, or a redirected stderr, may have been replaced or closed since)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


EXIT_CODES = """Exit codes (README.md lists each): 0 ok; 1 unexpected I/O; 2 usage;
10-18 source, selection, plan and base image; 20-21 download; 30-32 workspace and
outputs; 40-43 engine; 50-52 registry; 60-61 verification (61: no such image);
62-63 assemble (62: a part missing, 63: parts of different builds);
130 interrupted (rerun to continue)."""


class _Commands(click.Group):
    """The group; hands a command that has --tls-verify its arguments with the
    ``--tls-verify=VALUE`` spelling turned into the flag click parses."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None and any(p.name == "tls_verify" for p in cmd.params):
            rest = spell_tls_verify(rest)
        return name, cmd, rest


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES,
)
@click.version_option(__version__, prog_name="modelcar")
@click.option("--debug", is_flag=True, envvar="MODELCAR_DEBUG", help="Show tracebacks.")
@click.option("-q", "--quiet", is_flag=True, envvar="MODELCAR_QUIET", help="Only warnings.")
def cli(debug: bool, quiet: bool) -> None:
    """Build KServe ModelCar images from Hugging Face repos or local directories."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("modelcar: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)


for command in (plan, fetch_cmd, prepare, build, assemble_cmd, doctor, verify, keygen, sign):
    cli.add_command(command)
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            param.show_envvar = True  # every option says which MODELCAR_* sets it
        if isinstance(param, click.Option) and param.default is not None:
            param.show_default = True  # every default in --help, not only some


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or environment().get("MODELCAR_DEBUG") not in (None, "", "0")
    # Kubernetes stops a pod with SIGTERM: unwind like Ctrl-C so state is saved and the
    # exit code says "interrupted, rerun to continue" instead of a bare kill.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _run(args, debug)
    finally:
        # Run in-process (tests, an embedding program), the caller's handler comes back.
        signal.signal(signal.SIGTERM, previous)


def _run(args: list[str], debug: bool) -> None:
    try:
        cli.main(args=args, prog_name="modelcar", standalone_mode=False)
    except ModelcarError as exc:
        _fail(exc, debug)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _fail(Interrupted("interrupted"), debug=False)
    except OSError as exc:
        # Last resort for I/O failures no stage anticipated: still one line, no traceback.
        _fail(_os_error(exc), debug)
    except click.ClickException as exc:
        # click's own usage errors: one line and a pointer to --help, like ours.
        hint = "see --help; exit codes are listed in README.md"
        _fail(UsageError(exc.format_message(), hint=hint), debug=False)
    sys.exit(0)


def _os_error(exc: OSError) -> ModelcarError:
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return InsufficientSpace(
            f"no space left on the device{where}",
            hint="give the volume more room (`modelcar plan` says how much), then rerun: "
            "what is downloaded is kept",
        )
    return ModelcarError(f"{exc.strerror or exc}{where}", hint="rerun with --debug for details")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _fail(exc: ModelcarError, debug: bool) -> None:
    """One error line, one hint line, the error's own exit code; --debug adds the
    traceback above them and changes nothing else."""
    if debug:
        traceback.print_exc()
    click.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)
