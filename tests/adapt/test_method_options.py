"""Methods own their options and figures: declared when the plugin registers the method,
shown by `zoo-adapt methods NAME`, checked before a run writes anything (a misspelt key
is one line naming the method and the closest key), recorded resolved in config.toml and
metrics.json; what a method logs is plotted, whoever wrote it; the label-free target
scores are logged every epoch."""

from __future__ import annotations

import json

import pytest
import torch

from zoo_adapt import ZooAdaptError, hookimpl
from zoo_adapt.adapt.method import make_method
from zoo_adapt.adapt.selection import soft_neighbourhood_density, target_scores
from zoo_adapt.job.config import FinetuneConfig, build_config
from zoo_adapt.job.finetune import finetune
from zoo_adapt.plugin_api import AdaptationMethod, option
from zoo_adapt.zoo.methods import adaptation_methods, resolve_options
from zoo_adapt.zoo.registry import tomllib

from helpers import adapting


def tiny(digits, out, **kw) -> FinetuneConfig:
    return adapting(out.parent, digits, **{"out": str(out), "steps_per_epoch": 2, **kw})


def test_dann_and_mcc_declare_their_options_and_figures(run_cli):
    methods = adaptation_methods()
    assert [o.name for o in methods["dann"].options] == ["width", "depth", "dropout", "gamma", "lr_factor"]
    assert {"domain_accuracy", "domain_loss", "lambda"} <= set(methods["dann"].figures)
    assert [o.name for o in methods["mcc"].options] == ["temperature"]
    shown = run_cli("methods", "dann")
    assert shown.exit_code == 0 and "width" in shown.output and "domain_accuracy" in shown.output
    card = json.loads(run_cli("methods", "dann", "--json").output)
    width = next(o for o in card["options"] if o["name"] == "width")
    assert width["type"] == "int" and width["default"] == methods["dann"].options[0].default
    assert "temperature" in run_cli("methods").output  # the list names each method's options


def test_options_resolve_with_defaults_and_are_checked():
    resolved = resolve_options("dann", {"width": 64, "gamma": 5})
    assert resolved["width"] == 64 and resolved["gamma"] == 5.0 and isinstance(resolved["gamma"], float)
    assert set(resolved) == {o.name for o in adaptation_methods()["dann"].options}
    with pytest.raises(ZooAdaptError, match=r"method 'dann' has no option 'widht' \(did you mean 'width'\?\)"):
        resolve_options("dann", {"widht": 64})
    with pytest.raises(ZooAdaptError, match="option 'dropout' of adaptation method 'dann' must be less than 1"):
        resolve_options("dann", {"dropout": 1.5})
    with pytest.raises(ZooAdaptError, match="'depth' of adaptation method 'dann' must be a whole number"):
        resolve_options("dann", {"depth": "two"})
    with pytest.raises(ZooAdaptError, match="'mcc' has no option 'lr'; its options: temperature"):
        resolve_options("mcc", {"lr": 1e-3})


def test_a_misspelt_option_is_one_line_before_anything_is_written(tmp_path, digits, run_cli):
    out = tmp_path / "run"
    args = [
        "finetune",
        "--backbone",
        "resnet18",
        "--no-pretrained",
        "--data",
        digits / "source",
        "--target-data",
        digits / "target" / "train",
        "--image-size",
        32,
        "--out",
        out,
    ]
    result = run_cli(*args, "--adapt-option", "widht=64")
    assert result.exit_code == 1 and not out.exists()
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        "Error: adaptation method 'dann' has no option 'widht' (did you mean 'width'?); its options: "
        "width, depth, dropout, gamma, lr_factor (zoo-adapt methods dann)"
    ]
    config = tmp_path / "c.toml"
    config.write_text("[adapt_options]\ntemprature = 2.0\n")
    result = run_cli(*args, "--adapt", "mcc", "--config", config)
    assert result.exit_code == 1 and "did you mean 'temperature'" in result.output and not out.exists()
    config.write_text("domain-hidden = '1024'\n")
    result = run_cli(*args, "--config", config)
    assert "now an option of the dann method: --adapt-option width=" in result.output


