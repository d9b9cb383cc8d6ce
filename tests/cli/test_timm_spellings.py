"""timm's spellings of the options zoo-adapt names otherwise, choices that shells
complete, and the closest choice for a mistyped one."""

from __future__ import annotations

import click
import pytest

from zoo_adapt.cli.train import finetune, lr_find
from zoo_adapt.job.config import build_config

ALIASES = [
    ("--model", "resnet18", "backbone", "resnet18"),
    ("--aa", "rand-m7-n2-mstd0.5", "augment", "rand-m7-n2-mstd0.5"),
    ("--reprob", "0.25", "random_erase", 0.25),
    ("--grad-accum-steps", "4", "accumulate", 4),
    ("--layer-decay", "0.7", "lr_decay", 0.7),
    ("--smoothing", "0.05", "label_smoothing", 0.05),
]


@pytest.mark.parametrize("command", [finetune, lr_find])
@pytest.mark.parametrize(("flag", "value", "name", "expected"), ALIASES)
def test_timms_spellings_are_the_same_options(command, flag, value, name, expected):
    ctx = command.make_context(command.name, [flag, value])
    assert ctx.params[name] == expected
    given = {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    assert getattr(build_config(given), name) == expected


def test_choices_complete_in_shells():
    ctx = finetune.make_context("finetune", [])
    by_name = {p.name: p for p in finetune.params}
    completed = {
        name: [item.value for item in by_name[name].type.shell_complete(ctx, by_name[name], prefix)]
        for name, prefix in (("strategy", "two"), ("optimizer", "ada"), ("schedule", "c"), ("export", "o"))
    }
    assert completed == {
        "strategy": ["two-stage"],
        "optimizer": ["adamw", "adam", "adamp", "adafactor", "adafactorbv", "adan"],
        "schedule": ["cosine", "constant"],
        "export": ["onnx"],
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--strategy", "two-stge"],
            "'two-stge' is not one of linear-probe, finetune, two-stage, gradual (did you mean 'two-stage'?)",
        ),
        (["--optimizer", "lamdb"], "(did you mean 'lamb'?)"),
        (["--precision", "bf61"], "(did you mean 'bf16'?)"),
        (["--export", "onx"], "'onx' is not one of onnx (did you mean 'onnx'?)"),
    ],
)
def test_a_mistyped_choice_names_the_closest(args, expected):
    with pytest.raises(click.BadParameter) as e:
        finetune.make_context("finetune", args)
    assert expected in e.value.format_message()


def test_the_cli_reports_a_mistyped_choice_in_one_line(tmp_path):
    from click.testing import CliRunner

    from zoo_adapt.cli import cli

    result = CliRunner().invoke(cli, ["finetune", "--schedule", "cosin", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "(did you mean 'cosine'?)" in result.output
    assert not (tmp_path / "run").exists()
