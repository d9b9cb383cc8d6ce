"""Bad input that used to get through (issue 21, item 11): each is refused or reported
in one line, before anything is written."""

from __future__ import annotations

import math
import os
import sys
from unittest.mock import patch

import pytest

from zoo_adapt.cli import app
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.job.config import build_config, declarations, value_type
from zoo_adapt.zoo.methods import resolve_options

from helpers import zoo

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
    with pytest.warns(ZooAdaptWarning, match="--disable-plugin efficientnet_lite: .*did you mean 'efficientnet_lite0'"):
        with disabled(["efficientnet_lite"]):
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
