"""Bad input that used to get through (issue 21, item 11): each is refused or reported
in one line, before anything is written."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from unittest.mock import patch

import pytest

from zoo_adapt.cli import app
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.job.config import build_config, declarations, value_type
from zoo_adapt.zoo.methods import resolve_options

from helpers import small, zoo

FLOAT_OPTIONS = [name for name in declarations() if value_type(name)[0] is float]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOAT_OPTIONS)
def test_non_finite_numbers_are_refused_for_every_float_option(name, value):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ZooAdaptError, match=f"^{flag} must be a finite number, not -?(nan|inf)$"):
        build_config({name: value})


def test_non_finite_numbers_in_a_config_file(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("label_smoothing = nan\n")
    with pytest.raises(ZooAdaptError, match="label_smoothing must be a finite number, not nan"):
        build_config({}, str(file))


@pytest.mark.parametrize(("method", "key"), [("dann", "gamma"), ("dann", "lr_factor"), ("mcc", "temperature")])
def test_non_finite_method_options_are_refused(method, key):
    for value in (math.nan, math.inf):
        with pytest.raises(ZooAdaptError, match=f"option '{key}' of adaptation method '{method}' must be a finite"):
            resolve_options(method, {key: value})


def test_nan_on_the_command_line_writes_nothing(run_cli, tmp_path):
    result = run_cli("finetune", "--lr", "nan", "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "--lr must be a finite number, not nan" in result.output
    assert not (tmp_path / "run").exists()


HUGE = "x" * 10_000_000


def main(capsys, *args) -> tuple[int, str]:
    """`zoo-adapt ARGS` through the entry point (its last-resort handler included), in
    this process: (exit status, stderr)."""
    capsys.readouterr()
    with patch.object(sys, "argv", ["zoo-adapt", *map(str, args)]), pytest.raises(SystemExit) as done:
        app.main()
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "line",
    [
        f'strategy = "{HUGE}"',  # a choice
        f'epochs = "{HUGE}"',  # a number given text
        f'lr = "{HUGE}"',  # a number or a word
        f'log = "{HUGE}"',  # a list
        f'{HUGE} = "x"',  # an unknown key
        f'export = ["{HUGE}"]',
    ],
    ids=["choice", "number", "number-or-word", "list", "unknown-key", "list-item"],
)
def test_a_huge_value_in_a_config_file_makes_a_short_error(tmp_path, line):
    file = tmp_path / "c.toml"
    file.write_text(line + "\n")
    with pytest.raises(ZooAdaptError) as e:
        build_config({}, str(file))
    assert len(str(e.value)) < 200 + len(str(file)), str(e.value)[:300]
    assert "(10000000 characters)" in str(e.value)


@pytest.mark.parametrize("key", ["backbone", "data", "weights", "labels", "dataset", "device", "augment"])
def test_a_huge_value_reaching_the_job_makes_a_short_error(tmp_path, key, capsys):
    """Values the option reader cannot judge (names, paths) fail later, in the job or on
    the file system: still one short line."""
    file = tmp_path / "c.toml"
    file.write_text(f'{key} = "{"x" * 1_000_000}"\nimage-size = 32\npretrained = false\n')
    code, err = main(capsys, "finetune", "--config", file, "--out", tmp_path / "run")
    assert code == 1
    [line] = err.splitlines()
    assert line.startswith("Error: ") and len(line) < 300, line[:400]
    assert not (tmp_path / "run").exists()


def test_a_label_file_with_an_unterminated_quote_names_its_line(tmp_path):
    from zoo_adapt.data.label_file import LabelColumns, read_rows

    (tmp_path / "a.png").write_bytes(b"")
    rows = ["path,label", "a.png,brick", '"b.png,coffee'] + [f"c{i}.png,grass" for i in range(2000)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ZooAdaptError) as e:
        read_rows(tmp_path / "labels.csv", None, LabelColumns())
    message = str(e.value)
    assert "labels.csv line 3: a quote opened here is not closed" in message
    assert "runs to line 2003" in message
    assert len(message) < 250 + len(str(tmp_path)), message[:400]


def test_a_notes_column_may_hold_line_breaks(tmp_path):
    from zoo_adapt.data.label_file import LabelColumns, read_rows

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "labels.csv").write_text('path,label,notes\na.png,brick,"two\nlines"\n')
    [row] = read_rows(tmp_path / "labels.csv", None, LabelColumns())
    assert row.labels == ["brick"]


def test_unknown_plugin_names_to_disable_are_reported_once_with_the_closest():
    result = zoo(
        "--disable-plugin",
        "vitt",
        "--disable-plugin",
        "vitt",
        "plugins",
        env={"ZOO_ADAPT_DISABLE_PLUGINS": "resnt,bogus,resnt"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: $ZOO_ADAPT_DISABLE_PLUGINS resnt: no plugin of that name is installed (did you mean 'resnet'?)",
        "warning: $ZOO_ADAPT_DISABLE_PLUGINS bogus: no plugin of that name is installed",
        "warning: --disable-plugin vitt: no plugin of that name is installed (did you mean 'vit'?)",
    ]


def test_disabling_an_unknown_name_in_process_suggests_the_closest():
    from zoo_adapt.errors import ZooAdaptWarning
    from zoo_adapt.zoo.plugins import disabled, get_plugin_manager

    get_plugin_manager()
    with pytest.warns(ZooAdaptWarning, match="--disable-plugin efficientnet_lit: .*did you mean 'efficientnet_lite'"):
        with disabled(["efficientnet_lit"]):
            pass


def test_a_plugin_calling_sys_exit_is_contained_like_other_broken_plugins(tmp_path):
    """At import and in a registering hook: reported on one line, everything else works."""
    for name, code in {
        "quitter": "import sys\nsys.exit(3)\n",
        "leaver": "import sys\nfrom zoo_adapt.plugin_api import hookimpl\n\n"
        "@hookimpl\ndef register_backbones(register):\n    sys.exit('bye')\n",
    }.items():
        (tmp_path / f"zoo_adapt_{name}.py").write_text(code)
        info = tmp_path / f"zoo_adapt_{name}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: zoo-adapt-{name}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[zoo_adapt]\n{name} = zoo_adapt_{name}\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    result = zoo("list", env={"PYTHONPATH": path})
    assert result.returncode == 0, result.stderr
    assert "resnet18" in result.stdout
    assert sorted(result.stderr.splitlines()) == [
        "warning: plugin 'leaver' (zoo-adapt-leaver 0.1.0) is broken and was skipped: "
        "register_backbones raised it called sys.exit('bye')",
        "warning: plugin 'quitter' (zoo-adapt-quitter 0.1.0) is broken and was skipped: "
        "failed to import: it called sys.exit(3)",
    ]


@pytest.fixture(scope="module")
def tiny_model(demo, module_tmp):
    """A one-epoch model of the demo's five classes (resnet18 from scratch at 32 px)."""
    from zoo_adapt import finetune

    finetune(small(module_tmp, demo, epochs=1, out=str(module_tmp / "tiny")), log=None)
    return module_tmp / "tiny" / "model.safetensors"


