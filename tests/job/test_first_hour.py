"""What a new user meets in the first hour, made true: the kept epoch said and marked,
config.toml with every resolved value and a rerun line that works, plain timm and
torchvision loading that matches `zoo-adapt predict`, warnings for silent defaults, and
progress where nothing showed before."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import zoo_adapt
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.job.run_notes import selection

from helpers import ROOT, small

README = ROOT / "README.md"


@pytest.fixture(scope="module")
def lite0_run(demo, module_tmp):
    """A real pretrained model, quickly: a cached linear probe of EfficientNet-Lite0."""
    out = module_tmp / "lite0" / "run"
    finetune(
        FinetuneConfig(
            data=str(demo),
            out=str(out),
            strategy="linear-probe",
            epochs=3,
            image_size=96,
            workers=0,
            lr=1e-2,
            analysis="off",
        ),
        log=None,
    )
    return out


def test_the_kept_epoch_is_said_returned_and_plotted(tmp_path, demo):
    lines = []
    result = finetune(
        small(tmp_path, demo, out=str(tmp_path / "r"), epochs=3, batch_size=32),
        log=lines.append,
    )
    assert result.kept_epoch == result.metrics["kept_epoch"] and result.metrics["selection"]["rule"] == "best"
    assert re.search(r"kept epoch \d of 3 \(the best by val accuracy; epochs within 2 validation images", lines[-1])
    assert (tmp_path / "r" / "curves.png").stat().st_size > 10_000


def test_a_lead_within_noise_is_said():
    """The kept epoch against the last, paired on the same images: one image of 42 is noise."""
    history = [SimpleNamespace(get=lambda key, v=v: v) for v in (0.52, 0.50)]
    loop = SimpleNamespace(history=history, best=(0.524, 1), select="val_accuracy")
    config = FinetuneConfig(keep="best")
    last = [True] * 21 + [False] * 21
    kept = [True] * 22 + [False] * 20  # one more image right
    rule = selection(loop, config, {"kept_epoch": 1, "num_val": 42}, kept, last)
    assert "the kept epoch 1 against the last epoch 2: +2.4 points [" in rule["note"]
    assert "on the same 42 validation images" in rule["note"] and "within noise" in rule["note"]
    assert rule["kept_vs_last"]["within_noise"] and rule["kept_vs_last"]["only_b_right"] == 1
    many_last = [True] * 200 + [False] * 220
    many_kept = [True] * 378 + [False] * 42  # 178 more images right of 420
    loud = selection(
        SimpleNamespace(history=history, best=(0.90, 1), select="val_accuracy"),
        config,
        {"kept_epoch": 1, "num_val": 420},
        many_kept,
        many_last,
    )
    assert "beyond noise: a gain" in loud["note"] and not loud["kept_vs_last"]["within_noise"]


def test_config_toml_holds_every_resolved_value_and_the_rerun_line_works(tmp_path, demo, run_cli):
    out = tmp_path / "run"
    result = run_cli(
        "finetune",
        "--backbone",
        "resnet18",
        "--no-pretrained",
        "--data",
        demo,
        "--out",
        out,
        "--epochs",
        1,
        "--workers",
        0,
    )
    assert result.exit_code == 0, result.output
    text = (out / "config.toml").read_text()
    for key in ("lr = 0.002", "lr_body = 2e-05", "image_size = 224", "epochs = 1", 'strategy = "two-stage"'):
        assert key in text, key
    keys = {line.split(" = ")[0] for line in text.splitlines() if " = " in line and not line.startswith("#")}
    assert not {"target_data", "adapt"} & keys  # adaptation options only when adapting
    rerun_line = next(line for line in text.splitlines() if "rerun with" in line)
    command = re.search(r"`zoo-adapt (finetune --config \S+ --out) NEW_FOLDER`", rerun_line).group(1).split()
    again = run_cli(*command, tmp_path / "again")
    assert again.exit_code == 0, again.output
    first = json.loads((out / "metrics.json").read_text())
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert first["val_accuracy"] == second["val_accuracy"]
    into_itself = run_cli("finetune", "--config", out / "config.toml")
    assert into_itself.exit_code == 1 and "--resume" in into_itself.output and "--overwrite" in into_itself.output


def _readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return next(b for b in blocks if marker in b)


def unusual_pngs(source, folder) -> list:
    """A 16-bit grey PNG (spread over the whole 16-bit range, as scanners write them) and
    an RGBA PNG half transparent, from one of the demo's photographs."""
    rgb = np.asarray(Image.open(source).convert("RGB"))
    grey = np.asarray(Image.open(source).convert("L")).astype(np.uint16) * 257 + np.arange(
        rgb.shape[1], dtype=np.uint16
    )
    Image.fromarray(grey).save(folder / "sixteen.png")
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, : rgb.shape[1] // 2] = np.linspace(0, 255, rgb.shape[0], dtype=np.uint8)[:, None]
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "clear.png")
    assert Image.open(folder / "sixteen.png").mode == "I;16"
    return [folder / "sixteen.png", folder / "clear.png"]


