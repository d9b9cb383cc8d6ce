"""Bad input, as a user meets it on the command line: one line on stderr, a non-zero exit,
no traceback."""

from __future__ import annotations

import shutil

import pytest

from helpers import bomb_png, one_line_error, zoo


@pytest.fixture(scope="module")
def model_file(demo, module_tmp):
    out = module_tmp / "run"
    done = zoo(
        "finetune",
        "--backbone",
        "resnet18",
        "--no-pretrained",
        "--data",
        demo,
        "--out",
        out,
        "--overwrite",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--no-tta",
        "--analysis",
        "off",
    )
    assert done.returncode == 0, done.stderr
    return out / "model.safetensors"


def finetune(*args, **kw):
    return zoo(
        "finetune",
        "--backbone",
        "resnet18",
        "--no-pretrained",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--analysis",
        "off",
        *args,
        **kw,
    )


def test_missing_data_folder(tmp_path):
    one_line_error(finetune("--data", tmp_path / "nope", "--out", tmp_path / "o"), "data folder not found")


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(finetune("--data", tmp_path / "empty", "--out", tmp_path / "o"), "no class subfolders")
    (tmp_path / "empty" / "cat").mkdir()
    one_line_error(finetune("--data", tmp_path / "empty", "--out", tmp_path / "o"), "holds no images")


def test_corrupt_image_in_training_data(tmp_path, demo):
    copy = shutil.copytree(demo, tmp_path / "data")
    victim = next((copy / "train" / "moon").glob("*.png"))
    victim.write_bytes(victim.read_bytes()[:60])  # truncated PNG
    line = one_line_error(finetune("--data", copy, "--out", tmp_path / "o"), "cannot read image")
    assert victim.name in line


def test_not_an_image_with_an_image_name(tmp_path, demo):
    copy = shutil.copytree(demo, tmp_path / "data")
    (copy / "train" / "grass" / "notes.jpg").write_text("not a picture")
    one_line_error(finetune("--data", copy, "--out", tmp_path / "o"), "notes.jpg")


def test_truncated_model_file(tmp_path, model_file, demo):
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(model_file.read_bytes()[:1000])
    one_line_error(zoo("evaluate", "--model", broken, "--data", demo / "val"), "cannot read")
    one_line_error(zoo("predict", "--model", broken, demo / "val"), "cannot read")


def test_missing_model_file(tmp_path, demo):
    one_line_error(zoo("evaluate", "--model", tmp_path / "none.safetensors", "--data", demo), "not found")


def test_class_mismatch_between_folder_and_model(tmp_path, model_file, demo):
    other = tmp_path / "other"
    shutil.copytree(demo / "val" / "moon", other / "sky")
    shutil.copytree(demo / "val" / "brick", other / "brick")
    one_line_error(zoo("evaluate", "--model", model_file, "--data", other), "classes the model does not know: sky")


def test_corrupt_image_in_predict_is_reported_and_others_still_predicted(tmp_path, model_file, demo):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    good = next((demo / "val" / "moon").glob("*.png"))
    result = zoo("predict", "--model", model_file, good, bad)
    one_line_error(result, "cannot read image", "bad.png")
    assert result.stdout.startswith(f"{good}: ")  # the readable image is still predicted


def test_unknown_backbone_and_bad_option(tmp_path, demo):
    one_line_error(
        zoo("finetune", "--backbone", "resnt50", "--data", demo, "--out", tmp_path / "o"),
        "unknown backbone 'resnt50'",
        "resnet50",
    )
    one_line_error(  # a choice: click's usage error, with the closest choice
        finetune("--data", demo, "--strategy", "linear", "--out", tmp_path / "o"), "--strategy", "linear-probe", code=2
    )
    one_line_error(zoo("evaluate", "--data", demo), "Missing option '--model'", code=2)  # click's usage error


def test_existing_run_is_not_overwritten(model_file, demo):
    one_line_error(finetune("--data", demo, "--out", model_file.parent), "already holds a run")


