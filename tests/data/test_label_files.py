"""Labels from a CSV/TSV file: good files load with the classes, splits and paths they
name; every bad row is one line naming the file and the line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.inputs import load_datasets


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return tmp_path


def write(path, text):
    path.write_text(text)
    return path


def config(root, labels, **kw):
    return FinetuneConfig(data=str(root), labels=str(labels), **kw).validate()


GOOD = """path,label,split
im0.png,dog,train
im1.png,cat,train
im2.png,dog,train
im3.png,cat,train
im4.png,dog,val
im5.png,cat,test
"""


def test_csv_with_splits_loads_sorted_classes_and_val_rows(images):
    data = load_datasets(config(images, write(images / "l.csv", GOOD)))
    assert data.classes == ["cat", "dog"]
    assert [(p.name, y) for p, y in data.train.samples.items] == [
        ("im0.png", 1),
        ("im1.png", 0),
        ("im2.png", 1),
        ("im3.png", 0),
    ]
    assert [(p.name, y) for p, y in data.val.samples.items] == [("im4.png", 1)]  # val rows before test rows


def test_tsv_custom_columns_and_held_out_fraction(images):
    text = "file\tspecies\n" + "".join(f"im{i}.png\t{'ab'[i % 2]}\n" for i in range(8))
    data = load_datasets(
        config(images, write(images / "l.tsv", text), path_column="file", label_column="species", val_split=0.25)
    )
    assert data.classes == ["a", "b"]
    assert len(data.train) == 6 and len(data.val) == 2
    assert sorted(y for _, y in data.val.samples.items) == [0, 1]  # stratified


def test_paths_relative_to_the_label_file_without_data(images):
    data = load_datasets(FinetuneConfig(labels=str(write(images / "l.csv", GOOD))).validate())
    assert len(data.train) == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,label\nim0.png,a\nmissing.png,b\n", "l.csv line 3: image .*missing.png not found"),
        ("path,label\nim0.png,a\nim1.png,\n", "l.csv line 3: no label in column 'label'"),
        ("path,label\nim0.png,a\n,b\n", "l.csv line 3: no path in column 'path'"),
        (
            "path,label\nim0.png,a\nim1.png,b\nim0.png,b\n",
            "l.csv line 4: image im0.png is listed again \\(first on line 2\\)",
        ),
        ("path,label,split\nim0.png,a,train\nim1.png,b,dev\n", "l.csv line 3: split 'dev' must be train, val or test"),
        (
            "path,label,split\nim0.png,a,train\nim1.png,a,train\nim2.png,b,val\n",
            "l.csv line 4: class 'b' has no training images",
        ),
        (
            "path,label\nim0.png,a|b\nim1.png,b\n",
            "l.csv line 2: label 'a\\|b' holds several labels; give --multi-label",
        ),
        (
            "file,label\nim0.png,a\n",
            "l.csv has no column 'path' \\(its columns: file, label\\); name the column with --path-column",
        ),
        ("path,label\n", "l.csv has a header but no rows"),
        ("path,label\nim0.png,a\nbroken.png,b\n", "cannot read image .*broken.png"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_the_line(images, text, message):
    with pytest.raises(ZooAdaptError, match=message) as e:
        load_datasets(config(images, write(images / "l.csv", text)))
    assert "\n" not in str(e.value)


def test_bad_option_combinations(images):
    with pytest.raises(ZooAdaptError, match="--multi-label needs --labels"):
        FinetuneConfig(multi_label=True).validate()
    with pytest.raises(ZooAdaptError, match="--select-metric map is for --multi-label"):
        FinetuneConfig(select_metric="map").validate()
    with pytest.raises(ZooAdaptError, match="give --labels or --dataset"):
        FinetuneConfig(labels="x.csv", dataset="cifar10").validate()


def test_multi_label_rows(images):
    text = "path,label,split\nim0.png,a|b,train\nim1.png,c,train\nim2.png,,train\nim3.png, c | a ,val\n"
    data = load_datasets(config(images, write(images / "l.csv", text), multi_label=True))
    assert data.classes == ["a", "b", "c"]
    assert [y for _, y in data.train.samples.items] == [(0, 1), (2,), ()]
    assert data.train.raw(0)[1].tolist() == [1.0, 1.0, 0.0]
    assert data.val.raw(0)[1].tolist() == [1.0, 0.0, 1.0]


def test_multi_label_val_class_unseen_in_training_is_an_error(images):
    text = "path,label,split\nim0.png,a|b,train\nim1.png,b,train\nim3.png,c|a,val\n"
    with pytest.raises(ZooAdaptError, match="l.csv line 4: class 'c' has no training images"):
        load_datasets(config(images, write(images / "l.csv", text), multi_label=True))


def test_cli_names_the_row(images, run_cli):
    labels = write(images / "l.csv", "path,label\nim0.png,a\nnope.png,b\n")
    result = run_cli("finetune", "--data", images, "--labels", labels, "--out", images / "run")
    assert result.exit_code == 1
    assert "l.csv line 3: image" in result.output and "Traceback" not in result.output
