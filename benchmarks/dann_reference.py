"""A minimal DANN loop written from Ganin et al. (JMLR 2016) alone: the yardstick that
`zoo-adapt finetune --target-data` is measured against (benchmarks/domain_adaptation.py,
tests/test_adaptation.py). It shares nothing with zoo-adapt's engine; only the model
comes from `zoo_adapt.create_model`, so both start from the same pretrained weights.

The recipe, literally: the whole body at one rate, the new linear head and the domain
discriminator at another; AdamW (weight decay 0.01 on every parameter); both rates
annealed as lr0 / (1 + 10 p) ** 0.75, p the fraction of steps done; no augmentation
(whole images resized to the input size, in training and evaluation); a discriminator
Linear(F, 256)-ReLU-Dropout(0.5)-Linear(256, 256)-ReLU-Linear(256, 1) on the pooled
features, behind a gradient-reversal layer with lambda = 2 / (1 + exp(-10 p)) - 1; BCE
with logits; a source batch and a target batch of the same size forwarded together (one
batch, BatchNorm in train mode); a fixed number of passes over the source set; the last
model kept; no target label read. `--target-bn` adds Li et al.'s AdaBN after training
(BatchNorm statistics of the target images), written here on its own too.

    python benchmarks/dann_reference.py TASK_FOLDER --seeds 0 1 2 [--method dann|mcc|none] [--target-bn]

TASK_FOLDER is what zoo_adapt.data.demo.build_photo_shift / build_digit_shift write.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class Recipe:
    epochs: int = 8
    batch_size: int = 32
    lr_body: float = 1e-3
    lr_head: float = 3e-3  # the head and the discriminator
    weight_decay: float = 0.01
    hidden: int = 256
    dropout: float = 0.5
    gamma: float = 10.0
    image_size: int = 64
    mcc: float = 1.0  # the weight of MCC when the method is "mcc" (Transfer-Learning-Library's trade-off)
    target_bn: bool = False  # after training, BatchNorm statistics of the target images (AdaBN, Li et al. 2016)


def load_folder(root: Path, size: int, classes: list[str] | None = None):
    """An ImageFolder as (uint8 N x 3 x size x size, labels, classes): each image whole,
    in RGB, resized to size x size (bicubic, antialiased)."""
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for k, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in EXTENSIONS:
                image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
                images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
                labels.append(k)
    return torch.stack(images), torch.tensor(labels), classes


class ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lambda_ * grad, None


def discriminator(features: int, hidden: int = 256, dropout: float = 0.5) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    )


class Split(nn.Module):
    """The model as body (everything up to the pooled features) and head (the linear
    classifier): the head's attribute is swapped for an identity in the body."""

    def __init__(self, model: nn.Module, head_attr: str):
        super().__init__()
        parent, _, name = head_attr.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        self.head = getattr(owner, name)
        setattr(owner, name, nn.Identity())
        self.body = model

    def forward(self, x):
        features = self.body(x)
        return features, self.head(features)


def optimizer_for(net: Split, disc: nn.Module | None, recipe: Recipe):
    head = list(net.head.parameters())
    body = [p for p in net.body.parameters() if all(p is not q for q in head)]
    groups = [{"params": body, "lr": recipe.lr_body}, {"params": head, "lr": recipe.lr_head}]
    if disc is not None:
        groups.append({"params": list(disc.parameters()), "lr": recipe.lr_head})
    opt = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    return opt, [g["lr"] for g in groups]


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """Minimum class confusion (Jin et al. 2020), as Transfer-Learning-Library computes it."""
    probs = F.softmax(logits / temperature, dim=1)
    weights = 1 + torch.exp(-(-(probs * torch.log(probs + 1e-5)).sum(1)).detach())
    weights = (len(probs) * weights / weights.sum()).unsqueeze(1)
    confusion = (probs * weights).t() @ probs
    confusion = confusion / confusion.sum(1)
    return (confusion.sum() - confusion.trace()) / probs.shape[1]


def dann_step(
    net: Split, disc: nn.Module | None, opt, base_lrs, xs, ys, xt, p: float, gamma: float = 10.0, mcc: float = 0.0
) -> dict:
    """One step at progress p (the fraction of steps done): rates annealed, then source
    and target forwarded together, cross-entropy on the source plus the discriminator's
    BCE behind the reversal layer. `disc` None (or `xt` None): source only. `mcc` > 0:
    that weight of MCC on the target logits instead of (or besides) the discriminator."""
    for group, lr0 in zip(opt.param_groups, base_lrs):
        group["lr"] = lr0 / (1 + 10 * p) ** 0.75
    n = len(xs)
    x = xs if xt is None else torch.cat([xs, xt])
    features, logits = net(x)
    loss = F.cross_entropy(logits[:n], ys)
    out = {"class_loss": loss.item()}
    if disc is not None and xt is not None:
        lambda_ = 2 / (1 + math.exp(-gamma * p)) - 1
        d = disc(ReverseGradient.apply(features, lambda_)).squeeze(1)
        domain = torch.cat([torch.ones(n), torch.zeros(len(xt))])
        domain_loss = F.binary_cross_entropy_with_logits(d, domain)
        loss = loss + domain_loss
        out.update(domain_loss=domain_loss.item(), domain_accuracy=((d > 0).float() == domain).float().mean().item())
    if mcc and xt is not None:
        confusion = mcc_loss(logits[n:])
        loss = loss + mcc * confusion
        out.update(mcc_loss=confusion.item())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return out


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(std).view(1, 3, 1, 1) * 255
    return (x.float() - mean) / std


