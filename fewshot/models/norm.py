"""Batch-norm that stays exact under `torch.func.vmap`, and the statistics it normalises with.

Under `vmap`, `nn.BatchNorm2d(track_running_stats=False)` gives a wrong second-order
meta-gradient (float64: ~1e-3 relative error, and a non-zero gradient for a conv bias that
feeds batch-norm, whose true value is exactly 0). `exact_batchnorm(module)` swaps every
batch-norm layer of an encoder, in place, for an `ExactBatchNorm*d` that shares its
parameters and buffers (same names, so state dicts and checkpoints do not change). The
swapped layer behaves exactly like `nn.BatchNorm*d` until the MAML engine drives it with
`normalise_with(...)`; then it normalises from basic tensor ops, which vmap batches
exactly, and never updates running statistics (in-place updates cannot run under vmap).
With batch statistics it runs `BatchStatisticsNorm`, whose backward is written out: the
MAML inner loop's second-order backward is shorter that way (about 5% of a CPU training
step on Conv4).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class BatchStatisticsNorm(torch.autograd.Function):
    """`weight * (x - mean) / std + bias` over the batch statistics of `x`, returning
    `(out, mean, 1/std)` (per channel, kept dims) so the query can be normalised with them.

    The backward is written out (the standard batch-norm gradient, plus the terms from
    the returned statistics) from plain tensor ops: 4 full-size passes instead of the ~8
    that autograd records for the composed forward, and the second-order backward of
    MAML differentiates that shorter formula. Plain ops keep it exact under `vmap`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)  # biased
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        return torch.addcmul(shift, x, scale), mean, invstd

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, weight, bias, _ = inputs
        _, mean, invstd = output
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_mean: Tensor, grad_invstd: Tensor):  # noqa: ANN001, ANN205
        x, weight, mean, invstd = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        n = x.numel() // mean.numel()
        normalised = torch.addcmul(-mean * invstd, x, invstd)
        sum_grad = grad_out.sum(dims, keepdim=True)
        sum_grad_normalised = (grad_out * normalised).sum(dims, keepdim=True)
        gain = invstd if weight is None else invstd * weight
        # d out/dx, d mean/dx = 1/n and d invstd/dx = -invstd^2 * normalised / n, as
        # per-channel coefficients of grad_out, normalised and 1.
        coef_normalised = -(gain * sum_grad_normalised + grad_invstd * invstd * invstd) / n
        coef_one = (grad_mean - gain * sum_grad) / n
        grad_x = torch.addcmul(torch.addcmul(coef_one, grad_out, gain), normalised,
                               coef_normalised)
        grad_weight = sum_grad_normalised if weight is not None else None
        grad_bias = sum_grad if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None


class _ExactBatchNorm:
    """Mixin for `nn.BatchNorm*d`; `statistics` None means plain batch-norm behaviour."""

    statistics: str | None = None
    """None (plain nn.BatchNorm), "running" (stored statistics) or "batch" (computed)."""
    phase: str | None = None
    """With "batch": None computes statistics from the input; "record" also keeps them
    (the support set's); "replay" normalises with the kept ones (the query, inductive)."""
    recorded: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.statistics is None:
            return super().forward(x)  # type: ignore[misc]
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.statistics == "running":
            mean = self.running_mean.view(shape)
            invstd = torch.rsqrt(self.running_var.view(shape) + self.eps)
        elif self.phase == "replay":
            if self.recorded is None:
                raise RuntimeError("batch-norm replay without recorded support statistics")
            mean, invstd = self.recorded
        else:
            weight = self.weight.view(shape) if self.weight is not None else None
            bias = self.bias.view(shape) if self.bias is not None else None
            out, mean, invstd = BatchStatisticsNorm.apply(x, weight, bias, self.eps)
            if self.phase == "record":
                self.recorded = (mean, invstd)
            return out
        # Per-channel scale and shift first, then one full-size op: less memory traffic
        # and fewer saved tensors in the backward than normalising step by step.
        scale = invstd
        if self.weight is not None:
            scale = scale * self.weight.view(shape)
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.view(shape)
        if self.phase == "replay":  # first order only (the query): the fused kernel
            channels = x.shape[1]
            zeros = x.new_zeros(channels)
            return F.batch_norm(x, zeros, torch.ones_like(zeros), scale.reshape(channels),
                                shift.reshape(channels), False, 0.0, 0.0)
        return torch.addcmul(shift, x, scale)

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
    statistics computed from the batch (see `set_phase`). Restores plain behaviour after."""
    for layer in layers:
        layer.statistics = "running" if layer.has_stored_statistics() else "batch"
        layer.phase, layer.recorded = None, None
    try:
        yield
    finally:
        for layer in layers:
            layer.statistics, layer.phase, layer.recorded = None, None, None


def set_phase(layers: list[_ExactBatchNorm], phase: str | None) -> None:
    """None: statistics from each input; "record": keep them; "replay": use the kept ones."""
    for layer in layers:
        layer.phase = phase
