"""fp16 with loss scaling, tested on the CPU (torch has CPU fp16 autocast and a CPU
GradScaler): the loop scales the loss before backward and steps through the scaler,
counts the steps it skips without waiting for the device, stops a run that diverged,
resumes with the scaler's exact state, accumulates gradients under it; DANN's gradient
reversal and MCC stay finite under fp16 autocast. The CLI refuses fp16 on a CPU (its
loss scaling is for GPUs without bf16): the job is run under fp16 here by lifting that
one check, as a GPU without bf16 would run it."""

from __future__ import annotations

import copy
import io
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo_adapt
from zoo_adapt import Callback, Loop
from zoo_adapt.adapt.method import grad_reverse, make_method
from zoo_adapt.engine import device as device_module
from zoo_adapt.engine.callbacks import MixedPrecision
from zoo_adapt.engine.device import autocast_dtype
from zoo_adapt.engine.loop import MAX_SKIPPED_IN_A_ROW
from zoo_adapt.engine.runtime import Runtime
from zoo_adapt.engine.tasks import SingleLabel
from zoo_adapt.job import finetune as finetune_module
from zoo_adapt.job.config import FinetuneConfig
from zoo_adapt.job.finetune import finetune
from zoo_adapt.model.optim import make_optimizer, param_groups
from zoo_adapt.model.recipes import stage_schedule

from helpers import TINY, FixedBatches, forbid_device_reads_in_steps, one_line_error, small, zoo

