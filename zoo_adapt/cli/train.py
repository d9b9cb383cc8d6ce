"""`zoo-adapt finetune` and `zoo-adapt lr-find`: one flag per option that
job/config.py declares, checked there; the job runs in zoo_adapt.job.finetune (imported
when the command runs: it needs torch)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click
from click.core import ParameterSource

from zoo_adapt.engine import processes
from zoo_adapt.errors import ZooAdaptError, quote
from zoo_adapt.job.config import build_config, declarations, value_type
from zoo_adapt.job.prechecks import precheck
from zoo_adapt.zoo.options import closest
from zoo_adapt.zoo.registry import tomllib


def register(cli: click.Group) -> None:
    for command in (finetune, lr_find):
        cli.add_command(command)


def config_options(skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None):
    """One click option per FinetuneConfig field, from its declaration (type, help,
    default shown); values are checked by the config reader, the same way as a file's.
    `skip`: fields another command does not take; `defaults`: the defaults it shows
    instead (it applies them itself)."""

    def decorate(fn):
        for name, field in reversed(list(declarations().items())):
            if name == "adapt_options" or name in skip:
                continue  # --adapt-option KEY=VALUE, below
            meta, (kind, _) = field.metadata, value_type(name)
            flag = "--" + name.replace("_", "-")
            default = (defaults or {}).get(name, field.default)
            show = default is not None
            if kind is list:
                fn = click.option(
                    flag,
                    *meta["flags"],
                    name,
                    multiple=True,
                    type=_Choice(meta["choices"]) if meta["choices"] else None,
                    metavar="NAME",
                    help=meta["help"] + " [repeatable]",
                )(fn)
            elif kind is bool:
                single = name in ("resume", "select_with_target_labels")
                decl = flag if single else f"{flag}/--no-{flag[2:]}"
                fn = click.option(
                    decl,
                    *meta["flags"],
                    name,
                    is_flag=single or None,
                    default=default,
                    show_default=show and not single,
                    help=meta["help"],
                )(fn)
            else:
                fn = click.option(
                    flag,
                    *meta["flags"],
                    name,
                    type=_type(kind, meta),
                    default=default,
                    show_default=show,
                    help=meta["help"],
                    **({"cls": _InstalledMethods} if name == "adapt" else {}),
                )(fn)
        return fn

    return decorate


_config_options = config_options()


def given_options(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The options the user typed (or set in the environment), not click's defaults."""
    return {
        k: v
        for k, v in options.items()
        if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }


class _InstalledMethods(click.Option):
    """--adapt, whose help names the adaptation methods installed now (read from the
    plugins' declarations, no torch), worked out only when the help is shown."""

    def get_help_record(self, ctx):
        from zoo_adapt.zoo.methods import adaptation_methods

        try:
            names = sorted(adaptation_methods())
        except ZooAdaptError:
            names = []
        if names:
            self.help = f"Adaptation method (zoo-adapt methods): {' | '.join(names)}."
        return super().get_help_record(ctx)


def _type(kind: type, meta) -> click.ParamType | type:
    """The click type of an option: its choices (so shells complete them), a number or a
    word (--lr auto), or its plain type."""
    if meta["choices"]:
        return _Choice(meta["choices"])
    if meta["words"]:
        return _NumberOrWord(kind, meta["words"])
    return kind


class _Choice(click.Choice):
    """click's Choice, whose error also names the closest choice."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as e:
            hint = closest(str(value), [str(c) for c in self.choices])
            raise click.BadParameter(
                f"{quote(value)} is not one of {', '.join(map(str, self.choices))}{hint}", ctx, param
            ) from e


class _NumberOrWord(click.ParamType):
    """A number, or one of a few words (--lr auto)."""

    def __init__(self, kind: type, words: tuple[str, ...]):
        self.kind, self.words = kind, words
        self.name = f"{kind.__name__.upper()}|{'|'.join(w.upper() for w in words)}"

    def convert(self, value, param, ctx):
        if not isinstance(value, str) or value in self.words:
            return value
        try:
            return self.kind(value)
        except ValueError:
            self.fail(f"{quote(value)} is not a number or {' or '.join(self.words)}", param, ctx)


@click.command()
@_config_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE.toml",
    help="Read options from a TOML file (keys as the flags, e.g. lr-body = 1e-4, or lr_body); flags win.",
)
@click.option(
    "--adapt-option",
    "adapt_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option of the adaptation method, e.g. width=512 for dann (repeatable; `zoo-adapt methods "
    "NAME` lists a method's options, checked when the run starts).",
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in --out (never one that is running).")
@click.option(
    "--nproc-per-node",
    "nproc",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Train data-parallel in N processes on this machine (one per GPU): hands the command to "
    "torchrun's launcher. torchrun itself works too: torchrun --nproc-per-node N -m zoo_adapt finetune ...",
)
@click.pass_context
def finetune(ctx: click.Context, config_file: str | None, overwrite: bool, nproc: int | None, **options) -> None:
    """Fine-tune a pretrained backbone on labelled images.

    With no --data and no --dataset it runs the embedded demo (photographs from
    scikit-image and scikit-learn) on efficientnet_lite0, offline. With --target-data it
    also adapts to unlabelled images of another domain (DANN by default)."""
    if nproc and not processes.launched().active:
        from zoo_adapt.engine.distributed import launch  # torch

        ctx.exit(launch(nproc, processes.without_option(sys.argv[1:], "--nproc-per-node")))
    given = given_options(ctx, options)
    if "adapt_options" in given:
        given["adapt_options"] = _key_values(given["adapt_options"])
    config = build_config(given, config_file)
    precheck(config)  # names and paths: before torch, which takes seconds to import
    main_process = processes.launched().main
    from zoo_adapt.job.finetune import finetune as run  # torch: after every option is checked

    with _stop_on_signals():
        run(config, log=click.echo if main_process else None, overwrite=overwrite)  # it prints its summary


@click.command("lr-find")
@_config_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE.toml",
    help="Read options from a TOML file, as finetune does.",
)
@click.pass_context
def lr_find(ctx: click.Context, config_file: str | None, **options) -> None:
    """Suggest a head learning rate: Smith's exponential sweep, as fastai's lr_find.

    Takes finetune's options (data, backbone, strategy, optimizer...), trains the model
    as the run's first stage would (the head alone for two-stage) on batches at rates
    rising from 1e-7 to 10, puts the weights back, prints the suggested rate and writes
    lr_find.png to --out. `finetune --lr auto` does this first."""
    given = {k: v for k, v in given_options(ctx, options).items() if k not in ("adapt_options", "resume")}
    config = build_config(given, config_file)
    precheck(config)
    from zoo_adapt.job.finetune import lr_find as run  # torch: after every option is checked

    run(config, log=click.echo)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so the run stops as on Ctrl-C."""

    signal_name = "SIGTERM"


class _stop_on_signals:
    """SIGTERM and SIGINT stop the run as Ctrl-C does. SIGINT gets its handler explicitly:
    a process started with SIGINT ignored (a script's `cmd &`, some job runners) would
    otherwise keep ignoring it, and `kill -INT` would do nothing."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():

            def stop(signum, frame):
                raise Terminated()

            def interrupt(signum, frame):
                raise KeyboardInterrupt

            self.previous = {
                signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
                signal.SIGINT: signal.signal(signal.SIGINT, interrupt),
            }
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def _key_values(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs, values read as TOML scalars where they parse (2.5, true, "x")."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ZooAdaptError(f"--adapt-option takes KEY=VALUE, not {quote(pair)}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out
