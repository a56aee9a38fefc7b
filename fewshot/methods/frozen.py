"""A MAML-family head after its inner loop as a plain, traceable network (what
`fewshot export` writes): the adapted (fast) weights become the encoder's own, and each
batch-norm layer without stored statistics is folded, with the support set's statistics
at those weights, into one per-channel scale and shift. Lives beside the heads because
it reads their support-set state."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from fewshot.errors import UsageError


class ChannelAffine(nn.Module):
    """A batch-norm layer with its statistics fixed: `x * scale + shift` per channel."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().reshape(-1).clone())
        self.register_buffer("shift", shift.detach().reshape(-1).clone())

    def forward(self, x: Tensor) -> Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


class GradientMetaLogits(nn.Module):
    """A MAML-family head after its inner loop, as a plain network: the encoder at its
    adapted weights, each batch-norm layer normalising with what `forward` would use
    (stored statistics, or the support set's), and the adapted classifier's rows."""

    def __init__(self, head: nn.Module) -> None:
        from fewshot.models.norm import exact_layers, normalise_with

        super().__init__()
        fast, support = head._fast, head._support
        if fast is None or support is None:
            raise UsageError("the MAML-family head was not adapted", head.name,
                             "adapt it first (fewshot adapt)")
        encoder = copy.deepcopy(head.encoder)
        with torch.no_grad():
            params = dict(encoder.named_parameters())
            for name, value in fast.items():
                if name.startswith("encoder."):
                    params[name.removeprefix("encoder.")].copy_(value)
            statistics: list[tuple[Tensor, Tensor]] = []
            with normalise_with(head._bn):
                if any(layer.statistics == "batch" for layer in head._bn):
                    head._embed(fast, support, "record")  # as `_query_features` does
                for layer in head._bn:
                    if layer.statistics == "running":
                        statistics.append((layer.running_mean,
                                           torch.rsqrt(layer.running_var + layer.eps)))
                    else:
                        assert layer.recorded is not None
                        statistics.append(layer.recorded)
        exact = {id(layer) for layer in exact_layers(encoder)}
        names = [name for name, module in encoder.named_modules() if id(module) in exact]
        for name, (mean, invstd) in zip(names, statistics, strict=True):
            layer = encoder.get_submodule(name)
            scale = invstd.reshape(-1)
            if layer.weight is not None:
                scale = scale * layer.weight.detach()
            shift = -mean.reshape(-1) * scale
            if layer.bias is not None:
                shift = shift + layer.bias.detach()
            parent, _, child = name.rpartition(".")
            setattr(encoder.get_submodule(parent), child, ChannelAffine(scale, shift))
        self.encoder = encoder.requires_grad_(False)
        ways = head._episode_ways
        weight = fast["classifier.weight"][:ways].detach()
        self.classifier = nn.Linear(weight.shape[1], ways)
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(fast["classifier.bias"][:ways])
        self.classifier.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.encoder(images))
