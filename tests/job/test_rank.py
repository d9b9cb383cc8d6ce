"""Which backbone? `zoo-adapt rank` on small real sets: EfficientNet-Lite0/1/2 with their
real ImageNet weights against their random-init bodies at 64 px (the pretrained ones must
win by every score), the outputs scripts read, the recommendation rule, the probe being
exactly linear-probe's head training, `finetune --backbone auto` end to end, plugin
scores, and bad input (one line each; exit 1 where nothing could be ranked)."""

from __future__ import annotations

import csv
import importlib
import json
import math
import re
import shutil
import sys

import pytest

import zoo_adapt
from zoo_adapt.data.demo import build_demo
from zoo_adapt.data.demo_sets import build_multilabel
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.job.rank import Row, recommend
from zoo_adapt.plugin_api import hookimpl
from zoo_adapt.zoo.registry import entries

from helpers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# six photographs, 16 training and 8 validation patches each: LogME needs tens of images
# per class to be steady (with 6 it ranked a random body above Lite0 in a trial)
PHOTOS = ("brick", "coffee", "grass", "moon", "rocket", "astronaut")
SMALL = dict(image_size=64, workers=0, batch_size=16)


@pytest.fixture(scope="module")
def photos(module_tmp):
    return build_demo(module_tmp / "photos", train_per_class=16, val_per_class=8, classes=PHOTOS)


@pytest.fixture(scope="module")
def ranked(photos, module_tmp):
    config = FinetuneConfig(data=str(photos), out=str(module_tmp / "rank"), **SMALL)
    return zoo_adapt.rank(config, backbones=LITES, include_random=True, log=None), module_tmp / "rank"


def test_pretrained_backbones_rank_above_random_bodies_by_every_score(ranked):
    ranking, _ = ranked
    assert all(r.error is None for r in ranking.rows), [r.error for r in ranking.rows]
    pretrained = [r for r in ranking.rows if r.pretrained]
    random = [r for r in ranking.rows if not r.pretrained]
    assert sorted(r.backbone for r in pretrained) == sorted(r.backbone for r in random) == sorted(LITES)
    for score in ("logme", "probe_accuracy", "knn_accuracy"):
        worst_pretrained = min(getattr(r, score) for r in pretrained)
        best_random = max(getattr(r, score) for r in random)
        assert worst_pretrained > best_random, (score, [(r.label, getattr(r, score)) for r in ranking.rows])
    assert ranking.recommended is ranking.rows[0] and ranking.recommended.pretrained
    assert all(r.pretrained for r in ranking.rows[:3])  # the leaderboard's top