CPU = torch.device("cpu")
# a skipped first step leaves the schedule stepping before the optimizer did: torch warns
pytestmark = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler\.step\(\)` before:UserWarning")


def batches(steps: int, size: int = 16, batch: int = 4, seed: int = 0) -> FixedBatches:
    g = torch.Generator().manual_seed(seed)
    return FixedBatches(
        [
            (torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 5, (batch,), generator=g))
            for _ in range(steps)
        ]
    )


RESNET18 = zoo_adapt.create_model("resnet18", num_classes=5, pretrained=False).zoo_adapt


def model() -> nn.Module:
    """A network of a few thousand weights named as resnet18's layer groups, described as
    resnet18 (the loop needs only its groups): a step takes milliseconds, even in fp16,
    which a CPU runs slowly."""
    torch.manual_seed(0)

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    layers = dict(conv1=nn.Conv2d(3, 8, 3, padding=1), bn1=nn.BatchNorm2d(8), relu=nn.ReLU())
    layers.update(layer1=block(8, 8), layer2=block(8, 16), layer3=block(16, 16), layer4=block(16, 16))
    layers.update(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 5))
    net = nn.Sequential(OrderedDict(layers))
    net.zoo_adapt = RESNET18
    return net


def loop(net, train, *, epochs=1, scaler=None, callbacks=(), accumulate=1, fused=False, check_every=50) -> Loop:
    """A loop fine-tuning all of `net` on `train` (fp32 unless a callback sets fp16)."""
    plan = [0] * epochs
    optimizer = make_optimizer(param_groups(net, 1e-3, weight_decay=0.01), fused=fused)
    return Loop(
        net,
        train=train,
        val=None,
        classes=[str(i) for i in range(5)],
        plan=plan,
        optimizer=optimizer,
        schedule=stage_schedule(plan, -(-len(train) // accumulate), "constant", 0.0),
        task=SingleLabel(),
        runtime=Runtime(CPU, scaler=scaler),
        callbacks=callbacks,
        accumulate=accumulate,
        check_every=check_every,
    )


class Poison(Callback):
    """Makes the loss of the given micro-batches (counted over the run) infinite, as an
    overflow would; records the fc weights after every step."""

    def __init__(self, steps=()):
        self.steps, self.count, self.weights = set(steps), 0, []

    def after_loss(self, loop, step):
        if self.count in self.steps:
            step.loss = step.loss * float("inf")

    def step_end(self, loop, step):
        self.count += 1
        self.weights.append(loop.model.fc.weight.detach().clone())


class Grads(Callback):
    """The fc weight's gradient after each backward pass."""

    def __init__(self):
        self.grads = []

    def after_backward(self, loop, step):
        self.grads.append(loop.model.fc.weight.grad.detach().clone())


def scaler(init_scale=2.0**10):
    return torch.amp.GradScaler("cpu", init_scale=init_scale)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_loss_is_scaled_before_backward_and_the_update_is_the_unscaled_one(accumulate):
    """In fp32 a power-of-two scale is exact: gradients are the plain run's times the
    scale, and after unscaling every update is the plain run's."""
    plain_net, scaled_net = model(), model()
    plain_grads, scaled_grads = Grads(), Grads()
    loop(plain_net, batches(4), epochs=2, callbacks=[plain_grads], accumulate=accumulate).fit()
    scaled = loop(scaled_net, batches(4), epochs=2, scaler=scaler(), callbacks=[scaled_grads], accumulate=accumulate)
    scaled.fit()
    assert len(scaled_grads.grads) == 8
    for plain, times in zip(plain_grads.grads, scaled_grads.grads):
        assert torch.allclose(times, plain * 2**10, rtol=1e-5, atol=1e-7)
    for name, value in plain_net.state_dict().items():
        assert torch.allclose(scaled_net.state_dict()[name].float(), value.float(), atol=1e-6), name
    assert scaled.skipped_steps == 0 and scaled.history[-1].extra["skipped_steps"] == 0


@pytest.mark.parametrize("fused", [False, True])
def test_overflowing_steps_are_skipped_counted_and_leave_the_weights(fused):
    poison = Poison(steps={1, 3})
    run = loop(model(), batches(5), epochs=2, scaler=scaler(), callbacks=[poison], fused=fused)
    run.fit()
    w = poison.weights
    assert torch.equal(w[1], w[0]) and torch.equal(w[3], w[2])  # skipped: nothing moved
    assert not torch.equal(w[2], w[1]) and not torch.equal(w[4], w[3])  # the others stepped
    assert run.skipped_steps == 2 and run.runtime.scaler.get_scale() == 2.0**8  # halved twice
    assert [r.extra["skipped_steps"] for r in run.history] == [2, 2]  # the run's count so far, per epoch


def test_with_accumulation_an_overflow_skips_its_whole_update_once():
    poison = Poison(steps={2})  # the first micro-batch of the second group of two
    run = loop(model(), batches(6), scaler=scaler(), callbacks=[poison], accumulate=2)
    run.fit()
    w = poison.weights
    assert torch.equal(w[3], w[1]) and not torch.equal(w[1], w[0]) and not torch.equal(w[5], w[3])
    assert run.skipped_steps == 1 and run.scheduler.last_epoch == 3


@pytest.mark.parametrize("in_a_row", [MAX_SKIPPED_IN_A_ROW - 1, MAX_SKIPPED_IN_A_ROW])
def test_a_diverging_fp16_run_stops_with_one_message(in_a_row):
    """Early overflows are the scaler's business; a scaler that skips step after step
    has a run that diverged, and the run stops instead of training nothing."""
    steps = MAX_SKIPPED_IN_A_ROW + 4
    run = loop(
        model(), batches(steps, size=8, batch=2), scaler=scaler(), callbacks=[Poison(range(in_a_row))], check_every=10
    )
    if in_a_row < MAX_SKIPPED_IN_A_ROW:
        run.fit()
        assert run.skipped_steps == in_a_row
        return
    with pytest.raises(zoo_adapt.ZooAdaptError) as e:
        run.fit()
    message = str(e.value)
    assert "\n" not in message and "non-finite" in message and "--lr" in message
    assert f"skipped at least {MAX_SKIPPED_IN_A_ROW} optimizer steps in a row" in message


def test_fp16_steps_never_wait_for_the_device(monkeypatch):
    """Through the scaler with a fused optimizer, a step reads nothing back from the
    device (`get_scale()` would, every step)."""
    forbid_device_reads_in_steps(monkeypatch)
    run = loop(model(), batches(3), callbacks=[MixedPrecision(torch.float16), Poison({1})], fused=True)
    run.fit()
    assert run.runtime.scaler is not None and run.skipped_steps >= 1


def test_fp16_resume_restores_the_scaler_exactly():
    """Two epochs in one go, and one epoch, a checkpoint (saved and loaded weights-only,
    as checkpoint.pt is) and one more: the same weights, scaler and count of skips."""
    poison_steps = {1, 5}
    straight = loop(model(), batches(4), epochs=2, callbacks=[MixedPrecision(torch.float16), Poison(poison_steps)])
    straight.fit()
    assert straight.runtime.autocast_dtype == torch.float16 and straight.runtime.precision == "fp16"

    first = loop(model(), batches(4), epochs=2, callbacks=[MixedPrecision(torch.float16), Poison(poison_steps)])
    first._epoch()  # one epoch, then the state a checkpoint holds
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["scaler"]["scale"] == first.runtime.scaler.get_scale() < 2.0**16

    poison = Poison(poison_steps)
    poison.count = 4  # the second epoch's steps, as the run counted them
    resumed = loop(model(), batches(4), epochs=2, callbacks=[MixedPrecision(torch.float16), poison])
    resumed.load_state_dict(copy.deepcopy(state))
    resumed.fit()
    assert resumed.runtime.scaler.state_dict() == straight.runtime.scaler.state_dict()
    assert resumed.skipped_steps == straight.skipped_steps >= 2
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in straight.history]


def test_gradient_reversal_under_fp16_autocast_reverses_exactly():
    dann = make_method(
        "dann", 16, 3, FinetuneConfig(target_data="t", adapt_options={"width": 8, "depth": 1, "dropout": 0.0})
    )
    features = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.float16):
        reversed_in = features.clone().requires_grad_()
        loss, figures = dann.loss(reversed_in[:4], reversed_in[4:], None, None, progress=0.5)
        plain_in = features.clone().requires_grad_()
        logits = dann.domain_classifier(plain_in).squeeze(-1).float()
        domains = torch.cat([torch.ones(4), torch.zeros(4)])
        plain = F.binary_cross_entropy_with_logits(logits, domains)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.allclose(loss, plain)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in figures.values())
    growth = scaler(2.0**12)
    growth.scale(loss).backward()
    growth.scale(plain).backward()
    lambda_ = dann.coefficient(0.5)
    assert 0 < lambda_ < 1 and torch.isfinite(reversed_in.grad).all() and reversed_in.grad.abs().sum() > 0
    assert torch.allclose(reversed_in.grad, -lambda_ * plain_in.grad, rtol=1e-3, atol=1e-6)
    # the reversal itself, on an fp16 tensor
    x = torch.randn(5, 4, dtype=torch.float16, requires_grad=True)
    incoming = torch.randn(5, 4, dtype=torch.float16)
    grad_reverse(x, 0.25).backward(incoming)
    assert x.grad.dtype == torch.float16 and torch.equal(x.grad, -0.25 * incoming)


def test_mcc_under_fp16_autocast_is_finite_even_for_logits_fp16_softmax_would_overflow():
    mcc = make_method("mcc", 8, 4, FinetuneConfig(target_data="t"))
    head = torch.nn.Linear(8, 4)
    with torch.no_grad():
        head.weight.mul_(3000.0)  # logits in the thousands: exp() of them overflows fp16
    with torch.autocast("cpu", dtype=torch.float16):
        logits = head(torch.randn(6, 8))
        assert logits.dtype == torch.float16 and logits.abs().max() > 1000
        loss, figures = mcc.loss(None, None, None, logits, progress=0.0)
    assert torch.isfinite(loss) and 0 <= float(figures["mcc_loss"]) <= 1
    scaler(2.0**8).scale(loss).backward()
    assert torch.isfinite(head.weight.grad).all()


def test_a_dann_run_trains_under_fp16_with_the_scaler(tmp_path, digits, monkeypatch):
    """The whole job under fp16 (the CPU check lifted, as on a GPU without bf16): the
    scaler is made, its skips reported, the adaptation losses stay finite."""
    monkeypatch.setattr(
        finetune_module,
        "autocast_dtype",
        lambda precision, device: torch.float16 if precision == "fp16" else autocast_dtype(precision, device),
    )
    config = small(
        tmp_path,
        digits / "source",
        target_data=str(digits / "target" / "train"),
        precision="fp16",
        image_size=8,  # CPU fp16 convolutions are slow: the smallest images resnet18 takes
        epochs=1,
        steps_per_epoch=2,
        hflip=False,
    )
    result = finetune(config, log=None)
    assert result.metrics["precision"] == "fp16" and result.metrics["skipped_steps"] >= 0
    assert result.history[-1]["skipped_steps"] == result.metrics["skipped_steps"]
    record = result.history[-1]
    assert 0 <= record["domain_loss"] < float("inf") and 0 < record["train_loss"] < float("inf")


def test_auto_precision_is_bf16_where_supported_fp16_on_older_gpus_and_fp32_on_cpu(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(device_module.torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(device_module.torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("auto", cuda) == torch.float16  # T4, V100: fp16 with loss scaling
    assert autocast_dtype("auto", CPU) is None and autocast_dtype("fp16", cuda) == torch.float16
    assert autocast_dtype("bf16", CPU) == torch.bfloat16 and autocast_dtype("fp32", cuda) is None


def test_fp16_on_a_cpu_is_refused_with_one_line_before_anything_is_written(tmp_path, demo):
    out = tmp_path / "run"
    result = zoo("finetune", "--data", demo, "--out", out, *TINY, "--device", "cpu", "--precision", "fp16")
    one_line_error(result, "--precision fp16 needs a CUDA device", "bf16 or fp32")
    assert not out.exists()