def test_plain_timm_torchvision_and_load_plain_predict_what_zoo_adapt_predicts(lite0_run, demo, tmp_path):
    from zoo_adapt.ship.inference import predict_paths

    path = lite0_run / "model.safetensors"
    images = sorted((demo / "val").rglob("*.png"))[:12]
    photo = tmp_path / "rotated.jpg"  # a JPEG with an EXIF orientation tag: read upright everywhere
    exif = Image.Image().getexif()
    exif[0x0112] = 6
    Image.open(images[0]).convert("RGB").save(photo, exif=exif)
    images += [photo] + unusual_pngs(images[1], tmp_path)
    expected = {r.path: dict(r.top) for r in predict_paths(path, images, top_k=6, device="cpu")}
    model, preprocess = zoo_adapt.load_plain(path)
    snippet = _readme_block("# plain timm: the export").replace('"runs/demo/model.safetensors"', repr(str(path)))
    scope: dict = {}
    exec(snippet, scope)  # the README's own lines, as a user copies them
    for image in images:
        with torch.no_grad():
            ours = model(preprocess(Image.open(image))[None]).softmax(-1)[0]
            theirs = scope["predict"](str(image))
        classes = json.loads(scope["meta"]["classes"])
        want = torch.tensor([expected[str(image)][c] for c in classes])
        assert torch.allclose(ours, want, atol=1e-4), image
        assert torch.allclose(theirs, want, atol=1e-4), image


def test_plain_torchvision_snippet(tmp_path, demo):
    out = tmp_path / "tv"
    finetune(
        FinetuneConfig(
            backbone="resnet18",
            pretrained=False,
            image_size=48,
            analysis="off",
            data=str(demo),
            out=str(out),
            epochs=1,
            workers=0,
            tta=False,
        ),
        log=None,
    )
    from zoo_adapt.ship.inference import predict_paths

    images = sorted((demo / "val").rglob("*.png"))[:6]
    images += unusual_pngs(images[0], tmp_path)
    expected = {r.path: dict(r.top) for r in predict_paths(out / "model.safetensors", images, top_k=6, device="cpu")}
    scope: dict = {}
    exec(
        _readme_block("# plain torchvision: the export").replace(
            '"runs/mine/model.safetensors"', repr(str(out / "model.safetensors"))
        ),
        scope,
    )
    classes = json.loads(scope["meta"]["classes"])
    for image in images:
        want = torch.tensor([expected[str(image)][c] for c in classes])
        assert torch.allclose(scope["predict"](str(image)), want, atol=1e-4)


def test_silent_defaults_now_say_so(tmp_path, demo):
    lines = []
    finetune(
        small(tmp_path, demo, out=str(tmp_path / "r"), epochs=1, batch_size=32),
        log=lines.append,
    )
    assert any(line.startswith("warning: two-stage with --epochs 1") for line in lines)
    more = []
    finetune(
        small(tmp_path, demo, out=str(tmp_path / "r"), epochs=2, resume=True, batch_size=32),
        log=more.append,
    )
    assert any("extends a run planned for 1" in line and "rate rises again" in line for line in more)


def test_progress_lines_when_not_in_a_terminal(capsys):
    import io

    from zoo_adapt.progress import Ticker

    stream = io.StringIO()
    ticker = Ticker(10, "validating", every=0.0, stream=stream)
    for _ in range(10):
        ticker.update(8)
    ticker.close()
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("  validating: ") and "img/s" in line and "left" in line for line in lines)


def test_evaluate_says_which_folder_and_info_says_which_weights(lite0_run, demo, run_cli):
    result = run_cli("evaluate", "--model", lite0_run / "model.safetensors", "--data", demo)
    assert result.exit_code == 0 and f"images in {demo / 'val'}" in result.output
    info = run_cli("info", "timm/resnet10t")
    assert "weights None" not in info.output and "weights the library default" in info.output


def test_readme_has_a_cpu_only_install_line():
    assert "--index-url https://download.pytorch.org/whl/cpu" in README.read_text()
