"""The `zoo-adapt` command: a thin click layer over the library API. Commands import
torch only when they need it, so `zoo-adapt list` answers quickly."""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
import warnings
from typing import Iterator

import click

from . import __version__
from .errors import DEBUG_VAR, ZooAdaptError, ZooAdaptWarning, debugging
from .tables import json_text


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
@click.option("--registry", "registries", multiple=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="Also read backbone names from this registry file (repeatable; "
              "$ZOO_ADAPT_REGISTRY works too). It may re-point or rename names.")
@click.option("--disable-plugin", "disable", multiple=True, metavar="NAME",
              help="Skip this plugin (repeatable; $ZOO_ADAPT_DISABLE_PLUGINS=a,b works too).")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error "
              "($ZOO_ADAPT_DEBUG=1 works too).")
@click.pass_context
def cli(ctx: click.Context, registries: tuple[str, ...], disable: tuple[str, ...], debug: bool) -> None:
    """Adapt pretrained vision backbones to your own images."""
    from .plugins import disabled
    from .registry import add_registry

    if debug:
        ctx.with_resource(_debugging())
    ctx.with_resource(_one_line_warnings())
    ctx.with_resource(disabled(disable))
    for path in registries:
        add_registry(path)


def _config_options(fn):
    """One click option per FinetuneConfig field, from its declaration (type, help,
    default shown); values are checked by the config reader, the same way as a file's."""
    from .config import declarations, value_type

    for name, field in reversed(list(declarations().items())):
        if name == "adapt_options":
            continue  # --adapt-option KEY=VALUE, below
        meta, (kind, _) = field.metadata, value_type(name)
        flag = "--" + name.replace("_", "-")
        default, show = field.default, field.default is not None
        if kind is list:
            fn = click.option(flag, *meta["flags"], name, multiple=True, metavar="NAME", help=meta["help"]
                              + " [repeatable]")(fn)
        elif kind is bool:
            single = name in ("resume", "select_with_target_labels")
            decl = flag if single else f"{flag}/--no-{flag[2:]}"
            fn = click.option(decl, *meta["flags"], name, is_flag=single or None, default=default,
                              show_default=show and not single, help=meta["help"])(fn)
        else:
            fn = click.option(flag, *meta["flags"], name, type=_NumberOrWord(kind, meta["words"]) if meta["words"]
                              else kind, default=default, show_default=show, help=meta["help"])(fn)
    return fn


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
            self.fail(f"{value!r} is not a number or {' or '.join(self.words)}", param, ctx)


@cli.command()
@_config_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE.toml",
              help="Read options from a TOML file (keys as the flags, e.g. lr-body = 1e-4, or lr_body); flags win.")
@click.option("--adapt-option", "adapt_options", multiple=True, metavar="KEY=VALUE",
              help="An option of the adaptation method, e.g. width=512 for dann (repeatable; `zoo-adapt methods "
              "NAME` lists a method's options, checked when the run starts).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run in --out (never one that is running).")
@click.option("--nproc-per-node", "nproc", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train data-parallel in N processes on this machine (one per GPU): hands the command to "
              "torchrun's launcher. torchrun itself works too: torchrun --nproc-per-node N -m zoo_adapt finetune ...")
@click.pass_context
def finetune(ctx: click.Context, config_file: str | None, overwrite: bool, nproc: int | None, **options) -> None:
    """Fine-tune a pretrained backbone on labelled images.

    With no --data and no --dataset it runs the embedded demo (photographs from
    scikit-image and scikit-learn) on efficientnet_lite0, offline. With --target-data it
    also adapts to unlabelled images of another domain (DANN by default)."""
    from click.core import ParameterSource

    from .config import build_config
    from .finetune import finetune as run

    from . import distributed

    if nproc and not distributed.launched().active:
        ctx.exit(distributed.launch(nproc, distributed.without_option(sys.argv[1:], "--nproc-per-node")))
    given = {k: v for k, v in options.items()
             if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    if "adapt_options" in given:
        given["adapt_options"] = _key_values(given["adapt_options"])
    config = build_config(given, config_file)
    main_process = distributed.launched().main
    with _stop_on_sigterm():
        run(config, log=click.echo if main_process else None, overwrite=overwrite)  # it prints its summary


@cli.command("lr-find")
@_config_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE.toml",
              help="Read options from a TOML file, as finetune does.")
