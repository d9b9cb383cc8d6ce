"""`zoo-adapt evaluate` and `zoo-adapt predict`: an exported model on images (the work
is in zoo_adapt.ship.inference, imported when the command runs: it needs torch)."""

from __future__ import annotations

import click

from zoo_adapt.cli.tables import json_text
from zoo_adapt.data.label_file import LabelColumns
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.report import figure, per_class_lines
from zoo_adapt.ship.model_files import model_path as resolve_model

MODEL_HELP = "A model.safetensors written by zoo-adapt finetune, or its run folder."
SCORING_MODEL_HELP = (
    "A model.safetensors written by zoo-adapt finetune, or a run folder: its model.safetensors, or a "
    "cross-validated run's fold models averaged (--folds-export ensemble)."
)


def register(cli: click.Group) -> None:
    for command in (evaluate, predict):
        cli.add_command(command)


@click.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(),
    help=SCORING_MODEL_HELP,
)
@click.option(
    "--data",
    type=click.Path(),
    help="Labelled ImageFolder (class subfolders); with --labels, the folder the file's paths are relative to.",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    help="A CSV/TSV label file (as finetune's): its test rows, else its val rows, else all.",
)
@click.option("--path-column", default="path", show_default=True, help="--labels: the column of image paths.")
@click.option("--label-column", default="label", show_default=True, help="--labels: the column of labels.")
@click.option("--split-column", default="split", show_default=True, help="--labels: the column of splits.")
@click.option(
    "--label-delimiter",
    default="|",
    show_default=True,
    help="--labels of a multi-label model: what separates an image's labels.",
)
@click.option("--tta", is_flag=True, help="Average over flipped and zoomed views.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True)
def evaluate(
    model_path: str,
    data: str | None,
    labels: str | None,
    path_column: str,
    label_column: str,
    split_column: str,
    label_delimiter: str,
    tta: bool,
    as_json: bool,
    batch_size: int,
    device: str,
) -> None:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and confusion matrix
    on a labelled folder (a dataset root with train/ and val/ or test/ means its
    held-out folder) or a label file; mAP and F1 for a multi-label model. Every figure
    comes with its 95% interval (Wilson for proportions, a bootstrap over the images
    for the others). The output names the images used."""
    model_path = str(resolve_model(model_path))
    from zoo_adapt.ship.inference import evaluate_folder  # torch

    if data is None and labels is None:
        raise ZooAdaptError("give --data (a labelled folder) or --labels (a label file)")
    columns = LabelColumns(path_column, label_column, split_column, delimiter=label_delimiter)
    result = evaluate_folder(
        model_path, data, tta=tta, batch_size=batch_size, device=device, labels=labels, columns=columns
    )
    if as_json:
        return click.echo(json_text({**result.to_dict(), "tta": tta}))
    where = f"({result.num_images} images in {result.folder}{', TTA' if tta else ''})"
    figures = result.to_dict()
    if result.multi_label:
        click.echo(
            f"mAP {figure(figures, 'map')}  macro F1 {figure(figures, 'macro_f1')}  micro F1 "
            f"{figure(figures, 'micro_f1')}  all labels right {figure(figures, 'accuracy')}  {where}"
        )
    else:
        click.echo(
            f"accuracy {figure(figures, 'accuracy')}  balanced {figure(figures, 'balanced_accuracy')}  top-5 "
            f"{figure(figures, 'top5')}  loss {result.loss:.3f}  {where}"
        )
    click.echo("95% intervals in brackets: Wilson for proportions, a bootstrap over the images for the others")
    metrics = {
        "per_class_f1": {c: v for c, v in result.f1.items() if result.recall.get(c) is not None},
        "per_class_precision": result.precision,
        "per_class_recall": result.recall,
    }
    for line in per_class_lines(metrics, limit=len(result.classes)):
        click.echo(line)


@click.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(),
    help=SCORING_MODEL_HELP,
)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--tta", is_flag=True, help="Average over flipped and zoomed views.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Write one record per image (path, top-k labels and probabilities, error) as they come, with a "
    "progress bar, instead of printing: for large folders. The suffix chooses the format: .csv, .jsonl "
    "(JSON Lines), .json (one array, in place when complete), .parquet (needs pyarrow).",
)
@click.option(
    "--all-probabilities",
    is_flag=True,
    help="With --output: every class's probability too (CSV/parquet columns p_<class>, JSON `probabilities`).",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True)
@click.pass_context
def predict(
    ctx: click.Context,
    model_path: str,
    paths: tuple[str, ...],
    tta: bool,
    top_k: int,
    as_json: bool,
    output: str | None,
    all_probabilities: bool,
    batch_size: int,
    device: str,
) -> None:
    """Class probabilities for images (files or folders).

    A file that cannot be read is reported on stderr, one line each, and the others are
    still predicted (printed as they come); the exit status is then 1."""
    model_path = str(resolve_model(model_path))
    from zoo_adapt.ship.inference import iter_predictions, write_predictions  # torch

    if all_probabilities and not output:
        raise ZooAdaptError("--all-probabilities goes with --output FILE (.csv, .jsonl, .json, .parquet)")
    if output:
        if as_json:
            raise ZooAdaptError("give --json or --output, not both")
        rows, failed = write_predictions(
            model_path,
            paths,
            output,
            tta=tta,
            top_k=top_k,
            batch_size=batch_size,
            device=device,
            progress=True,
            on_error=lambda e: click.echo(f"Error: {_printable(e)}", err=True),
            all_probabilities=all_probabilities,
        )
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
            click.echo(
                f"{_printable(r.path)}: "
                + (", ".join(f"{c} {p:.1%}" for c, p in r.labels) or "(no class above its threshold)")
            )
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
