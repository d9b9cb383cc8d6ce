"""The commands that describe what is installed: `list`, `info`, `plugins` and
`methods`; the answers come from zoo_adapt.zoo (registry, answers, plugins, methods,
trackers). No torch, except `info`, which builds the model."""

from __future__ import annotations

from typing import Any

import click

from zoo_adapt.cli.tables import json_text, table
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.zoo.answers import describe
from zoo_adapt.zoo.backbone import IMAGENET, INCEPTION, Backbone, Source, backbone_of
from zoo_adapt.zoo.methods import adaptation_methods, method_info
from zoo_adapt.zoo.plugins import installed_plugins
from zoo_adapt.zoo.rank_scores import transferability_scores
from zoo_adapt.zoo.registry import entries
from zoo_adapt.zoo.trackers import trackers as installed_trackers


def register(cli: click.Group) -> None:
    for command in (list_, info, plugins, methods):
        cli.add_command(command)


def _echo_json(obj) -> None:
    click.echo(json_text(obj))


def _stats(mean, std) -> str:
    """'imagenet' or 'inception' for the usual statistics, else the numbers."""
    if mean is None:
        return "?"
    for label, stats in (("imagenet", IMAGENET), ("inception", INCEPTION)):
        if tuple(mean) == stats["mean"] and tuple(std) == stats["std"]:
            return label
    return f"mean={list(mean)} std={list(std)}"


def _millions(count) -> str:
    """'25.6M' for a parameter count, '?' when the entry declares none."""
    return f"{count / 1e6:.1f}M" if isinstance(count, int) else "?"


def _card(backbone) -> dict:
    e, n, h = backbone.entry, backbone.normalization, backbone.head
    return {
        "name": e.name,
        "plugin": e.plugin,
        "source": backbone.source.library,
        "upstream": e.upstream,
        "weights": backbone.source.weights or e.weights,
        "weights_status": backbone.source.status,
        "weights_location": backbone.source.location,
        "head": h.attr if h else None,
        "in_features": h.in_features if h else None,
        "num_groups": backbone.num_groups,
        "params": e.extra.get("params"),
        "input_size": list(n.input_size) if n else None,
        "mean": list(n.mean) if n else None,
        "std": list(n.std) if n else None,
        "interpolation": n.interpolation if n else None,
        "crop_pct": n.crop_pct if n else None,
        "description": e.description,
        "origin": e.origin,
        "note": e.note or None,
    }


