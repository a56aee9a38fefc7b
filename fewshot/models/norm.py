"""Batch-norm that stays exact under `torch.func.vmap`, and the statistics it normalises with.

Under `vmap`, `nn.BatchNorm2d(track_running_stats=False)` gives a wrong second-order
meta-gradient (float64: ~1e-3 relative error, and a non-zero gradient for a conv bias that
feeds batch-norm, whose true value is exactly 0). `exact_batchnorm(module)` swaps every
batch-norm layer of an encoder, in place, for an `ExactBatchNorm*d` that shares its
parameters and buffers (same names, so state dicts and checkpoints do not change). The
swapped layer behaves exactly like `nn.BatchNorm*d` until the MAML engine drives it with
`normalise_with(...)`; then it normalises from basic tensor ops, which vmap batches
exactly, and never updates running statistics (in-place updates cannot run under vmap).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _ExactBatchNorm:
    """Mixin for `nn.BatchNorm*d`; `statistics` None means plain batch-norm behaviour."""

    statistics: str | None = None
    """None (plain nn.BatchNorm), "running" (stored statistics) or "batch" (computed)."""
    stat_rows: int | None = None
    """With "batch": compute the statistics from the first `stat_rows` rows only (the
    support set of a support+query batch); None uses every row."""

    def forward(self, x: Tensor) -> Tensor:
        if self.statistics is None:
            return super().forward(x)  # type: ignore[misc]
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.statistics == "running":
            mean = self.running_mean.view(shape)
            var = self.running_var.view(shape)
        else:
            dims = [0, *range(2, x.dim())]
            ref = x if self.stat_rows is None else x[: self.stat_rows]
            mean = ref.mean(dims, keepdim=True)
            var = (ref - mean).square().mean(dims, keepdim=True)  # biased, as batch-norm
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def has_stored_statistics(self) -> bool:
        """True when running statistics exist and were ever updated (a trained encoder)."""
        return (self.track_running_stats and self.running_mean is not None
                and self.num_batches_tracked is not None and int(self.num_batches_tracked) > 0)


class ExactBatchNorm1d(_ExactBatchNorm, nn.BatchNorm1d):
    pass


class ExactBatchNorm2d(_ExactBatchNorm, nn.BatchNorm2d):
    pass


class ExactBatchNorm3d(_ExactBatchNorm, nn.BatchNorm3d):
    pass


_EXACT = {nn.BatchNorm1d: ExactBatchNorm1d, nn.BatchNorm2d: ExactBatchNorm2d,
          nn.BatchNorm3d: ExactBatchNorm3d}


def _swap(layer: nn.Module) -> nn.Module:
    new = _EXACT[type(layer)].__new__(_EXACT[type(layer)])
    new.__dict__ = layer.__dict__  # same parameters, buffers, hooks and mode
    return new


def exact_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every plain `nn.BatchNorm{1,2,3}d` inside `module` (in place) for its exact twin."""
    for name, child in list(module.named_children()):
        if type(child) in _EXACT:
            setattr(module, name, _swap(child))
        else:
            exact_batchnorm(child)
    return module


def exact_layers(module: nn.Module) -> list[_ExactBatchNorm]:
    return [m for m in module.modules() if isinstance(m, _ExactBatchNorm)]


@contextmanager
def normalise_with(layers: list[_ExactBatchNorm]) -> Iterator[None]:
    """Drive `layers` functionally: stored statistics where a layer has them, else
    statistics computed from the batch (see `stat_rows`). Restores plain behaviour after."""
    for layer in layers:
        layer.statistics = "running" if layer.has_stored_statistics() else "batch"
        layer.stat_rows = None
    try:
        yield
    finally:
        for layer in layers:
            layer.statistics = None
            layer.stat_rows = None


def set_stat_rows(layers: list[_ExactBatchNorm], rows: int | None) -> None:
    for layer in layers:
        layer.stat_rows = rows