def test_predict_reports_a_link_to_itself_in_a_folder_and_goes_on(tiny_model, demo, tmp_path, run_cli):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(demo / "val" / "brick" / sorted(os.listdir(demo / "val" / "brick"))[0], folder / "a.png")
    os.symlink("loop.jpg", folder / "loop.jpg")
    os.symlink("self", folder / "self")
    result = run_cli("predict", "--model", tiny_model, "--json", folder)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    why = "Too many levels of symbolic links (a link that leads back to itself)"
    assert errors == [
        f"Error: cannot read {folder / 'loop.jpg'}: {why}",
        f"Error: cannot read {folder / 'self'}: {why}",
    ]
    predicted = json.loads(result.stdout[result.stdout.index("[") :])
    assert [p["path"] for p in predicted if "prediction" in p] == [str(folder / "a.png")]


def test_training_on_a_folder_with_a_link_to_itself_names_it(demo, tmp_path):
    from zoo_adapt.data.folders import scan_folder

    data = shutil.copytree(demo / "train", tmp_path / "train")
    os.symlink("loop.png", data / "moon" / "loop.png")
    with pytest.raises(ZooAdaptError, match="cannot read .*moon/loop.png: .*a link that leads back to itself"):
        scan_folder(data)


def test_analyse_on_a_folder_holding_only_val_takes_it_as_the_split(tiny_model, demo, tmp_path, run_cli):
    root = tmp_path / "held"
    shutil.copytree(demo / "val", root / "val")
    result = run_cli("analyse", "--model", tiny_model, "--data", root, "--cams", "off", "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    table = (tmp_path / "a" / "per_class.csv").read_text()
    assert "brick" in table and "val," not in table


def test_a_path_of_the_wrong_kind_says_what_is_expected(demo, tmp_path):
    image = next((demo / "val" / "brick").iterdir())
    with pytest.raises(ZooAdaptError, match=f"^--labels takes a CSV or TSV file; {tmp_path} is a folder$"):
        build_config({"labels": str(tmp_path), "data": str(demo)})
    with pytest.raises(ZooAdaptError, match=f"^--target-data takes a folder of images; {image} is a file$"):
        build_config({"target_data": str(image), "data": str(demo)})
    with pytest.raises(ZooAdaptError, match=f"^--data takes a folder of images; {image} is a file$"):
        build_config({"data": str(image)})
    from zoo_adapt.data.label_file import LabelColumns, read_rows

    with pytest.raises(ZooAdaptError, match="--labels takes a CSV or TSV file; .* is a folder"):
        read_rows(tmp_path, None, LabelColumns())  # evaluate --labels comes here


def test_method_options_without_target_data_are_an_error(tmp_path, run_cli):
    with pytest.raises(ZooAdaptError, match=r"^--adapt-option \(or \[adapt_options\]\) 'gamma' needs --target-data$"):
        build_config({"adapt_options": {"gamma": 5.0}})
    config = tmp_path / "c.toml"
    config.write_text("[adapt_options]\nwidth = 64\n")
    result = run_cli("finetune", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 1 and "'width' needs --target-data" in result.output
    assert not (tmp_path / "run").exists()


def multi_label_file(tmp_path, demo, cells):
    images = sorted((demo / "train").glob("*/*.png"))
    rows = ["path,label"] + [f"{images[i]},{cell}" for i, cell in enumerate(cells)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "labels.csv"


def test_multi_label_cells_written_with_another_delimiter_are_warned_about(demo, tmp_path):
    from zoo_adapt.job.inputs import load_datasets

    cells = ['"brick;sky"', "moon;grass", "grass", "brick;moon", '"sky;grass"'] * 4
    file = multi_label_file(tmp_path, demo, cells)
    data = load_datasets(small(tmp_path, None, labels=str(file), multi_label=True))
    assert data.warnings == [
        f"{file}: 16 of 20 label cells hold ';' (e.g. 'brick;sky') but labels are split at '|', so each "
        "such cell is one class; give --label-delimiter ';' if ';' separates labels"
    ]
    assert "brick;sky" in data.classes  # what the user is warned about
    fine = multi_label_file(tmp_path, demo, [c.replace(";", "|") for c in cells])
    assert load_datasets(small(tmp_path, None, labels=str(fine), multi_label=True)).warnings == []
    few = multi_label_file(tmp_path, demo, ["brick;sky"] + ["moon|grass"] * 19)  # a class name may hold ';'
    assert load_datasets(small(tmp_path, None, labels=str(few), multi_label=True)).warnings == []


def test_the_delimiter_warning_is_shown_when_the_run_starts(demo, tmp_path):
    from zoo_adapt import finetune

    file = multi_label_file(tmp_path, demo, ["brick;sky", "moon;grass", "grass"] * 5)
    lines: list[str] = []
    finetune(small(tmp_path, None, labels=str(file), multi_label=True, epochs=1), log=lines.append)
    assert any(line.startswith(f"warning: {file}: 10 of 15 label cells hold ';'") for line in lines), lines
