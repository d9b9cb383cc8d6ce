"""Every format PIL reads is an image in folder mode (GIF among them), and what a
folder holds besides images is named in one line, junk left silent."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
from PIL import Image

from zoo_adapt.data.folders import scan_folder
from zoo_adapt.data.paths import IMAGE_SUFFIXES, image_files

from helpers import ROOT

# PIL's format name for a suffix it writes (the PNM family and DIB as PIL saves them)
WRITERS = {".jpe": "JPEG", ".jfif": "JPEG", ".dib": "BMP", ".pbm": "PPM", ".pnm": "PPM", ".pgm": "PPM"}


def picture(seed: int, size: int = 12) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def messy_folder(root, gifs: int = 3):
    """Two classes, GIFs among PNGs, plus a note, macOS's .DS_Store and a Windows Thumbs.db."""
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        picture(c).save(root / name / "a.png")
        for i in range(gifs):
            picture(10 * c + i).save(root / name / f"g{i}.gif")
    (root / "cat" / "notes.txt").write_text("taken in May")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "dog" / "Thumbs.db").write_bytes(b"\0")
    return root


def test_every_listed_suffix_is_a_format_pil_reads(tmp_path):
    for i, suffix in enumerate(IMAGE_SUFFIXES):
        path = tmp_path / f"x{i}{suffix}"
        image = picture(i)
        image = image.convert("L") if suffix == ".pgm" else image.convert("1") if suffix == ".pbm" else image
        image.save(path, format=WRITERS.get(suffix))
        with Image.open(path) as im:
            im.load()
    assert len(image_files(tmp_path)) == len(IMAGE_SUFFIXES)


def test_gifs_are_read_and_what_was_passed_over_is_one_line(tmp_path, caplog):
    root = messy_folder(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="zoo_adapt"):
        samples = scan_folder(root)
    assert len(samples.items) == 8 and sum(p.suffix == ".gif" for p, _ in samples.items) == 6
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"skipped 1 file with an unsupported suffix in {root} (.txt: 1)"], lines


def test_only_junk_beside_the_images_says_nothing(tmp_path, caplog):
    root = messy_folder(tmp_path / "data")
    (root / "cat" / "notes.txt").unlink()
    with caplog.at_level(logging.WARNING, logger="zoo_adapt"):
        assert len(scan_folder(root).items) == 8
        assert len(image_files(root, report=True)) == 8
    assert not caplog.records


def test_predict_on_a_folder_predicts_the_gifs_and_names_what_it_passed_over(tmp_path):
    from zoo_adapt.model.build import create_model
    from zoo_adapt.ship.export import export_model

    root = messy_folder(tmp_path / "data", gifs=25)
    (root / "dog" / "scan.heic").write_bytes(b"\0")
    model = create_model("resnet18", pretrained=False, num_classes=2)
    export_model(model, tmp_path / "model.safetensors", ["cat", "dog"], model.zoo_adapt.normalization.at(32))
    out = tmp_path / "predictions.csv"
    result = subprocess.run(
        [sys.executable, "-m", "zoo_adapt", "predict", root, "--model", tmp_path / "model.safetensors"]
        + ["--output", out],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == 52 and sum(".gif," in row for row in rows) == 50
    skipped = [line for line in result.stderr.splitlines() if "unsupported" in line]
    assert skipped == [f"skipped 2 files with unsupported suffixes in {root} (.heic: 1, .txt: 1)"], result.stderr


def test_a_gif_keeps_its_colours_and_its_transparent_index_is_white(tmp_path):
    from zoo_adapt.data.images import open_image

    image = picture(5).quantize(16)
    image.save(tmp_path / "x.gif", transparency=0)
    rgb = np.asarray(open_image(tmp_path / "x.gif"))
    palette = np.asarray(image.convert("RGB"))
    clear = np.asarray(image) == 0
    assert clear.any() and (rgb[clear] == 255).all() and (rgb[~clear] == palette[~clear]).all()