def test_rank_json_csv_and_plot_hold_the_leaderboard(ranked):
    ranking, out = ranked
    record = json.loads((out / "rank.json").read_text())
    assert record["recommended"] == ranking.recommended.backbone and record["recommended_pretrained"] is True
    assert "within one standard error" in record["rule"]
    assert record["num_train"] == 16 * len(PHOTOS) and record["num_val"] == 8 * len(PHOTOS)
    for row in record["rows"]:
        assert {
            "backbone",
            "pretrained",
            "logme",
            "probe_accuracy",
            "knn_accuracy",
            "params",
            "seconds",
            "error",
        } <= set(row)
        assert row["params"] == entries()[row["backbone"]].extra["params"]  # the 1000-class model's
        low, high = row["probe_interval"]
        assert low <= row["probe_accuracy"] <= high and row["error"] is None
        assert row["knn_k"] == 5 and row["image_size"] == 64 and row["images_per_second"] > 0
    with open(out / "rank.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["backbone"] for r in table] == [r["backbone"] for r in record["rows"]]
    assert [r["rank"] for r in table] == [str(i) for i in range(1, 7)]
    assert (out / "rank.png").stat().st_size > 10_000
    lines = ranking.lines()
    assert lines[0].split()[:4] == ["RANK", "BACKBONE", "LOGME", "PROBE"]
    assert lines[1].startswith("1*") and lines[-1].startswith(f"recommended: {ranking.recommended.backbone}")


def row(name, probe, logme, params=1, pretrained=True, error=None):
    return Row(name, pretrained, logme=logme, probe_accuracy=probe, params=params, error=error)


def test_recommendation_is_the_best_probe_within_noise_then_logme_then_size():
    # 100 validation images: one standard error at 90% is 3 points
    rows = [row("a", 0.90, 1.0), row("b", 0.88, 2.0), row("c", 0.80, 9.0), row("r", 0.99, 9.0, pretrained=False)]
    assert recommend(rows, 100).backbone == "b"  # tied with a (within 3 points), higher LogME; c is 10 points off
    assert recommend([row("a", 0.90, 1.0), row("b", 0.85, 2.0)], 100).backbone == "a"  # 5 points: not a tie
    assert recommend([row("a", 0.9, 1.0, params=9), row("b", 0.9, 1.0, params=5)], 100).backbone == "b"
    assert recommend([row("a", None, 1.0), row("b", None, 2.0)], 0).backbone == "b"  # no validation: LogME
    assert (
        recommend([row("a", 0.9, 1.0, error="no weights"), row("r", 0.5, 0.0, pretrained=False)], 100).backbone == "r"
    )
    assert recommend([row("a", 0.9, 1.0, error="no weights")], 100) is None


def test_the_probe_is_exactly_linear_probe_s_head_training(ranked, photos, tmp_path):
    ranking, _ = ranked
    lite1 = next(r for r in ranking.rows if r.backbone == "efficientnet_lite1" and r.pretrained)
    config = FinetuneConfig(
        data=str(photos),
        backbone="efficientnet_lite1",
        strategy="linear-probe",
        out=str(tmp_path / "probe"),
        tta=False,
        analysis="off",
        data_on_device="off",
        **SMALL,
    )
    result = finetune(config, log=None)
    assert result.history[-1]["val_accuracy"] == pytest.approx(lite1.probe_accuracy, abs=1e-9)


def test_backbone_auto_ranks_then_fine_tunes_the_recommendation_and_records_it(photos, run_cli, tmp_path):
    out = tmp_path / "auto"
    args = ["--data", photos, "--image-size", 64, "--workers", 0, "--batch-size", 16]
    args += ["--strategy", "linear-probe", "--epochs", 1, "--no-tta", "--analysis", "off", "--out", out]
    result = run_cli("finetune", "--backbone", "auto", *args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "rank.json").read_text())
    chosen = record["recommended"]
    assert {r["backbone"] for r in record["rows"]} == set(LITES)  # every backbone with weights here
    assert f"--backbone auto: fine-tuning {chosen}" in result.output
    stored = tomllib.loads((out / "config.toml").read_text())
    assert stored["backbone"] == chosen and "rank_from" not in stored  # config.toml reruns the same backbone
    assert FinetuneConfig.from_dict(stored).backbone == chosen
    assert json.loads((out / "metrics.json").read_text())["backbone"] == chosen
    # --rank-from takes a ranking's recommendation without ranking again
    again = run_cli("finetune", "--backbone", "auto", "--rank-from", out / "rank.json", *args[:-1], tmp_path / "from")
    assert again.exit_code == 0, again.output
    assert "ranking the backbones" not in again.output and f"{chosen}, the recommendation of" in again.output
    assert tomllib.loads((tmp_path / "from" / "config.toml").read_text())["backbone"] == chosen


def test_finetune_top_k_fine_tunes_the_best_and_prints_their_leaderboard(photos, run_cli, tmp_path):
    out = tmp_path / "top"
    args = ["--data", photos, "--image-size", 64, "--workers", 0, "--batch-size", 16, "--out", out]
    args += ["--backbones", "efficientnet_lite0,efficientnet_lite1", "--finetune-top", 2]
    args += ["--strategy", "linear-probe", "--epochs", 1, "--analysis", "off"]
    result = run_cli("rank", *args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "rank.json").read_text())
    tuned = record["finetuned"]
    assert [t["backbone"] for t in tuned] == [r["backbone"] for r in record["rows"]]
    for t in tuned:
        assert (out / t["backbone"] / "model.safetensors").is_file()
        assert t["kept_epoch"] == 1 and 0 < t["val_accuracy"] <= 1 and t["val_accuracy_tta"] is not None
    assert "fine-tuned:" in result.output and "KEPT EPOCH" in result.output and "WITH TTA" in result.output


