"""Model, weights and checkpoint files: nothing but tensors is ever loaded, every header
field is checked before use, and a bad file is one line in zoo-adapt's own words."""

from __future__ import annotations

import os
import pickle
import re

import click
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import zoo_adapt
from zoo_adapt import ZooAdaptError
from zoo_adapt.model.weights import read_checkpoint, read_state_dict
from zoo_adapt.ship.export import export_model, read_card


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = zoo_adapt.create_model("resnet18", num_classes=3, pretrained=False)
    return export_model(
        model, tmp_path_factory.mktemp("m") / "model.safetensors", ["a", "b", "c"], model.zoo_adapt.normalization.at(32)
    )


def with_header(exported, tmp_path, **changes):
    """A copy of the export with header fields changed (None removes one)."""
    from safetensors import safe_open

    with safe_open(str(exported), "pt") as f:
        meta = dict(f.metadata())
    meta.update({k: v for k, v in changes.items() if v is not None})
    for k in [k for k, v in changes.items() if v is None]:
        del meta[k]
    path = tmp_path / "crafted.safetensors"
    save_file(load_file(exported), path, metadata=meta)
    return path


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("classes", "5", "header field 'classes' must be a JSON list of distinct class names, not '5'"),
        ("classes", '["a", 3, "c"]', "'classes' must be"),
        ("classes", '["a", "a", "c"]', "'classes' must be"),
        ("classes", '["a", "b"]', "its header lists 2 classes but its head (fc) has 3 outputs"),
        ("num_classes", "4", "'num_classes' must be 3"),
        ("input_size", "[3]", "'input_size' must be [3, N, N] or [1, N, N] with N from 1 to 4096, not '[3]'"),
        ("input_size", "[3, 0, 0]", "'input_size' must be"),
        ("input_size", "[3, 32, 16]", "'input_size' must be"),
        ("input_size", '"224"', "'input_size' must be"),
        ("mean", "[0.5]", "'mean' must be a JSON list of three numbers"),
        ("std", "[0.2, 0, 0.2]", "'std' must be a JSON list of three positive numbers"),
        ("input_size", "[1, 32, 32]", "'mean' must be a JSON list of one number (input_size: one channel)"),
        ("input_size", "[2, 32, 32]", "'input_size' must be [3, N, N] or [1, N, N]"),
        ("crop_pct", "0", "'crop_pct' must be a number in (0, 1]"),
        ("crop_pct", "1.5", "'crop_pct' must be"),
        ("crop_pct", "nan", "'crop_pct' must be"),
        ("interpolation", "lanczos", "'interpolation' must be bilinear or bicubic or nearest"),
        ("hflip", "maybe", "'hflip' must be true or false"),
        ("entry", "[]", "'entry' must be a JSON object"),
        ("head", None, "its header has no 'head'"),
    ],
)
def test_crafted_header_fields_are_one_line_errors(exported, tmp_path, field, value, message):
    path = with_header(exported, tmp_path, **{field: value})
    with pytest.raises(ZooAdaptError) as e:
        read_card(path)
    assert str(e.value).startswith(f"model file {path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_good_export_reads_back_and_follows_the_umask(exported, tmp_path):
    card, _ = read_card(exported)
    assert card.classes == ["a", "b", "c"] and card.normalization.input_size == (3, 32, 32)
    # safetensors' save_file wrote a hidden 0600 temporary and renamed it: model.safetensors came out 0600
    old = os.umask(0o022)
    try:
        model = zoo_adapt.create_model("resnet18", num_classes=2, pretrained=False)
        export_model(model, tmp_path / "model.safetensors", ["x", "y"], model.zoo_adapt.normalization.at(32))
    finally:
        os.umask(old)
    assert oct((tmp_path / "model.safetensors").stat().st_mode & 0o777) == oct(0o644)
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary left behind
    assert read_card(tmp_path / "model.safetensors")[0].classes == ["x", "y"]


CHECKPOINT = {"epoch": 1, "model": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "history": [], "best": None}


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def bad_checkpoints(tmp_path) -> dict[str, str]:
    """File name -> what the error must say."""
    torch.save(CHECKPOINT, tmp_path / "good.pt")
    good = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "zero.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"epoch": Payload()}, protocol=2))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "plain.pt")
    save_file({"w": torch.ones(2)}, tmp_path / "weights.safetensors")
    return {
        "zero.pt": "the file is empty (0 bytes)",
        "truncated.pt": "ends too early",
        "random.pt": "never unpickles",
        "evil.pt": "holds Python objects (posix.system)",
        "plain.pt": "is not a zoo-adapt checkpoint (it lacks epoch, model",
        "weights.safetensors": "lacks epoch",
    }


def test_bad_checkpoints_are_one_line_errors_never_an_abort(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, message in bad_checkpoints(tmp_path).items():
        with pytest.raises(ZooAdaptError, match=re.escape(name) + ".*" + re.escape(message)):
            read_checkpoint(tmp_path / name)
    assert not (tmp_path / "PWNED").exists()  # the pickle's code never ran
    with pytest.raises(ZooAdaptError, match="not a regular file"):
        read_checkpoint("/dev/null")
    with pytest.raises(ZooAdaptError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "none.pt")
    assert read_checkpoint(tmp_path / "good.pt")["epoch"] == 1

    # torch.load raises EOFError on a 0-byte file; click turns EOFError into Abort, which
    # zoo-adapt reported as Ctrl-C ("Aborted.", exit 130)
    @click.command()
    def resume():
        try:
            read_checkpoint(tmp_path / "zero.pt")
        except ZooAdaptError as e:
            raise click.ClickException(str(e)) from None

    result = CliRunner().invoke(resume, [])
    assert result.exit_code == 1 and "Aborted" not in result.output and "0 bytes" in result.output


def test_weights_errors_never_repeat_torchs_advice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad_checkpoints(tmp_path)
    for name in ("random.pt", "evil.pt"):
        with pytest.raises(ZooAdaptError) as e:
            read_state_dict(tmp_path / name)
        text = str(e.value)
        assert text.startswith(f"cannot read weights file {tmp_path / name}: ") and "never unpickles" in text
        assert "weights_only" not in text and "trust" not in text and "\n" not in text
    assert not (tmp_path / "PWNED").exists()
    # what a file holds decides how it is read, not its name
    os.rename(tmp_path / "weights.safetensors", tmp_path / "weights.pth")
    assert torch.equal(read_state_dict(tmp_path / "weights.pth")["w"], torch.ones(2))
