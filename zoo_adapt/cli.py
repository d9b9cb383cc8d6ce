"""The `zoo-adapt` command: a thin click layer over the library API. Commands import
torch only when they need it, so `zoo-adapt list` answers quickly."""
from __future__ import annotations

import json
import sys

import click

from . import __version__
from .errors import ZooAdaptError


class _Group(click.Group):
    """Turns ZooAdaptError into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZooAdaptError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zoo-adapt")
@click.option("--registry", "registries", multiple=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="Also read backbone names from this registry file (repeatable; "
              "$ZOO_ADAPT_REGISTRY works too).")
def cli(registries: tuple[str, ...]) -> None:
    """Adapt pretrained vision backbones to your own images."""
    from .registry import add_registry

    for path in registries:
        add_registry(path)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def _stats(norm) -> str:
    from .backbone import IMAGENET, INCEPTION

    if norm is None:
        return "?"
    for label, stats in (("imagenet", IMAGENET), ("inception", INCEPTION)):
        if tuple(norm.mean) == stats["mean"] and tuple(norm.std) == stats["std"]:
            return label
    return f"mean={list(norm.mean)} std={list(norm.std)}"


def _card(backbone) -> dict:
    e, n, h = backbone.entry, backbone.normalization, backbone.head
    return {
        "name": e.name, "plugin": e.plugin, "source": backbone.source.library,
        "upstream": e.upstream, "weights": backbone.source.weights or e.weights,
        "weights_status": backbone.source.status, "weights_location": backbone.source.location,
        "head": h.attr if h else None, "in_features": h.in_features if h else None,
        "num_groups": backbone.num_groups,
        "input_size": list(n.input_size) if n else None,
        "mean": list(n.mean) if n else None, "std": list(n.std) if n else None,
        "interpolation": n.interpolation if n else None, "crop_pct": n.crop_pct if n else None,
        "description": e.description,
    }


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_(as_json: bool) -> None:
    """Every named backbone, with its head, groups, input and weights availability."""
    from .backbone import describe
    from .registry import entries

    cards = [_card(describe(e)) for e in entries().values()]
    if as_json:
        return _echo_json(cards)
    rows = [[c["name"], c["plugin"], c["source"], c["upstream"], c["head"] or "?",
             c["num_groups"] or "?", "x".join(map(str, c["input_size"][1:])) if c["input_size"] else "?",
             _stats(describe_norm(c)), c["weights_status"]] for c in cards]
    click.echo(_table(["NAME", "PLUGIN", "SOURCE", "UPSTREAM", "HEAD", "GROUPS", "INPUT",
                       "STATS", "WEIGHTS"], rows))
    click.echo("\nWEIGHTS: bundled = shipped in an installed package, cached = downloaded "
               "before, download = needs the network (use --no-pretrained or --weights offline).")


def describe_norm(card: dict):
    from .backbone import Normalization

    return Normalization(tuple(card["mean"]), tuple(card["std"])) if card["mean"] else None


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def info(name: str, as_json: bool) -> None:
    """Layer groups (with parameter counts), head and input of one backbone.

    Builds the model with random weights: nothing is downloaded."""
    from .layers import group_parameters
    from .models import create_model

    model = create_model(name, pretrained=False)
    card = _card(model.zoo_adapt)
    card["groups"] = [{"name": g, "num_params": sum(p.numel() for _, p in params),
                       "num_tensors": len(params)} for g, params in group_parameters(model)]
    card["num_params"] = sum(g["num_params"] for g in card["groups"])
    card["answered_by"] = model.zoo_adapt.answered_by
    if as_json:
        return _echo_json(card)
    click.echo(f"{card['name']}: {card['description']}")
    click.echo(f"  plugin {card['plugin']} -> {card['source']} {card['upstream']}, "
               f"weights {card['weights']} ({card['weights_status']})")
    click.echo(f"  head: {card['head']} ({card['in_features']} features -> N classes)")
    click.echo(f"  input: {'x'.join(map(str, card['input_size']))}, {card['interpolation']}, "
               f"crop {card['crop_pct']:.3f}, mean {card['mean']}, std {card['std']}")
    click.echo(f"  layer groups, stem to head ({len(card['groups'])}, "
               f"{card['num_params']:,} parameters):")
    for i, g in enumerate(card["groups"]):
        click.echo(f"    {i:>2}  {g['name']:<16} {g['num_params']:>12,}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def plugins(as_json: bool) -> None:
    """Installed plugins, their distribution and the backbones each serves."""
    from .plugins import installed_plugins
    from .registry import entries

    served: dict[str, list[str]] = {}
    for e in entries().values():
        served.setdefault(e.plugin, []).append(e.name)
    infos = [{"name": p.name, "module": p.module, "distribution": p.distribution,
              "version": p.version, "hooks": list(p.hooks), "backbones": served.get(p.name, [])}
             for p in installed_plugins()]
    if as_json:
        return _echo_json(infos)
    rows = [[p["name"], f"{p['distribution'] or '-'} {p['version'] or ''}".strip(),
             ", ".join(p["backbones"]) or "-"] for p in infos]
    click.echo(_table(["PLUGIN", "DISTRIBUTION", "BACKBONES"], rows))


def main() -> None:
    cli(prog_name="zoo-adapt")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