class Scores:
    """A plugin adding two scores: one that works, one that fails."""

    @hookimpl
    def register_transferability_scores(self, register):
        register("mean_norm", lambda f, y, vf, vy: float((f**2).sum(1).mean() ** 0.5), "mean feature norm")
        register("broken_score", lambda f, y, vf, vy: 1 / 0, needs_validation=True)


def test_a_plugin_adds_a_score_column_and_a_failing_score_is_a_warning(plugin, photos, tmp_path):
    plugin(Scores(), "scores")
    config = FinetuneConfig(data=str(photos), out=str(tmp_path / "r"), **SMALL)
    with pytest.warns(zoo_adapt.errors.ZooAdaptWarning, match="'broken_score' of plugin 'scores' failed"):
        ranking = zoo_adapt.rank(config, backbones=["efficientnet_lite0"], log=None)
    only = ranking.rows[0]
    assert only.scores["mean_norm"] > 0 and only.scores["broken_score"] is None
    assert "MEAN_NORM" in ranking.lines()[0]
    assert "mean_norm" in (tmp_path / "r" / "rank.csv").read_text().splitlines()[0]


def test_a_reserved_score_name_breaks_only_its_plugin(plugin, photos):
    class Clash:
        @hookimpl
        def register_transferability_scores(self, register):
            register("logme", lambda f, y, vf, vy: 0.0)

    with pytest.warns(zoo_adapt.errors.ZooAdaptWarning, match="'logme' is a built-in column"):
        plugin(Clash(), "clash")
        from zoo_adapt.zoo.rank_scores import transferability_scores

        assert "logme" not in transferability_scores()


class Crashy:
    """Serves `crashnet`, whose weights are 'bundled' but whose build always fails."""

    @hookimpl
    def register_backbones(self, register):
        register("crashnet", upstream="CrashNet", params=1000)

    @hookimpl
    def build_backbone(self, entry, pretrained):
        return [][0]

    @hookimpl
    def backbone_head(self, entry):
        return None

    @hookimpl
    def backbone_groups(self, entry):
        return None

    @hookimpl
    def backbone_normalization(self, entry):
        return None

    @hookimpl
    def backbone_source(self, entry):
        from zoo_adapt.plugin_api import Source

        return Source("crash", None, "bundled")


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_a_broken_plugin_is_one_row_and_the_others_go_on(plugin, photos, run_cli, tmp_path):
    plugin(Crashy(), "crashy")
    args = ["--data", photos, "--image-size", 64, "--workers", 0]
    result = run_cli("rank", "--backbones", "crashnet,efficientnet_lite0", *args, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "a" / "rank.json").read_text())["rows"]
    assert rows[0]["backbone"] == "efficientnet_lite0" and rows[0]["error"] is None
    assert rows[1]["backbone"] == "crashnet" and "plugin 'crashy'" in rows[1]["error"]
    assert "IndexError" in rows[1]["error"] and "\n" not in rows[1]["error"]
    line = error_line(run_cli("rank", "--backbones", "crashnet", *args, "--out", tmp_path / "b"))
    assert "nothing could be ranked (crashnet: plugin 'crashy'" in line and "--include-random" in line


def test_unknown_backbone_is_one_line_with_close_names_and_writes_nothing(photos, run_cli, tmp_path):
    result = run_cli("rank", "--backbones", "efficientnet_lite9", "--data", photos, "--out", tmp_path / "o")
    line = error_line(result)
    assert "unknown backbone 'efficientnet_lite9'" in line and "efficientnet_lite0" in line
    assert not (tmp_path / "o").exists()


def test_nothing_offline_names_include_random_and_the_offline_weights(photos, run_cli, tmp_path):
    result = run_cli("rank", "--max-params", "1M", "--data", photos, "--out", tmp_path / "o")
    line = error_line(result)
    assert "nothing to rank within --max-params without a download" in line and "--include-random" in line
    assert all(name in line for name in LITES)
    assert not (tmp_path / "o").exists()


def test_named_backbones_that_need_a_download_offline_fail_as_rows_then_one_line(offline, photos, run_cli, tmp_path):
    result = run_cli("rank", "--backbones", "resnet18", "--data", photos, "--image-size", 64, "--out", tmp_path / "o")
    line = error_line(result)
    assert "nothing could be ranked (resnet18: cannot download pretrained weights" in line
    assert "--include-random" in line and all(name in line for name in LITES)
    assert json.loads((tmp_path / "o" / "rank.json").read_text())["recommended"] is None