def _listed(entry) -> dict:
    """The card of one backbone; a plugin that cannot answer spoils only its own row."""
    try:
        return _card(describe(entry))
    except ZooAdaptError as e:
        card = _card(Backbone(entry, None, None, Source("?", status="unusable"), None, None))
        return {**card, "problem": str(e)}


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_(as_json: bool) -> None:
    """Every named backbone, with its head, groups, input and weights availability."""
    cards = [_listed(e) for e in entries().values()]
    if as_json:
        return _echo_json(cards)
    rows = [
        [
            c["name"],
            c["plugin"],
            c["source"],
            c["upstream"],
            c["head"] or "?",
            c["num_groups"] or "?",
            _millions(c["params"]),
            "x".join(map(str, c["input_size"][1:])) if c["input_size"] else "?",
            _stats(c["mean"], c["std"]),
            c["weights_status"],
        ]
        for c in cards
    ]
    click.echo(
        table(["NAME", "PLUGIN", "SOURCE", "UPSTREAM", "HEAD", "GROUPS", "PARAMS", "INPUT", "STATS", "WEIGHTS"], rows)
    )
    click.echo(
        "\nWEIGHTS: bundled = shipped in an installed package, cached = downloaded "
        "before, download = needs the network (use --no-pretrained or --weights offline)."
    )
    for c in cards:
        if c["note"]:
            click.echo(f"{c['name']}: {c['note']}, by {c['origin']}")
        if c.get("problem"):
            click.echo(f"{c['name']}: unusable: {c['problem']}")


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def info(name: str, as_json: bool) -> None:
    """Layer groups (with parameter counts), head and input of one backbone, and which
    plugin gave each answer.

    Builds the model with random weights: nothing is downloaded."""
    from zoo_adapt.model.build import create_model  # torch
    from zoo_adapt.model.layers import group_parameters

    model = create_model(name, pretrained=False)
    card = _card(backbone_of(model))
    card["groups"] = [
        {"name": g, "num_params": sum(p.numel() for _, p in params), "num_tensors": len(params)}
        for g, params in group_parameters(model)
    ]
    card["num_params"] = sum(g["num_params"] for g in card["groups"])
    card["answered_by"] = backbone_of(model).answered_by
    if as_json:
        return _echo_json(card)
    click.echo(f"{card['name']}: {card['description']}")
    click.echo(
        f"  plugin {card['plugin']} -> {card['source']} {card['upstream']}, "
        f"weights {card['weights'] or 'the library default'} ({card['weights_status']})"
    )
    click.echo(f"  named in {card['origin']}" + (f"; {card['note']}" if card["note"] else ""))
    by: dict[str, list[str]] = {}
    for hook, who in card["answered_by"].items():
        override = " (override)" if who not in (card["plugin"], card["origin"]) else ""
        by.setdefault(f"{who}{override}", []).append(hook)
    click.echo("  answered by: " + "; ".join(f"{who}: {', '.join(hooks)}" for who, hooks in by.items()))
    click.echo(f"  head: {card['head']} ({card['in_features']} features -> N classes)")
    click.echo(
        f"  input: {'x'.join(map(str, card['input_size']))}, {card['interpolation']}, "
        f"crop {card['crop_pct']:.3f}, mean {card['mean']}, std {card['std']}"
    )
    click.echo(f"  layer groups, stem to head ({len(card['groups'])}, {card['num_params']:,} parameters):")
    for i, g in enumerate(card["groups"]):
        click.echo(f"    {i:>2}  {g['name']:<16} {g['num_params']:>12,}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def plugins(as_json: bool) -> None:
    """Installed plugins: distribution, status (ok, broken, disabled), what each serves
    and which answers of other plugins it overrides."""
    served: dict[str, list[str]] = {}
    for e in entries().values():
        served.setdefault(e.plugin, []).append(e.name)
    methods_: dict[str, list[str]] = {}
    for m in adaptation_methods().values():
        methods_.setdefault(m.plugin, []).append(m.name)

    trackers_: dict[str, list[str]] = {}
    for t in installed_trackers().values():
        trackers_.setdefault(t.plugin, []).append(t.name)
    scores_: dict[str, list[str]] = {}
    for score in transferability_scores().values():
        scores_.setdefault(score.plugin, []).append(score.name)
    infos: list[dict[str, Any]] = [
        {
            "name": p.name,
            "module": p.module,
            "distribution": p.distribution,
            "version": p.version,
            "status": p.status,
            "problem": p.problem,
            "hooks": list(p.hooks),
            "backbones": served.get(p.name, []),
            "methods": methods_.get(p.name, []),
            "trackers": trackers_.get(p.name, []),
            "scores": scores_.get(p.name, []),
            "overrides": [{"backbone": b, "hook": h} for b, h in p.overrides],
        }
        for p in installed_plugins()
    ]
    if as_json:
        return _echo_json(infos)
    rows = [
        [
            p["name"],
            p["status"],
            f"{p['distribution'] or '-'} {p['version'] or ''}".strip(),
            ", ".join(
                p["backbones"]
                + [f"{m} (adaptation)" for m in p["methods"]]
                + [f"{t} (tracker)" for t in p["trackers"]]
                + [f"{s} (rank score)" for s in p["scores"]]
                + [f"{o['hook']} of {o['backbone']} (override)" for o in p["overrides"]]
            )
            or "-",
        ]
        for p in infos
    ]
    click.echo(table(["PLUGIN", "STATUS", "DISTRIBUTION", "SERVES"], rows))
    for p in infos:
        if p["problem"]:
            click.echo(f"{p['name']}: {p['problem']}")


def _method_card(m) -> dict:
    return {
        "name": m.name,
        "plugin": m.plugin,
        "description": m.description,
        "replaces": list(m.replaces),
        "options": [o.to_dict() for o in m.options],
        "figures": dict(m.figures),
    }


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def methods(name: str | None, as_json: bool) -> None:
    """Installed domain-adaptation methods (for finetune --adapt); with NAME, that
    method's options (finetune --adapt-option KEY=VALUE) and the figures it logs."""
    if name:
        card = _method_card(method_info(name))
        if as_json:
            return _echo_json(card)
        click.echo(f"{card['name']}: {card['description']}")
        click.echo(f"  plugin {card['plugin']}" + "".join(f" (overrides {r})" for r in card["replaces"]))
        if card["options"]:
            click.echo("  options (finetune --adapt-option KEY=VALUE, or a config file's [adapt_options] table):")
            rows = [[o["name"], o["type"], repr(o["default"]), o["range"], o["help"]] for o in card["options"]]
            click.echo(_indent(table(["OPTION", "TYPE", "DEFAULT", "RANGE", "HELP"], rows)))
        else:
            click.echo("  no options")
        if card["figures"]:
            click.echo("  figures logged per epoch (metrics.json, adaptation.png):")
            click.echo(_indent(table(["FIGURE", "MEANING"], [[k, v] for k, v in card["figures"].items()])))
        return
    found = [_method_card(m) for m in adaptation_methods().values()]
    if as_json:
        return _echo_json(found)
    click.echo(
        table(
            ["METHOD", "PLUGIN", "OPTIONS", "DESCRIPTION"],
            [
                [
                    m["name"],
                    m["plugin"] + "".join(f" (overrides {r})" for r in m["replaces"]),
                    ", ".join(o["name"] for o in m["options"]) or "-",
                    m["description"],
                ]
                for m in found
            ],
        )
    )
    click.echo("\n`zoo-adapt methods NAME` shows a method's options and what it logs.")


def _indent(text: str, by: str = "    ") -> str:
    return "\n".join(by + line for line in text.splitlines())
