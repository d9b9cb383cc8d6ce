"""The per-image recipes train on the installed Pillow: timm's Posterize ops draw 0 bits
at some magnitudes, which Pillow 13 rejects."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from zoo_adapt.data.augment import image_recipe, posterize
from zoo_adapt.zoo.backbone import Normalization

NORM = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).at(16)
IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("augment", "draws"),
    [
        ("randaugment", 3000),  # the README's usual first choice
        ("autoaugment", 3000),
        ("rand-m7-n2-mstd0.5", 3000),  # the README's tuning example
        ("augmix", 1000),
        ("v0r", 1000),
        ("originalr", 1000),
        ("rand-m10-n3-mstd1-inc1", 1000),
        ("augmix-m10-w3-d3", 500),
    ],
)
def test_every_offered_recipe_survives_thousands_of_draws(augment, draws):
    recipe = image_recipe(augment, 0.0, NORM)
    for seed in range(draws):
        out = recipe(IMAGE, random.Random(seed))
        assert out.size == IMAGE.size and out.mode == "RGB"


def test_posterize_keeps_the_high_bits_and_zero_bits_is_black():
    pixels = np.asarray(IMAGE)
    for bits in range(9):
        kept = np.asarray(posterize(IMAGE, bits))
        assert np.array_equal(kept, pixels & np.uint8((0xFF << (8 - bits)) & 0xFF)), bits
    assert not np.asarray(posterize(IMAGE, 0)).any()
    assert posterize(IMAGE, 9) is IMAGE


def test_a_recipe_whose_posterize_draws_zero_bits_gives_the_black_image_and_leaves_timm_alone():
    from timm.data import auto_augment

    # AutoAugment v0's sub-policy [('Posterize', 0.8, 2), ('Solarize', 0.6, 10)]: 2/10 * 4 -> 0 bits
    recipe = image_recipe("autoaugment", 0.0, NORM)
    (transform,) = recipe.steps
    op = next(op for sub in transform.policy for op in sub if op.name == "Posterize" and op.magnitude == 2)
    op.prob = 1.0
    assert not np.asarray(op(IMAGE)).any()
    assert auto_augment.posterize is not posterize  # only this transform's ops were swapped
