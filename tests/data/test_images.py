"""Images read right: one decoder for training, evaluation and prediction (EXIF
orientation, 16-bit and other modes, transparency), a start-up check that really
decodes, and class folders that are links. Every image is built here, a few pixels big."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
from PIL import Image

from zoo_adapt import ZooAdaptError
from zoo_adapt.data import folders as data_
from zoo_adapt.data.folders import ImageDataset, image_files, scan_folder
from zoo_adapt.data.images import check_image, open_image

from helpers import bomb_png


def photo(w=64, h=48, seed=0) -> Image.Image:
    """A smooth image with some texture (JPEG must have data worth garbling)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1) + rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def jpeg_bytes(**kw) -> bytes:
    import io

    buf = io.BytesIO()
    photo(256, 192).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_truncated_jpeg_fails_the_startup_check(tmp_path):
    # Image.verify() reads only the headers, so a cut-off JPEG passed the check and failed in epoch 1
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg_bytes()[:-3000])
    with pytest.raises(ZooAdaptError, match="cannot read image .*cut.jpg"):
        open_image(cut)
    with pytest.raises(ZooAdaptError, match="cannot read image .*cut.jpg.*truncated"):
        check_image(cut)
    photo(256, 192).save(tmp_path / "camera.mpo", "MPO", save_all=True, append_images=[photo(256, 192)])
    (tmp_path / "camera.mpo").write_bytes((tmp_path / "camera.mpo").read_bytes()[:3000])  # cameras' JPEGs
    with pytest.raises(ZooAdaptError, match="camera.mpo.*truncated"):
        check_image(tmp_path / "camera.mpo")


def test_half_garbled_jpegs_fail_the_check_whenever_a_full_decode_fails(tmp_path):
    good, rng, failed = jpeg_bytes(), random.Random(0), 0
    for i in range(12):
        b = bytearray(good)
        for k in range(rng.randrange(len(b) // 2, len(b) - 100), len(b) - 2):
            b[k] = rng.randrange(256)
        path = tmp_path / f"garbled{i}.jpg"
        path.write_bytes(bytes(b))
        try:
            open_image(path)
        except ZooAdaptError:
            failed += 1
            with pytest.raises(ZooAdaptError, match=f"garbled{i}.jpg"):
                check_image(path)
    assert failed >= 6  # most garbled files fail to decode; every one of those fails the check


def test_sixteen_bit_png_keeps_its_grey_levels(tmp_path):
    # PIL's own conversion clips at 255: a 0..65535 ramp came out 99.6% white
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = np.asarray(open_image(tmp_path / "g16.png"))
    assert rgb.shape == (64, 64, 3) and (rgb == 255).mean() < 0.01
    expected = np.rint(ramp / 257.0).astype(np.uint8)  # the type's full range, 0..65535 -> 0..255
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    check_image(tmp_path / "g16.png")


def test_32_bit_modes_map_the_smallest_range_that_holds_them():
    from zoo_adapt.data.images import to_rgb

    def grey(a, mode):
        return np.asarray(to_rgb(Image.fromarray(a, mode)))[..., 0].tolist()

    assert grey(np.array([[0.0, 0.5, 1.0]], np.float32), "F") == [[0, 128, 255]]  # 0..1
    assert grey(np.array([[0, 100, 255]], np.int32), "I") == [[0, 100, 255]]  # 0..255
    assert grey(np.array([[0, 1000, 65535]], np.int32), "I") == [[0, 4, 255]]  # 0..65535
    assert grey(np.array([[-10, 0, 10]], np.int32), "I") == [[0, 128, 255]]  # stretched


def test_exif_orientation_is_applied_for_every_reader(tmp_path):
    # left half red, right half blue, stored with "rotate 90 clockwise to view" (orientation 6)
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20, 0] = 255
    a[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "c").mkdir()
    Image.fromarray(a).save(tmp_path / "c" / "phone.jpg", quality=95, exif=exif)
    for image in (
        open_image(tmp_path / "c" / "phone.jpg"),
        ImageDataset(scan_folder(tmp_path)).raw(0)[0],
    ):  # what loader workers and held images use
        upright = np.asarray(image).astype(int)
        assert image.size == (20, 40)  # width 20, height 40: turned upright
        assert upright[5, 10, 0] > 200 > upright[5, 10, 2]  # red on top
        assert upright[35, 10, 2] > 200 > upright[35, 10, 0]  # blue below


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # transparent black ...
    rgba[0, 0] = (255, 0, 0, 255)  # ... but one opaque red pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = np.asarray(open_image(tmp_path / "a.png"))
    assert got[0, 0].tolist() == [255, 0, 0] and got[3, 3].tolist() == [255, 255, 255]
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=1)
    assert np.asarray(open_image(tmp_path / "p.png"))[0, 0].tolist() == [255, 255, 255]
    la = Image.merge("LA", [Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 0)])
    la.save(tmp_path / "la.png")
    assert np.asarray(open_image(tmp_path / "la.png"))[0, 0].tolist() == [255, 255, 255]
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert open_image(tmp_path / "cmyk.jpg").mode == "RGB"


