"""`zoo-adapt rank`: which backbone for these images? Takes finetune's options (the
data, the size, the device, how a probe or a fine-tune trains) and its own; the work is
in zoo_adapt.job.rank and zoo_adapt.job.shortlist (imported when the command runs:
they need torch)."""

from __future__ import annotations

from pathlib import Path

import click

from zoo_adapt.cli.train import config_options, given_options
from zoo_adapt.job.config import build_config
from zoo_adapt.job.config import declarations as finetune_declarations
from zoo_adapt.job.rank_options import RankOptions
from zoo_adapt.job.rank_options import declarations as rank_declarations

OUT = "runs/rank"  # as zoo_adapt.job.rank.DEFAULT_OUT (not imported here: it needs torch)
# finetune's options rank does not take: the backbone is what it chooses; it ranks on
# labelled images only (no domain adaptation) and has nothing to resume.
NOT_FOR_RANK = (
    "backbone",
    "rank_from",
    "resume",
    "target_data",
    "target_val",
    "adapt",
    "adapt_weight",
    "target_bn",
    "steps_per_epoch",
    "select_with_target_labels",
)


def register(cli: click.Group) -> None:
    cli.add_command(rank)


class _Count(click.ParamType):
    """A parameter count: 10000000, 1e7, 10M or 500K."""

    name = "COUNT"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        text = value.strip().upper()
        scale = {"K": 1e3, "M": 1e6, "B": 1e9}.get(text[-1:], 1.0)
        try:
            return float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            self.fail(f"{value!r} is not a parameter count (e.g. 10M, 5e6)", param, ctx)


def _help(name: str) -> str:
    return rank_declarations()[name].metadata["help"]


@click.command()
@config_options(skip=NOT_FOR_RANK, defaults={"out": OUT})
@click.option("--backbones", "backbones", multiple=True, metavar="A,B,C", help=_help("backbones") + " [repeatable]")
@click.option("--max-params", type=_Count(), default=None, help=_help("max_params") + " E.g. 10M.")
@click.option("--include-random", is_flag=True, help=_help("include_random"))
@click.option("--finetune-top", type=int, default=0, show_default=True, metavar="K", help=_help("finetune_top"))
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE.toml",
    help="Read finetune's options from a TOML file, as finetune does; flags win.",
)
@click.option("--overwrite", is_flag=True, help="--finetune-top: replace earlier runs in OUT/<backbone>/.")
@click.pass_context
def rank(
    ctx: click.Context,
    backbones: tuple[str, ...],
    max_params: float | None,
    include_random: bool,
    finetune_top: int,
    config_file: str | None,
    overwrite: bool,
    **options,
) -> None:
    """Rank backbones on your labelled images before fine-tuning, and recommend one.

    Each candidate's frozen features are extracted once (its own eval preprocessing, at
    the size finetune would use), then scored: LogME (labels only), a linear probe
    trained as --strategy linear-probe trains it, scored on the validation images with
    its 95% interval, and kNN accuracy (cosine), with the cost (parameters, seconds,
    images/s). Writes rank.json, rank.csv and rank.png to --out. Without --backbones it
    ranks every backbone whose weights are here without a download. The recommendation:
    the best probe accuracy within one standard error, ties to the higher LogME, then
    the smaller model."""
    given = given_options(ctx, options)
    config = build_config(given, config_file)
    if "out" not in given and config.out == finetune_declarations()["out"].default:
        config.out = OUT  # not finetune's runs/finetune
    names = [name for value in backbones for name in value.split(",") if name.strip()]
    chosen = RankOptions(names, max_params, include_random, finetune_top).check()
    from zoo_adapt.job.rank import rank_with  # torch: after every option is checked

    ranking = rank_with(config, chosen, click.echo, Path(config.out))
    if chosen.finetune_top:
        from zoo_adapt.job.shortlist import finetune_best

        finetune_best(config, ranking, chosen.finetune_top, click.echo, overwrite)