@torch.no_grad()
def adabn(net: nn.Module, x: torch.Tensor, norm, batch: int = 64) -> None:
    """Li et al.'s AdaBN: each BatchNorm layer's running mean and variance become their
    average over the target images' batches; nothing else in train mode, no weight moves."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]  # batches that sample every class
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, len(x), batch):
        net(normalize(x[i : i + batch], *norm))
    for m in norms:
        m.momentum = 0.1
    net.eval()


@torch.no_grad()
def accuracy(net: Split, x: torch.Tensor, y: torch.Tensor, norm, batch: int = 128) -> float:
    net.eval()
    hits = sum(
        (net(normalize(x[i : i + batch], *norm))[1].argmax(1) == y[i : i + batch]).sum().item()
        for i in range(0, len(x), batch)
    )
    return hits / len(x)


def train(
    task: Path,
    seed: int,
    adapt: str | None = "dann",
    recipe: Recipe = Recipe(),
    backbone: str = "efficientnet_lite0",
    log=print,
) -> float:
    """Train on task/source/train (+ the unlabelled task/target/train); the last model's
    accuracy on task/target/test."""
    from zoo_adapt import create_model

    torch.manual_seed(seed)
    xs, ys, classes = load_folder(task / "source" / "train", recipe.image_size)
    xt, _, _ = load_folder(task / "target" / "train", recipe.image_size)  # labels dropped
    model = create_model(backbone, num_classes=len(classes), pretrained=True)
    n = model.zoo_adapt.normalization
    norm = (n.mean, n.std)
    net = Split(model, model.zoo_adapt.head.attr)
    disc = discriminator(net.head.in_features, recipe.hidden, recipe.dropout) if adapt == "dann" else None
    opt, base_lrs = optimizer_for(net, disc, recipe)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(xs) / recipe.batch_size)
    total, step = recipe.epochs * steps_per_epoch, 0
    target_stream = torch.empty(0, dtype=torch.long)
    for epoch in range(recipe.epochs):
        net.train()
        if disc is not None:
            disc.train()
        order = torch.randperm(len(xs), generator=g)
        figures = []
        for i in range(steps_per_epoch):
            batch = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            xt_batch = None
            if adapt:
                if len(target_stream) < len(batch):
                    target_stream = torch.cat([target_stream, torch.randperm(len(xt), generator=g)])
                picked, target_stream = target_stream[: len(batch)], target_stream[len(batch) :]
                xt_batch = normalize(xt[picked], *norm)
            figures.append(
                dann_step(
                    net,
                    disc,
                    opt,
                    base_lrs,
                    normalize(xs[batch], *norm),
                    ys[batch],
                    xt_batch,
                    step / total,
                    recipe.gamma,
                    recipe.mcc if adapt == "mcc" else 0.0,
                )
            )
            step += 1
        means = {k: statistics.mean(f[k] for f in figures) for k in figures[0]}
        log(f"  epoch {epoch + 1}: " + " ".join(f"{k} {v:.3f}" for k, v in means.items()))
    if recipe.target_bn:
        adabn(net, xt, norm)
    x_test, y_test, _ = load_folder(task / "target" / "test", recipe.image_size, classes)
    return accuracy(net, x_test, y_test, norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--method", choices=("dann", "mcc", "none"), default="dann", help="none: source only")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr-body", type=float, default=1e-3)
    parser.add_argument("--lr-head", type=float, default=3e-3)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--target-bn", action="store_true", help="then BatchNorm statistics of the target images")
    args = parser.parse_args()
    recipe = Recipe(epochs=args.epochs, lr_body=args.lr_body, lr_head=args.lr_head, target_bn=args.target_bn)
    accs = []
    for seed in args.seeds:
        acc = train(
            args.task, seed, adapt=None if args.method == "none" else args.method, recipe=recipe, backbone=args.backbone
        )
        accs.append(100 * acc)
        print(f"seed {seed}: target accuracy {acc:.1%}", flush=True)
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"mean {statistics.mean(accs):.1f} ± {spread:.1f} (" + " / ".join(f"{a:.1f}" for a in accs) + ")")


if __name__ == "__main__":
    main()
