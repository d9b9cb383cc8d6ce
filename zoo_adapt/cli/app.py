"""The `zoo-adapt` group: global options (--registry, --disable-plugin, --debug), one
line for every error, exit codes, and the commands of train.py, rank.py, use.py,
catalog.py and ship.py. Nothing here imports torch, so `zoo-adapt list` answers
quickly; each command imports what it needs when it runs."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator

import click

from zoo_adapt import __version__
from zoo_adapt.cli import catalog, rank, ship, train, use
from zoo_adapt.engine.processes import lost_how
from zoo_adapt.errors import DEBUG_VAR, ZooAdaptError, ZooAdaptWarning, clip, debugging, environment_problem
from zoo_adapt.zoo.plugins import disabled
from zoo_adapt.zoo.registry import add_registry


class _Group(click.Group):
    """Turns ZooAdaptError into one line on stderr and exit status 1 (the traceback
    with --debug or ZOO_ADAPT_DEBUG=1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZooAdaptError as e:
            if debugging():
                raise
            raise click.ClickException(str(e)) from None


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Plugin problems (a broken or colliding plugin) as one `warning:` line each on
    stderr, for this command only."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ZooAdaptWarning):
                click.echo(f"warning: {message}", err=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.simplefilter("always", ZooAdaptWarning)
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _debugging() -> Iterator[None]:
    """--debug: $ZOO_ADAPT_DEBUG for this command (plugins and workers see it too)."""
    before = os.environ.get(DEBUG_VAR)
    os.environ[DEBUG_VAR] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DEBUG_VAR, None)
        else:
            os.environ[DEBUG_VAR] = before


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zoo-adapt")
@click.option(
    "--registry",
    "registries",
    multiple=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Also read backbone names from this registry file (repeatable; "
    "$ZOO_ADAPT_REGISTRY works too). It may re-point or rename names.",
)
@click.option(
    "--disable-plugin",
    "disable",
    multiple=True,
    metavar="NAME",
    help="Skip this plugin (repeatable; $ZOO_ADAPT_DISABLE_PLUGINS=a,b works too).",
)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error ($ZOO_ADAPT_DEBUG=1 works too).")
@click.pass_context
def cli(ctx: click.Context, registries: tuple[str, ...], disable: tuple[str, ...], debug: bool) -> None:
    """Adapt pretrained vision backbones to your own images."""
    if debug:
        ctx.with_resource(_debugging())
    ctx.with_resource(_one_line_warnings())
    ctx.with_resource(disabled(disable))
    for path in registries:
        add_registry(path)


for _module in (train, rank, use, catalog, ship):
    _module.register(cli)


def main() -> None:
    """Entry point: every error is one line on stderr (usage errors exit 2, others 1;
    Ctrl-C 130, SIGTERM 143); with --debug or ZOO_ADAPT_DEBUG=1 the traceback too (a
    plugin's failure with the plugin's own traceback as its cause)."""
    rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" else "0"
    try:
        code = cli.main(prog_name="zoo-adapt", standalone_mode=False)
    except ZooAdaptError:  # reaches here only when debugging: see _Group
        traceback.print_exc()
        code = 1
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        click.echo(f"Error: {e.format_message()}{hint}", err=True)
        code = e.exit_code
    except click.ClickException as e:
        agreed = getattr(e.__context__, "seen_by", None) is not None  # every process has it: rank 0 says it
        if rank == "0" or not agreed:
            click.echo(f"Error: {'' if rank == '0' else f'(rank {rank}) '}{e.format_message()}", err=True)
        code = e.exit_code
    except (click.Abort, KeyboardInterrupt) as e:
        # click turns KeyboardInterrupt and EOFError into Abort; look at what it was
        cause = e.__cause__ or e.__context__ if isinstance(e, click.Abort) else e
        if isinstance(cause, EOFError):
            _traceback()
            click.echo(f"Error: unexpected end of a file ({cause or 'EOF'})", err=True)
            code = 1
        else:
            message = getattr(cause, "message", None) or "interrupted"
            if rank == "0":
                click.echo(message, err=True)
            code = 143 if getattr(cause, "signal_name", "SIGINT") == "SIGTERM" else 130
    except Exception as e:  # a bug, a broken torch install, or a failure we did not foresee: still one line
        _traceback()
        click.echo(f"Error: {environment_problem(e) or _unexpected(e)}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def _traceback() -> None:
    if debugging():
        traceback.print_exc()


def _unexpected(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "out of memory" in text.lower():
        return f"the device ran out of memory ({text[:120]}); lower --batch-size or --image-size"
    lost = lost_how(text) if os.environ.get("WORLD_SIZE", "1") != "1" else None
    if lost:
        return f"another process of this run stopped ({lost}); its own error says why"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {clip(str(e.filename or ''), 80)}".rstrip(": ")
    return (
        f"{type(e).__name__}: {text[:200]} (this is a bug in zoo-adapt or a plugin; rerun with "
        "ZOO_ADAPT_DEBUG=1 for the traceback)"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