@click.pass_context
def lr_find(ctx: click.Context, config_file: str | None, **options) -> None:
    """Suggest a head learning rate: Smith's exponential sweep, as fastai's lr_find.

    Takes finetune's options (data, backbone, strategy, optimizer...), trains the model
    as the run's first stage would (the head alone for two-stage) on batches at rates
    rising from 1e-7 to 10, puts the weights back, prints the suggested rate and writes
    lr_find.png to --out. `finetune --lr auto` does this first."""
    from click.core import ParameterSource

    from .config import build_config
    from .finetune import lr_find as run

    given = {k: v for k, v in options.items() if k not in ("adapt_options", "resume")
             and ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    run(build_config(given, config_file), log=click.echo)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so the run stops as on Ctrl-C."""

    signal_name = "SIGTERM"


class _stop_on_sigterm:
    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            def stop(signum, frame):
                raise Terminated()

            self.previous = signal.signal(signal.SIGTERM, stop)
        return self

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _key_values(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE pairs, values read as TOML scalars where they parse (2.5, true, "x")."""
    from .registry import tomllib

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ZooAdaptError(f"--adapt-option takes KEY=VALUE, not {pair!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


@cli.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="A model.safetensors written by zoo-adapt finetune.")
@click.option("--data", type=click.Path(), help="Labelled ImageFolder (class subfolders); with --labels, the "
              "folder the file's paths are relative to.")
@click.option("--labels", type=click.Path(dir_okay=False), help="A CSV/TSV label file (as finetune's): its test "
              "rows, else its val rows, else all.")
@click.option("--path-column", default="path", show_default=True, help="--labels: the column of image paths.")
@click.option("--label-column", default="label", show_default=True, help="--labels: the column of labels.")
@click.option("--split-column", default="split", show_default=True, help="--labels: the column of splits.")
@click.option("--label-delimiter", default="|", show_default=True, help="--labels of a multi-label model: what "
              "separates an image's labels.")
@click.option("--tta", is_flag=True, help="Average over flipped and zoomed views.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True)
def evaluate(model_path: str, data: str | None, labels: str | None, path_column: str, label_column: str,
             split_column: str, label_delimiter: str, tta: bool, as_json: bool, batch_size: int,
             device: str) -> None:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and confusion matrix
    on a labelled folder (a dataset root with train/ and val/ or test/ means its
    held-out folder) or a label file; mAP and F1 for a multi-label model. The output
    names the images used."""
    from .inference import evaluate_folder
    from .label_file import LabelColumns
    from .report import per_class_lines

    if data is None and labels is None:
        raise ZooAdaptError("give --data (a labelled folder) or --labels (a label file)")
    columns = LabelColumns(path_column, label_column, split_column, delimiter=label_delimiter)
    result = evaluate_folder(model_path, data, tta=tta, batch_size=batch_size, device=device, labels=labels,
                             columns=columns)
    if as_json:
        return click.echo(json_text({**result.to_dict(), "tta": tta}))
    where = f"({result.num_images} images in {result.folder}{', TTA' if tta else ''})"
    if result.multi_label:
        click.echo(f"mAP {result.map or 0:.1%}  macro F1 {result.macro_f1 or 0:.1%}  micro F1 "
                   f"{result.micro_f1 or 0:.1%}  all labels right {result.accuracy:.1%}  {where}")
    else:
        click.echo(f"accuracy {result.accuracy:.1%}  balanced {result.balanced_accuracy or 0:.1%}  top-5 "
                   f"{result.top5:.1%}  loss {result.loss:.3f}  {where}")
    metrics = {"per_class_f1": {c: v for c, v in result.f1.items() if result.recall.get(c) is not None},
               "per_class_precision": result.precision, "per_class_recall": result.recall}
    for line in per_class_lines(metrics, limit=len(result.classes)):
        click.echo(line)


@cli.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="A model.safetensors written by zoo-adapt finetune.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--tta", is_flag=True, help="Average over flipped and zoomed views.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--output", type=click.Path(dir_okay=False), metavar="FILE.csv",
              help="Write one CSV row per image (path, top-k labels and probabilities, error) as they come, with a "
              "progress bar, instead of printing: for large folders.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True)
@click.pass_context
def predict(ctx: click.Context, model_path: str, paths: tuple[str, ...], tta: bool, top_k: int, as_json: bool,
            output: str | None, batch_size: int, device: str) -> None:
    """Class probabilities for images (files or folders).

    A file that cannot be read is reported on stderr, one line each, and the others are
    still predicted (printed as they come); the exit status is then 1."""
    from .inference import iter_predictions, write_predictions

    if output:
        if as_json:
            raise ZooAdaptError("give --json or --output, not both")
        rows, failed = write_predictions(model_path, paths, output, tta=tta, top_k=top_k, batch_size=batch_size,
                                         device=device, progress=True,
                                         on_error=lambda e: click.echo(f"Error: {_printable(e)}", err=True))
        click.echo(f"{rows - failed} images predicted{f', {failed} unreadable' if failed else ''}: {output}")
        if failed:
            ctx.exit(1)
        return
    results, failed = [], False
    for r in iter_predictions(model_path, paths, tta=tta, top_k=top_k, batch_size=batch_size, device=device):
        failed = failed or bool(r.error)
        if r.error:
            click.echo(f"Error: {_printable(r.error)}", err=True)
        elif not as_json and r.labels is not None:
            click.echo(f"{_printable(r.path)}: " + (", ".join(f"{c} {p:.1%}" for c, p in r.labels)
                                                     or "(no class above its threshold)"))
        elif not as_json:
            click.echo(f"{_printable(r.path)}: " + ", ".join(f"{c} {p:.1%}" for c, p in r.top))
        if as_json:
            results.append(r)
    if as_json:
        click.echo(json_text([r.to_dict() for r in results]))
    if failed:
        ctx.exit(1)


def _printable(text: str) -> str:
    """Paths with bytes that are not UTF-8 (kept by Python as lone surrogates) would
    make printing fail; show those bytes as escapes instead."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


from .cli_catalog import register as _register_catalog  # noqa: E402 (list, info, plugins, methods)
from .cli_ship import register as _register_shipping  # noqa: E402 (analyse, export, push, trackers)

_register_catalog(cli)
_register_shipping(cli)


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
    except Exception as e:  # a bug, or a failure we did not foresee: still one line
        _traceback()
        click.echo(f"Error: {_unexpected(e)}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def _traceback() -> None:
    if debugging():
        traceback.print_exc()


def _unexpected(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "out of memory" in text.lower():
        return f"the device ran out of memory ({text[:120]}); lower --batch-size or --image-size"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename or ''}".rstrip(": ")
    return (f"{type(e).__name__}: {text[:200]} (this is a bug in zoo-adapt or a plugin; rerun with "
            "ZOO_ADAPT_DEBUG=1 for the traceback)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