def test_pretrained_download_offline(tmp_path, demo):
    offline = {
        "TORCH_HOME": str(tmp_path / "th"),
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    for backbone in ("resnet18", "vit_t16"):
        result = zoo("finetune", "--backbone", backbone, "--data", demo, "--out", tmp_path / backbone, env=offline)
        one_line_error(result, "cannot download pretrained weights", "--no-pretrained", "--weights")


def test_unreadable_weights_file(tmp_path, demo):
    bad = tmp_path / "w.pth"
    bad.write_bytes(bytes(range(256)) * 4)
    line = one_line_error(
        finetune("--data", demo, "--out", tmp_path / "o", "--weights", bad),
        "cannot read weights file",
        "never unpickles",
    )
    assert "weights_only" not in line  # torch's advice to load it unsafely is not repeated


def test_torchvision_dataset_offline(tmp_path):
    env = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    one_line_error(
        finetune("--dataset", "cifar10", "--data-dir", tmp_path / "c", "--out", tmp_path / "o", env=env),
        "cannot get dataset cifar10",
        "--data",
    )
    one_line_error(finetune("--dataset", "imagenet", "--out", tmp_path / "o"), "unknown dataset 'imagenet'")


def test_class_count_of_datasets_without_class_names():
    import numpy as np

    from zoo_adapt.data.folders import _num_labels

    class SVHNLike:  # torchvision's SVHN keeps labels as a numpy array and has no `classes`
        labels = np.array([0, 3, 9, 1])

    assert _num_labels(SVHNLike()) == 10


def test_predict_reports_each_bad_file_in_one_line_and_predicts_the_others(tmp_path, model_file, demo):
    good = next((demo / "val" / "moon").glob("*.png"))
    bomb = tmp_path / "bomb.png"
    bomb_png(bomb, 20_000)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff garbage")
    result = zoo("predict", "--model", model_file, tmp_path / "missing.jpg", good, "/dev/null", bomb, corrupt)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.splitlines() == [f"{good}: " + result.stdout.split(": ", 1)[1].strip()]
    errors = result.stderr.splitlines()
    assert errors == [
        f"Error: cannot read image {tmp_path / 'missing.jpg'}: no such file",
        "Error: cannot read image /dev/null: not a regular file",
        errors[2],
        errors[3],
    ]
    assert "bomb.png" in errors[2] and "decompression bomb" in errors[2] and "corrupt.jpg" in errors[3]


def test_top_k_and_batch_size_must_be_positive(model_file, demo):
    good = next((demo / "val" / "moon").glob("*.png"))
    one_line_error(zoo("predict", "--model", model_file, "--top-k", "0", good), "--top-k", "x>=1", code=2)
    one_line_error(zoo("predict", "--model", model_file, "--top-k", "-2", good), "--top-k", code=2)
    one_line_error(zoo("evaluate", "--model", model_file, "--data", demo, "--batch-size", "0"), "--batch-size", code=2)


def test_crafted_model_header_is_one_line_in_evaluate(tmp_path, model_file, demo):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(model_file), "pt") as f:
        meta = f.metadata()
    tensors = load_file(model_file)
    save_file(tensors, tmp_path / "classes.safetensors", metadata={**meta, "classes": "5"})
    save_file(tensors, tmp_path / "size.safetensors", metadata={**meta, "input_size": "[3]"})
    one_line_error(
        zoo("evaluate", "--model", tmp_path / "classes.safetensors", "--data", demo),
        "classes.safetensors",
        "'classes' must be a JSON list",
    )
    one_line_error(
        zoo("predict", "--model", tmp_path / "size.safetensors", demo / "val"),
        "size.safetensors",
        "'input_size' must be [3, N, N]",
    )


def test_truncated_jpeg_in_val_stops_the_run_before_training(tmp_path, demo):
    copy = shutil.copytree(demo, tmp_path / "data")
    victim = next((copy / "val" / "grass").glob("*.png"))
    from PIL import Image

    buf = tmp_path / "full.jpg"
    Image.open(victim).convert("RGB").resize((256, 256)).save(buf, quality=90)
    victim.unlink()
    (copy / "val" / "grass" / "cut.jpg").write_bytes(buf.read_bytes()[:-2000])
    result = finetune("--data", copy, "--out", tmp_path / "o", "--data-on-device", "off")
    one_line_error(result, "cannot read image", "cut.jpg")
    assert result.stdout == ""  # found while scanning the data, not in validation after a trained epoch


def test_a_split_that_holds_out_nothing_is_refused(tmp_path, demo):
    """Every class with one image: --val-split cannot hold any out, which once crashed
    inside the loop; --val-split 0 trains without validation on purpose."""
    one = tmp_path / "one"
    for cls in ("brick", "grass"):
        (one / cls).mkdir(parents=True)
        shutil.copy(next((demo / "train" / cls).iterdir()), one / cls)
    one_line_error(
        zoo(
            "finetune",
            "--backbone",
            "resnet18",
            "--no-pretrained",
            "--data",
            one,
            "--out",
            tmp_path / "o",
            "--image-size",
            "32",
        ),
        "holds out no image",
        "--val-split 0",
    )
    assert not (tmp_path / "o").exists()
