"""Gradient clipping, drop-path and gradient checkpointing: each does what it says, and
asking for one a model cannot do is one clear line."""

from __future__ import annotations

import pytest
import torch

from zoo_adapt.engine.loop import Loop
from zoo_adapt.engine.runtime import Runtime
from zoo_adapt.errors import ZooAdaptError
from zoo_adapt.model.build import create_model, grad_checkpointing
from zoo_adapt.model.optim import make_optimizer, param_groups

from helpers import FixedBatches, small


def timm_model(**kw):
    torch.manual_seed(0)
    return create_model("timm/test_resnet", pretrained=False, num_classes=3, **kw)


def one_update(clip: float | None, scaler=None) -> float:
    """The norm of one plain-SGD update (rate 1) of the whole model."""
    model = timm_model()
    batches = FixedBatches([(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))])
    optimizer = make_optimizer(param_groups(model, 1.0), "sgd", momentum=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    runtime = Runtime(torch.device("cpu"), scaler=scaler)
    Loop(
        model,
        train=batches,
        val=None,
        classes=["a", "b", "c"],
        plan=[0],
        optimizer=optimizer,
        schedule=lambda step: 1.0,
        runtime=runtime,
        clip_grad=clip,
    ).fit()
    return torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before))).item()


def test_clip_grad_bounds_the_update_norm():
    unclipped = one_update(None)
    assert unclipped > 0.5
    assert one_update(0.1) == pytest.approx(0.1, rel=1e-3)
    assert one_update(unclipped * 10) == pytest.approx(unclipped, rel=1e-5)  # below the bound: untouched


def test_clip_grad_under_loss_scaling_bounds_the_true_gradients():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    assert one_update(0.1, scaler) == pytest.approx(0.1, rel=1e-3)  # not 0.1 / 4096


def test_drop_path_reaches_timm_models_and_is_refused_for_others():
    model = timm_model(drop_path=0.2)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)
    assert not any(type(m).__name__ == "DropPath" for m in timm_model().modules())
    with pytest.raises(ZooAdaptError, match=r"^--drop-path: resnet18 \(ResNet, plugin 'resnet'\) has no drop-path"):
        create_model("resnet18", pretrained=False, drop_path=0.1)


def test_grad_checkpointing_recomputes_in_the_backward_pass_with_the_same_gradients():
    x = torch.randn(2, 3, 32, 32)

    def gradients(checkpointed: bool):
        model = timm_model().eval()
        if checkpointed:
            grad_checkpointing(model)
        calls = []
        block = model.layer1[0]
        forward = block.forward  # counted by hand: the recomputation does not run forward hooks
        block.forward = lambda *args: calls.append(1) or forward(*args)
        model(x).sum().backward()
        return [p.grad.clone() for p in model.parameters()], len(calls)

    plain, plain_calls = gradients(False)
    kept, kept_calls = gradients(True)
    assert (plain_calls, kept_calls) == (1, 2)  # layer1's block ran again in the backward pass
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, kept))
    with pytest.raises(ZooAdaptError, match="--grad-checkpointing: resnet18 .* has no set_grad_checkpointing"):
        grad_checkpointing(create_model("resnet18", pretrained=False))


def test_a_run_with_all_three(tmp_path, demo):
    from zoo_adapt import finetune

    config = small(
        tmp_path, demo, backbone="timm/test_resnet", epochs=2, clip_grad=1.0, drop_path=0.1, grad_checkpointing=True
    )
    result = finetune(config, log=None)
    assert result.metrics["history"][-1]["train_loss"] > 0
    written = (tmp_path / "run" / "config.toml").read_text()
    assert "clip_grad = 1.0" in written and "drop_path = 0.1" in written and "grad_checkpointing = true" in written
