"""The tool's own checks answer before torch is imported: a wrong --data path, a bad
option value, an unknown backbone, a val/ class train/ lacks. The CLI runs with torch,
timm and torchvision made unimportable: a check that waited for them would fail with an
ImportError instead of its own line."""

from __future__ import annotations

import pytest

from helpers import one_line_error, zoo

# imported at start-up (sitecustomize): importing torch, timm or torchvision fails
BLOCK = """
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ImportError(f"{name} imported before the check")

sys.meta_path.insert(0, _Blocked())
"""


@pytest.fixture
def no_torch(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK)
    return {"PYTHONPATH": str(site)}


def split_folder(root, train=("cat", "dog"), val=("cat", "dog", "fox", "owl")):
    for split, names in (("train", train), ("val", val)):
        for name in names:
            (root / split / name).mkdir(parents=True)
            (root / split / name / "x.png").write_bytes(b"not read before the check")
    return root


@pytest.mark.parametrize(
    ("args", "needles", "code"),
    [
        (["--data", "{tmp}/nowhere"], ["data folder not found", "nowhere"], 1),
        (["--data", "{tmp}/data/train/cat/x.png"], ["--data takes a folder of images", "x.png is a file"], 1),
        (["--strategy", "twostage"], ["'twostage' is not one of", "did you mean 'two-stage'"], 2),
        (["--backbone", "resnet51"], ["unknown backbone 'resnet51'", "Did you mean resnet50"], 1),
        (["--data", "{tmp}/data"], ["val/ has classes that train/ lacks: fox, owl", "(train/ classes: cat, dog)"], 1),
        (["--labels", "{tmp}/labels.csv"], ["label file not found"], 1),
        (["--data", "{tmp}/good", "--target-data", "{tmp}/elsewhere"], ["target folder not found"], 1),
    ],
)
def test_checks_that_need_no_torch_answer_without_it(tmp_path, no_torch, args, needles, code):
    split_folder(tmp_path / "data")
    split_folder(tmp_path / "good", val=("cat", "dog"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    one_line_error(zoo("finetune", *args, "--out", tmp_path / "run", env=no_torch), *needles, code=code)
    assert not (tmp_path / "run").exists()


def test_lr_find_checks_first_too(tmp_path, no_torch):
    one_line_error(zoo("lr-find", "--data", tmp_path / "nowhere", env=no_torch), "data folder not found")


def test_the_block_works(tmp_path, no_torch):
    """The same environment fails a command that needs torch: the tests above would notice."""
    split_folder(tmp_path / "data", val=("cat", "dog"))
    result = zoo("finetune", "--data", tmp_path / "data", "--out", tmp_path / "run", env=no_torch)
    assert result.returncode != 0 and "imported before the check" in result.stderr


def test_the_python_api_says_it_in_the_same_words(tmp_path):
    from zoo_adapt import ZooAdaptError
    from zoo_adapt.job.inputs import load_datasets

    from helpers import small

    with pytest.raises(ZooAdaptError, match=r"val/ has classes that train/ lacks: fox, owl"):
        load_datasets(small(tmp_path, split_folder(tmp_path / "data")))
