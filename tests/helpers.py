"""Small things several test files need (pytest puts this folder on sys.path)."""
from __future__ import annotations


class FixedBatches:
    """A batch source for engine.Loop that yields the same given (images, labels)
    batches every epoch, in order."""

    def __init__(self, batches):
        self.batches, self.num_samples = batches, sum(len(y) for _, y in batches)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def set_epoch(self, epoch):
        pass


def small(tmp_path, data, **options):
    """A FinetuneConfig that runs in seconds: resnet18 from scratch at 32 px, 3 epochs;
    `options` override."""
    from zoo_adapt.config import FinetuneConfig

    base = dict(backbone="resnet18", data=str(data), out=str(tmp_path / "run"), pretrained=False,
                image_size=32, batch_size=8, epochs=3, workers=0, tta=False)
    return FinetuneConfig(**{**base, **options})