@pytest.mark.parametrize("side", [10_000, 20_000])  # PIL warns for the first, raises for the second
def test_decompression_bombs_are_refused_in_one_line(tmp_path, side):
    bomb = tmp_path / "bomb.png"
    bomb_png(bomb, side)
    for read in (open_image, check_image):
        with pytest.raises(ZooAdaptError, match="bomb.png.*decompression bomb") as e:
            read(bomb)
        assert "\n" not in str(e.value)


def tiny_folder(root, counts: dict[str, int]):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_class_folder_linking_to_its_parent_is_refused(tmp_path):
    root = tiny_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "loop").symlink_to(root, target_is_directory=True)
    with pytest.raises(ZooAdaptError, match=r"class folder .*d/loop is a link to .*d, which holds"):
        scan_folder(root)
    (root / "loop").unlink()
    (root / "also_a").symlink_to(root / "a", target_is_directory=True)
    with pytest.raises(ZooAdaptError, match=r"class folders .*d/a and .*d/also_a are the same folder"):
        scan_folder(root)


def test_linked_class_folders_and_files_count_once(tmp_path):
    root = tiny_folder(tmp_path / "d", {"a": 2})
    outside = tiny_folder(tmp_path / "elsewhere", {"b": 3})
    (root / "b").symlink_to(outside / "b", target_is_directory=True)  # a class kept elsewhere: fine
    (root / "a" / "again.png").symlink_to(root / "a" / "0.png")  # one file reached twice
    (root / "a" / "sub").symlink_to(root / "a", target_is_directory=True)  # a link loop
    samples = scan_folder(root)
    assert samples.classes == ["a", "b"] and samples.labels() == [0, 0, 1, 1, 1]
    (root / "b" / "stolen.png").symlink_to(root / "a" / "1.png")
    with pytest.raises(ZooAdaptError, match="same file .* in two classes"):
        scan_folder(root)


def test_hidden_files_are_not_images(tmp_path):
    root = tiny_folder(tmp_path / "d", {"a": 1})
    (root / "a" / "._0.png").write_bytes(b"AppleDouble")
    assert [p.name for p in image_files(root)] == ["0.png"]


def test_large_folders_skip_unreadable_images_by_the_documented_rule(tmp_path, monkeypatch, caplog):
    root = tiny_folder(tmp_path / "d", {"a": 10, "b": 10})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ZooAdaptError, match="broken.png"):
        scan_folder(root)  # 21 images: a small folder, so an error
    monkeypatch.setattr(data_, "SKIP_UNREADABLE_FROM", 20)
    monkeypatch.setattr(data_, "MAX_SKIPPED_FRACTION", 0.05)
    with caplog.at_level(logging.WARNING, "zoo_adapt"):
        samples = scan_folder(root)
    assert len(samples.items) == 20 and [p.name for p, _ in samples.skipped] == ["broken.png"]
    assert "skipped 1 unreadable image(s) of 21" in caplog.text and "broken.png" in caplog.text
    (root / "a" / "broken2.png").write_bytes(b"")
    with pytest.raises(ZooAdaptError, match=r"broken2?.png.*\(1 more unreadable images in"):
        scan_folder(root)  # 2 of 22 is above 5%: something is wrong with the folder
    assert len(scan_folder(root, skip_unreadable=True).skipped) == 2