def test_command_line_options_join_a_config_files_table(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("target-data = 't'\n[adapt_options]\nwidth = 64\ngamma = 5.0\n")
    built = build_config({"adapt_options": {"gamma": 2.0}}, str(config))
    assert built.adapt_options == {"width": 64, "gamma": 2.0}


class Scaled:
    """A third party's method with two options; it logs what it was given."""

    @hookimpl
    def register_adaptation_methods(self, register):
        register(
            "scaled",
            self.build,
            "a test method",
            options=[
                option("scale", 1.0, "A multiplier.", low=0),
                option("mode", "mean", "How target features are summarised.", choices=("mean", "max")),
            ],
            figures={"scale_seen": "the scale the method was built with"},
        )

    @staticmethod
    def build(in_features, num_classes, config):
        class Method(AdaptationMethod):
            def loss(self, fs, ft, ls, lt, progress):
                summary = ft.mean() if self.options["mode"] == "mean" else ft.max()
                return 0 * summary, {"scale_seen": self.options["scale"], "extra_figure": progress}

        return Method(in_features, num_classes, config)


def test_a_third_party_method_with_options_is_checked_recorded_and_plotted(tmp_path, digits, plugin, monkeypatch):
    plugin(Scaled(), "scaledmethod")
    with pytest.raises(ZooAdaptError, match="'mode' of adaptation method 'scaled' must be one of mean, max"):
        finetune(tiny(digits, tmp_path / "bad", adapt="scaled", adapt_options={"mode": "median"}), log=None)
    assert not (tmp_path / "bad").exists()
    plotted = {}
    import zoo_adapt.job.adaptation as assembly

    real = assembly.plot_adaptation
    monkeypatch.setattr(
        assembly,
        "plot_adaptation",
        lambda gap, history, keys, path, **kw: (plotted.update(keys=keys), real(gap, history, keys, path, **kw))[1],
    )
    out = tmp_path / "run"
    result = finetune(tiny(digits, out, adapt="scaled", adapt_options={"scale": 3}), log=None)
    assert result.history[-1]["scale_seen"] == 3.0
    stored = tomllib.loads((out / "config.toml").read_text())
    assert stored["adapt_options"] == {"scale": 3.0, "mode": "mean"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adaptation"]["options"] == {"scale": 3.0, "mode": "mean"}
    assert metrics["adaptation"]["figures"]["scale_seen"] == "the scale the method was built with"
    assert {"scale_seen", "extra_figure", "target_snd", "target_entropy", "target_class_balance"} <= set(
        plotted["keys"]
    )
    assert (out / "adaptation.png").is_file()
    for epoch in metrics["history"]:  # the label-free scores, every epoch
        assert 0 <= epoch["target_entropy"] <= 1 and 0 <= epoch["target_class_balance"] <= 1
        assert epoch["target_snd"] > 0
    resumed = build_config({"resume": True, "out": str(out), "epochs": 3, "adapt_options": {"scale": 3}})
    assert resumed.adapt_options == {"scale": 3.0, "mode": "mean"}
    with pytest.raises(ZooAdaptError, match="keeps the options"):
        build_config({"resume": True, "out": str(out), "epochs": 3, "adapt_options": {"scale": 4}})


class BadDeclaration:
    @hookimpl
    def register_adaptation_methods(self, register):
        register("broken", lambda **kw: None, "declares its options wrong", options=[{"name": "x"}])


def test_a_wrong_declaration_is_the_plugins_problem_only(plugin, run_cli):
    plugin(BadDeclaration(), "baddecl")
    with pytest.warns(Warning, match="baddecl.*options must be made with zoo_adapt.plugin_api.option"):
        methods = adaptation_methods()
    assert "broken" not in methods and "dann" in methods
    with pytest.raises(ZooAdaptError, match="must be at least 0"):
        option("scale", -1.0, "A multiplier.", low=0)


def test_method_sees_its_resolved_options():
    method = make_method("dann", 16, 3, FinetuneConfig(target_data="t", adapt_options={"width": 8}))
    assert method.options["width"] == 8 and method.options["depth"] == 2
    assert method.domain_classifier[0].out_features == 8


def test_label_free_scores():
    confident = torch.eye(4).repeat(5, 1)  # four tight clusters, every class predicted
    scores = target_scores(confident)
    assert scores["target_entropy"] == pytest.approx(0, abs=1e-6)
    assert scores["target_class_balance"] == pytest.approx(1)
    collapsed = target_scores(torch.tensor([[1.0, 0, 0, 0]]).repeat(20, 1))
    assert collapsed["target_class_balance"] == pytest.approx(0, abs=1e-6)
    uniform = torch.full((20, 4), 0.25)
    assert target_scores(uniform)["target_entropy"] == pytest.approx(1)
    # SND: with clusters, each image's neighbourhood is its own cluster (entropy log 4);
    # everything alike spreads it over all others (log 19)
    assert soft_neighbourhood_density(confident) == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-3)
    assert soft_neighbourhood_density(uniform) == pytest.approx(torch.log(torch.tensor(19.0)).item(), abs=1e-3)
