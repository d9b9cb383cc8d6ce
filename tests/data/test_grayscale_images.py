"""--in-chans 1 decoding: files read as one 8-bit channel ("L") the way the RGB reading
reads them (16-bit scaled from its full range, transparency on white), and every
transform (training, evaluation, images held on the device) giving one channel."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from zoo_adapt.data.device_images import _Canvas
from zoo_adapt.data.images import open_image
from zoo_adapt.data.transforms import EvalTransform, TrainTransform, eval_transform
from zoo_adapt.zoo.backbone import Normalization

RGB = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(3, 16, 16), crop_pct=1.0)
GRAY = RGB.with_channels(1)


def test_one_channel_normalization_is_the_mean_of_the_three():
    assert GRAY.input_size == (1, 16, 16) and GRAY.channels == 1
    assert np.allclose(GRAY.mean, [np.mean(RGB.mean)]) and np.allclose(GRAY.std, [np.mean(RGB.std)])
    assert GRAY.at(32).input_size == (1, 32, 32) and Normalization.from_dict(GRAY.to_dict()) == GRAY


def test_sixteen_bit_grayscale_is_scaled_from_its_full_range(tmp_path):
    levels = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(levels).save(tmp_path / "x.png")
    gray = open_image(tmp_path / "x.png", mode="L")
    assert gray.mode == "L" and np.asarray(gray).tolist() == [[0, 1, 128, 255]]
    assert np.array_equal(np.asarray(open_image(tmp_path / "x.png").convert("L")), np.asarray(gray))


def test_transparency_on_white_and_colour_as_luma(tmp_path):
    la = Image.fromarray(np.array([[[0, 0], [0, 255], [100, 128]]], np.uint8), "LA")
    la.save(tmp_path / "alpha.png")
    assert np.asarray(open_image(tmp_path / "alpha.png", mode="L")).tolist() == [[255, 0, 177]]
    rgb = Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0], [10, 20, 30]]], np.uint8))
    rgb.save(tmp_path / "rgb.png")
    assert np.array_equal(np.asarray(open_image(tmp_path / "rgb.png", mode="L")), np.asarray(rgb.convert("L")))


def test_every_transform_gives_one_channel_from_any_image():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 20, 3), np.uint8))
    gray = rgb.convert("L")
    for transform in (EvalTransform(GRAY), TrainTransform(GRAY, min_scale=1.0, hflip=False)):
        assert transform.image_mode == "L"
        assert torch.equal(transform(rgb, random.Random(0)), transform(gray, random.Random(0)))
        assert transform(gray, random.Random(0)).shape == (1, 16, 16)
    assert eval_transform(GRAY)(rgb).shape == (1, 16, 16) and eval_transform(RGB)(gray).shape == (3, 16, 16)
    canvas, size = _Canvas(GRAY, 16)(rgb)
    assert canvas.shape[0] == 1 and canvas.dtype == torch.uint8 and size.tolist() == [19, 16]
