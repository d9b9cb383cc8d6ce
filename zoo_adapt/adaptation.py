"""Domain adaptation: fine-tuning that also sees unlabelled images of the target domain.

Each step takes a labelled source batch and an unlabelled target batch of the same size
and runs ONE forward pass over both together. That choice is deliberate: BatchNorm
layers then normalise with statistics of the mixed batch and their running statistics
track both domains, so the exported model meets target images with statistics that
include them (tllib's DANN does the same; two passes would keep source-only statistics).

Methods (DANN, MCC, third parties') come from the `register_adaptation_methods` hook.
They see the features the head receives (captured at the head the plugin names) and the
logits; target labels are never read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import FinetuneConfig
from .data import ImageDataset, image_files, open_image, scan_folder, worker_error
from .errors import ZooAdaptError
from .methods import make_method
from .train import HeadFeatures, Trainer


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -lambda (Ganin et
    al. 2016). Whatever sits behind it learns to make what is in front of it fail."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lambda_ * grad, None


def grad_reverse(x: torch.Tensor, lambda_: float) -> torch.Tensor:
    return GradientReversal.apply(x, lambda_)


class AdaptationMethod(nn.Module):
    """Base class of adaptation methods. Submodules (a domain classifier, say) are trained
    at the head's learning rate, or at ``--adapt-option lr=...``; override `param_groups`
    for more."""

    def __init__(self, in_features: int, num_classes: int, config: FinetuneConfig):
        super().__init__()
        self.in_features, self.num_classes, self.config = in_features, num_classes, config

    def loss(self, source_features: torch.Tensor, target_features: torch.Tensor,
             source_logits: torch.Tensor, target_logits: torch.Tensor,
             progress: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss term for one step (added to the source cross-entropy) and the
        figures to log. `progress` is the fraction of all optimizer steps done."""
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        lr = float(self.config.adapt_options.get("lr", lr))
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay, "name": "adaptation",
                 "group_index": -1}] if params else []


class TargetImages(Dataset):
    """Unlabelled images at any depth below a folder. Ordered by file name (then size),
    never by folder, so folder names, which may encode labels, change nothing."""

    def __init__(self, root: str | Path, transform: Callable):
        root = Path(root)
        if not root.is_dir():
            raise ZooAdaptError(f"target folder not found: {root}")
        files = image_files(root)
        if not files:
            raise ZooAdaptError(f"target folder {root} holds no images")
        from .data import check_image

        for f in files:
            check_image(f)
        self.files = sorted(files, key=lambda p: (p.name, p.stat().st_size, str(p)))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(open_image(self.files[i]))


def _endless(loader: DataLoader):
    while True:
        yield from loader


class AdaptTrainer(Trainer):
    """The fine-tuning Trainer with a target stream and an adaptation method."""

    def __init__(self, model, train_loader, val_loader, classes, config, *, target_loader: DataLoader,
                 method: AdaptationMethod, target_val_loader: DataLoader | None = None, **kwargs):
        self.target_loader, self.method, self.target_val_loader = target_loader, method, target_val_loader
        self.features = HeadFeatures(model.get_submodule(model.zoo_adapt.head.attr))
        super().__init__(model, train_loader, val_loader, classes, config, **kwargs)

    def extra_param_groups(self) -> list[dict]:
        return self.method.param_groups(self.config.head_lr, self.config.weight_decay)

    def _steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch or max(len(self.train_loader), len(self.target_loader))

    def reseed(self, seed: int) -> None:
        super().reseed(seed)
        if self.target_loader.generator is not None:
            self.target_loader.generator.manual_seed(seed + 1)

    def _batches(self):
        source, target = _endless(self.train_loader), _endless(self.target_loader)
        try:
            for _ in range(self.steps_per_epoch):
                yield next(source), next(target)
        except ZooAdaptError as e:
            raise worker_error(e) from None

    def train_step(self, batch) -> dict[str, float]:
        (xs, ys), xt = batch
        xs, ys = self._to_device((xs, ys))
        xt, _ = self._to_device((xt, ys[:0]))
        self.method.train()
        n = len(xs)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(torch.cat([xs, xt]))
            features = self.features.value
            cls_loss = F.cross_entropy(logits[:n].float(), ys, label_smoothing=self.config.label_smoothing)
            extra, figures = self.method.loss(features[:n], features[n:], logits[:n], logits[n:],
                                              self.progress())
        self._step(cls_loss + extra)
        return {"loss": cls_loss.item(), "accuracy": (logits[:n].argmax(-1) == ys).float().mean().item(),
                "n": n, **figures}

    def epoch_figures(self) -> dict[str, float]:
        if self.target_val_loader is None:
            return {}
        from .evaluation import evaluate

        try:
            ev = evaluate(self.model, self.target_val_loader, self.classes, self.device, autocast=self.autocast)
        except ZooAdaptError as e:
            raise worker_error(e) from None
        return {"target_accuracy_oracle": ev.accuracy}

    def close(self) -> None:
        self.features.remove()

    def _track_best(self, record) -> bool:
        if not self.config.select_with_target_labels:
            return super()._track_best(record)
        score = record.extra["target_accuracy_oracle"]
        if self.best is None or score >= self.best[0]:
            self.best = (score, record.epoch)
            return True
        return False

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "method": self.method.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        super().load_checkpoint_state(state)


