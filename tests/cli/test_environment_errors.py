"""A torch install that cannot work here (torchvision built for another torch, missing
CUDA libraries, an old driver) is said as such in one line, with the versions and the
pip line that fixes it, never as "a bug in zoo-adapt"."""

from __future__ import annotations

import importlib.metadata

import pytest

from zoo_adapt.errors import PluginError, environment_problem, install_line

from helpers import one_line_error, zoo

# at start-up (sitecustomize): `import torchvision` fails as a torchvision built for another torch does
MISMATCHED = """
import sys

class _Mismatched:
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")

sys.meta_path.insert(0, _Mismatched())
"""


@pytest.fixture
def mismatched(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(MISMATCHED)
    return {"PYTHONPATH": str(site)}


@pytest.mark.parametrize(
    "args",
    [
        ["finetune", "--data", "{data}", "--out", "{tmp}/run"],  # torchvision imported by the job's modules
        ["info", "resnet50"],  # imported by the built-in plugin's build_backbone
        ["predict", "--model", "{tmp}/model.safetensors", "{tmp}/x.jpg"],
    ],
)
def test_a_torchvision_that_does_not_match_torch_is_said_with_the_fix(tmp_path, demo, mismatched, args):
    if args[0] == "predict":  # a real model and image, so nothing but the import can fail
        from PIL import Image

        from zoo_adapt.model.build import create_model
        from zoo_adapt.ship.export import export_model

        model = create_model("resnet18", pretrained=False, num_classes=2)
        export_model(model, tmp_path / "model.safetensors", ["a", "b"], model.zoo_adapt.normalization.at(32))
        Image.new("RGB", (40, 40)).save(tmp_path / "x.jpg")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{data}", str(demo)) for a in args]
    torch_v, vision_v = importlib.metadata.version("torch"), importlib.metadata.version("torchvision")
    line = one_line_error(
        zoo(*args, env=mismatched),
        f"torchvision {vision_v} and torch {torch_v} do not work together",
        "operator torchvision::nms does not exist",
        f"pip install torch=={torch_v.partition('+')[0]} torchvision==",
    )
    assert "bug in zoo-adapt" not in line and "plugin" not in line
    assert not (tmp_path / "run").exists()


def test_broken_cuda_libraries_and_old_drivers_are_environment_problems():
    missing = OSError("libcudnn.so.9: cannot open shared object file: No such file or directory")
    assert "cannot load its native libraries" in environment_problem(missing)
    assert "--force-reinstall" in environment_problem(ImportError("libtorch_cuda.so: undefined symbol: cudaX"))
    wrapped = PluginError("plugin 'x' failed")
    wrapped.__cause__ = RuntimeError("The NVIDIA driver on your system is too old (found version 11040)")
    assert "--device cpu" in environment_problem(wrapped)
    assert environment_problem(RuntimeError("shapes cannot be multiplied")) is None
    assert environment_problem(OSError("[Errno 28] No space left on device")) is None


def test_the_pip_line_pairs_torch_with_its_torchvision_from_its_index():
    assert install_line("2.5.1") == "pip install torch==2.5.1 torchvision==0.20.1"
    assert install_line("2.4.0+cu121") == (
        "pip install torch==2.4.0 torchvision==0.19.0 --index-url https://download.pytorch.org/whl/cu121"
    )
    assert "pytorch.org/get-started" in install_line("1.13.1")
