"""The commands that follow, understand and ship a model: `trackers`, `analyse`,
`export` and `push`; the work is in zoo_adapt.zoo.trackers and zoo_adapt.ship
(analysis, onnx_export, push), imported when a command runs. No torch at import."""

from __future__ import annotations

import json
from typing import Any

import click

from zoo_adapt.cli.tables import table
from zoo_adapt.cli.use import MODEL_HELP
from zoo_adapt.ship.model_files import model_path as resolve_model
from zoo_adapt.zoo.trackers import trackers as installed


def register(cli: click.Group) -> None:
    for command in (trackers, analyse, export, push):
        cli.add_command(command)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def trackers(as_json: bool) -> None:
    """Installed experiment trackers (for finetune --log NAME) and whether their package
    is installed."""
    found: list[dict[str, Any]] = [
        {
            "name": t.name,
            "plugin": t.plugin,
            "description": t.description,
            "requires": list(t.requires),
            "missing": t.missing(),
            "install": t.install,
            "replaces": list(t.replaces),
        }
        for t in installed().values()
    ]
    if as_json:
        return click.echo(json.dumps(found, indent=2))
    click.echo(
        table(
            ["TRACKER", "PLUGIN", "READY", "DESCRIPTION"],
            [
                [
                    t["name"],
                    t["plugin"] + "".join(f" (overrides {r})" for r in t["replaces"]),
                    "yes" if not t["missing"] else f"no: {t['install']}",
                    t["description"],
                ]
                for t in found
            ],
        )
    )


@click.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(),
    help=MODEL_HELP,
)
@click.option(
    "--data", required=True, type=click.Path(), help="Labelled ImageFolder (its val/ or test/ split when it has one)."
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Folder for the results [default: analysis/ beside the model]."
)
@click.option(
    "--top", default=12, show_default=True, type=click.IntRange(1, 64), help="Images in the top-losses gallery."
)
@click.option(
    "--cams",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "on", "off"]),
    help="Class activation maps (Grad-CAM; auto: when grad-cam is installed).",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
def analyse(
    model_path: str, data: str, out: str | None, top: int, cams: str, batch_size: int, device: str, as_json: bool
) -> None:
    """Error analysis: per-class precision, recall, F1 and support, the most confused
    pairs, a gallery of the top losses and class activation maps."""
    model_path = str(resolve_model(model_path, ensemble=False))
    from zoo_adapt.ship.analysis import analyse_folder  # torch

    result = analyse_folder(
        model_path,
        data,
        out,
        cams=cams,
        top=top,
        batch_size=batch_size,
        device=device,
        log=None if as_json else click.echo,
    )
    if as_json:
        return click.echo(json.dumps(result.to_dict(), indent=2))
    width = max(len(c.name) for c in result.per_class)
    click.echo(f"  {'class':<{width}}  precision  recall     F1  support")
    for c in result.per_class:
        cells = [f"{v:>9.3f}" if v is not None else f"{'-':>9}" for v in (c.precision, c.recall)]
        f1 = f"{c.f1:>6.3f}" if c.f1 is not None else f"{'-':>6}"
        click.echo(f"  {c.name:<{width}}  {cells[0]}  {cells[1][3:]}  {f1}  {c.support:>7}")
    if result.confused:
        click.echo(
            "most confused (true -> predicted): "
            + "; ".join(f"{c['true']} -> {c['predicted']} ({c['count']})" for c in result.confused[:5])
        )


@click.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(),
    help=MODEL_HELP,
)
@click.option("--format", "fmt", required=True, type=click.Choice(["onnx"]), help="Export format.")
@click.option("--out", type=click.Path(dir_okay=False), help="Output file [default: model.onnx beside the model].")
@click.option(
    "--fold-normalization",
    is_flag=True,
    help="Put the normalization inside the graph (input: RGB in [0, 1]) instead of documenting it in the metadata.",
)
@click.option(
    "--data",
    type=click.Path(),
    help="Images to verify the export on (a folder) [default: scikit-image's sample photographs].",
)
@click.option("--opset", default=18, show_default=True, type=click.IntRange(13, 23))
@click.option("--json", "as_json", is_flag=True, help="Print the verification report as JSON.")
def export(
    model_path: str, fmt: str, out: str | None, fold_normalization: bool, data: str | None, opset: int, as_json: bool
) -> None:
    """Export a model to ONNX (dynamic batch), checked with onnxruntime against PyTorch
    on real images."""
    model_path = str(resolve_model(model_path, ensemble=False))
    from zoo_adapt.ship.onnx_export import export_onnx  # torch

    report = export_onnx(
        model_path,
        out,
        images=data,
        fold_normalization=fold_normalization,
        opset=opset,
        log=None if as_json else click.echo,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))


@click.command()
@click.option("--model", "run", required=True, type=click.Path(), help="A run folder (or its model.safetensors).")
@click.option("--repo", required=True, help="Hugging Face Hub repository: NAME or USER/NAME (created if needed).")
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option("--token", envvar="HF_TOKEN", help="Hub token [default: $HF_TOKEN or `hf auth login`'s].")
@click.option("--message", help="Commit message.")
def push(run: str, repo: str, private: bool, token: str | None, message: str | None) -> None:
    """Upload a run folder (model, model card, timm config, ONNX, metrics, plots,
    analysis) to the Hugging Face Hub."""
    from zoo_adapt.ship.push import push_run  # torch

    push_run(run, repo, private=private, token=token, message=message, log=click.echo)