def pooled_features(model: nn.Module, batches, device: torch.device, limit: int) -> torch.Tensor:
    """The features the head receives, for up to `limit` images, in eval mode."""
    hook = HeadFeatures(model.get_submodule(model.zoo_adapt.head.attr))
    out, count = [], 0
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                model(x.to(device))
                out.append(hook.value.float().flatten(1).cpu())
                count += len(x)
                if count >= limit:
                    break
    except ZooAdaptError as e:
        raise worker_error(e) from None
    finally:
        hook.remove()
    return torch.cat(out)[:limit]


def proxy_a_distance(source: torch.Tensor, target: torch.Tensor, seed: int = 0, epochs: int = 200) -> float:
    """2 (1 - 2 err): `err` is the held-out error of a logistic regression telling source
    features from target features (Ben-David et al. 2007). 0: indistinguishable; 2: fully
    separable."""
    n = min(len(source), len(target))
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([source[torch.randperm(len(source), generator=g)[:n]],
                   target[torch.randperm(len(target), generator=g)[:n]]])
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    order = torch.randperm(2 * n, generator=g)
    x, y = x[order], y[order]
    half = n  # train on one half, measure on the other
    mean, std = x[:half].mean(0), x[:half].std(0) + 1e-6
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=epochs, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x[:half] @ w + b, y[:half]) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        err = ((x[half:] @ w + b > 0).float() != y[half:]).float().mean().item()
    return 2 * (1 - 2 * min(err, 0.5))


class AdaptationRun:
    """What a fine-tuning job adds when given --target-data: the target data, the method,
    the domain gap before and after, and the method's weights beside the model."""

    def __init__(self, config: FinetuneConfig, model: nn.Module, classes: list[str], train_tf, eval_tf,
                 loader_kwargs: dict, device: torch.device):
        self.config, self.model, self.device = config, model, device
        self.target = TargetImages(config.target_data, train_tf)
        self.target_eval = DataLoader(TargetImages(config.target_data, eval_tf),
                                      batch_size=config.batch_size * 2, **loader_kwargs)
        self.target_loader = DataLoader(self.target, batch_size=config.batch_size, shuffle=True,
                                        generator=torch.Generator(),
                                        drop_last=len(self.target) >= config.batch_size, **loader_kwargs)
        self.target_val_loader = None
        if config.target_val:
            samples = scan_folder(config.target_val, classes=classes)
            self.target_val_loader = DataLoader(ImageDataset(samples, eval_tf), batch_size=config.batch_size * 2,
                                                **loader_kwargs)
        elif config.select_with_target_labels:
            raise ZooAdaptError("--select-with-target-labels needs --target-val")
        head = model.zoo_adapt.head
        self.method = make_method(config.adapt, head.in_features, len(classes), config).to(device)

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"target_loader": self.target_loader, "method": self.method,
                "target_val_loader": self.target_val_loader}

    def domain_gap(self, source_eval: DataLoader) -> float:
        limit = 512
        fs = pooled_features(self.model, source_eval, self.device, limit)
        ft = pooled_features(self.model, self.target_eval, self.device, limit)
        return proxy_a_distance(fs, ft, seed=self.config.seed)

    def save_method(self, path: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.method.state_dict().items()}
        if state:
            save_file(state, str(path), metadata={"method": self.config.adapt})

    def summary(self, metrics: dict[str, Any]) -> dict[str, Any]:
        keys = ("domain_accuracy", "lambda", "target_accuracy_oracle")
        last = metrics["history"][-1] if metrics["history"] else {}
        return {"adaptation": {"method": self.config.adapt, "target_data": str(self.config.target_data),
                               "num_target": len(self.target), **{k: last[k] for k in keys if k in last}}}

