"""--in-chans 1: the pretrained first convolution adapted to one input channel as timm
adapts it (the RGB kernels summed), for timm's models (timm builds them so) and others
(torchvision's: the engine swaps the first convolution), with no architecture named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.model.build import adapt_input_channels, create_model, first_conv
from zoo_adapt.ship.export import export_model
from zoo_adapt.zoo.backbone import backbone_of


def test_pretrained_stem_of_a_bundled_timm_model_is_the_sum_of_its_rgb_kernels():
    rgb = create_model("efficientnet_lite0", num_classes=4)
    gray = create_model("efficientnet_lite0", num_classes=4, in_chans=1)
    name, conv = first_conv(gray)
    assert conv.in_channels == 1 and name == first_conv(rgb)[0]
    assert torch.allclose(conv.weight, first_conv(rgb)[1].weight.sum(1, keepdim=True))
    rest = {k: v for k, v in gray.state_dict().items() if not k.startswith(name + ".")}
    assert all(torch.equal(v, rgb.state_dict()[k]) for k, v in rest.items() if not k.startswith("classifier."))
    norm = backbone_of(gray).built_normalization
    assert norm.input_size[0] == 1 and norm.mean == (0.5,) and norm.std == (0.5,)  # the mean of the three
    assert gray.eval()(torch.rand(2, 1, 64, 64)).shape == (2, 4)


def test_timm_builds_the_one_channel_model_itself_from_the_entry_option():
    """timm/NAME models get `in_chans` through the entry's options (as drop_path_rate):
    the model timm builds takes one channel, the stem timm's own."""
    import timm

    torch.manual_seed(0)
    model = create_model("timm/resnet10t", num_classes=3, pretrained=False, in_chans=1)
    assert backbone_of(model).entry.extra["in_chans"] == 1
    torch.manual_seed(0)
    plain = timm.create_model("resnet10t", num_classes=3, in_chans=1)
    assert first_conv(model)[1].weight.shape == first_conv(plain)[1].weight.shape == (24, 1, 3, 3)


def test_torchvision_model_gets_a_one_channel_first_convolution():
    model = create_model("resnet18", num_classes=3, pretrained=False, in_chans=1)
    conv = first_conv(model)[1]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (1, 64, (7, 7), (2, 2))
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 3)
    assert backbone_of(model).built_normalization.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))


def test_rgb_weights_file_is_summed_into_a_one_channel_model(tmp_path):
    """--weights FILE holding RGB kernels (another run's export, an ImageNet checkpoint)."""
    torch.manual_seed(0)
    rgb = create_model("resnet18", num_classes=3, pretrained=False)
    path = export_model(rgb, tmp_path / "rgb.safetensors", ["a", "b", "c"])
    gray = create_model("resnet18", pretrained=False, weights=path, in_chans=1)
    assert torch.allclose(gray.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(gray.fc.weight, rgb.fc.weight)


def test_a_model_that_cannot_be_adapted_is_one_line():
    with pytest.raises(ZooAdaptError, match=r"no nn.Conv2d, not a 3-channel convolution") as e:
        adapt_input_channels(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), 1, "mlp")
    assert "\n" not in str(e.value) and "mlp" in str(e.value)
    with pytest.raises(ZooAdaptError, match=r"its first nn.Conv2d \(0\) takes 4"):
        adapt_input_channels(nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(3, 8, 3)), 1)
    with pytest.raises(ZooAdaptError, match="in_chans must be 1 .* or 3"):
        create_model("resnet18", pretrained=False, in_chans=2)