def test_one_image_per_class_says_logme_needs_two(photos, run_cli, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(photos, data)
    for extra in sorted((data / "train" / "moon").iterdir())[1:]:
        extra.unlink()
    result = run_cli("rank", "--backbones", "efficientnet_lite0", "--data", data, "--out", tmp_path / "o")
    line = error_line(result)
    assert "at least two training images per class" in line and "'moon'" in line and "has 1" in line


def test_multi_label_ranks_by_logme_and_says_which_scores_apply(module_tmp, run_cli, tmp_path):
    root = build_multilabel(module_tmp / "ml", PHOTOS[:4], train=40, val=20)
    args = ["--labels", root / "labels.csv", "--data", root, "--multi-label", "--image-size", 64, "--workers", 0]
    result = run_cli("rank", "--backbones", "efficientnet_lite0", *args, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "multi-label: LogME only (one binary target per label); kNN and the probe need one label per image" in (
        result.output
    )
    only = json.loads((tmp_path / "o" / "rank.json").read_text())["rows"][0]
    assert math.isfinite(only["logme"]) and only["probe_accuracy"] is None and only["knn_accuracy"] is None


def test_bad_rank_options_are_one_line(run_cli, tmp_path):
    assert "--finetune-top must be at least 0" in error_line(run_cli("rank", "--finetune-top", "-1"))
    bad = error_line(run_cli("finetune", "--rank-from", tmp_path / "rank.json", "--out", tmp_path / "o"))
    assert "--rank-from chooses the backbone: it needs --backbone auto" in bad
    assert "lr-find needs a backbone name, not auto" in error_line(run_cli("lr-find", "--backbone", "auto"))
    pretrained_only = run_cli("finetune", "--backbone", "auto", "--no-pretrained", "--out", tmp_path / "o")
    assert "--backbone auto ranks the zoo's pretrained backbones" in error_line(pretrained_only)
    missing = run_cli("finetune", "--backbone", "auto", "--rank-from", tmp_path / "none.json", "--out", tmp_path / "o")
    assert "--rank-from" in error_line(missing) and "no such file" in error_line(missing)
    (tmp_path / "bad.json").write_text('{"rows": []}')
    broken = run_cli("finetune", "--backbone", "auto", "--rank-from", tmp_path / "bad.json", "--out", tmp_path / "o")
    assert "is not a rank.json" in error_line(broken)


def test_the_guide_s_score_plugin_passes_its_own_test_and_adds_a_column(plugin, photos, tmp_path, monkeypatch):
    """docs/plugins.md, "A complete transferability score", exactly as written."""
    body = (ROOT / "docs" / "plugins.md").read_text().split("\n## A complete transferability score\n", 1)[1]
    files = dict(re.findall(r"^`([\w/.]+)`:\n\n```\w+\n(.*?)```", body.split("\n## ", 1)[0], re.S | re.M))
    assert set(files) == {"pyproject.toml", "zoo_adapt_ncm.py", "test_ncm.py"}
    for name in ("zoo_adapt_ncm.py", "test_ncm.py"):
        (tmp_path / name).write_text(files[name])
    monkeypatch.syspath_prepend(str(tmp_path))
    guide_module = importlib.import_module("zoo_adapt_ncm")
    importlib.import_module("test_ncm").test_ncm()
    entry_points = tomllib.loads(files["pyproject.toml"])["project"]["entry-points"]["zoo_adapt"]
    assert entry_points == {"zoo_adapt_ncm": "zoo_adapt_ncm"}
    plugin(guide_module, "zoo_adapt_ncm")
    config = FinetuneConfig(data=str(photos), out=str(tmp_path / "r"), **SMALL)
    ranking = zoo_adapt.rank(config, backbones=["efficientnet_lite0"], include_random=True, log=None)
    pretrained, random = sorted(ranking.rows, key=lambda r: not r.pretrained)
    assert pretrained.scores["ncm"] > random.scores["ncm"] > 0
    assert "NCM" in ranking.lines()[0]
