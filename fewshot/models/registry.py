"""A registry of encoders by name (in the manner of timm).

A backbone maps images `[B, C, H, W]` to feature vectors `[B, D]` and says its
`feature_dim`. Builders take `image_size`, `in_channels` and their own keyword options.
`timm:<name>` builds any timm model (optional extra `fewshot[timm]`); backbones outside the
package register through the `fewshot.backbones` entry-point group or `FEWSHOT_PLUGINS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from fewshot.errors import UsageError
from fewshot.plugins import load_plugins


class Backbone(nn.Module):
    """Base class of encoders: `forward(images) -> [B, feature_dim]`.

    `last_stage()` names the deepest block, which the `finetune` head unfreezes.
    """

    feature_dim: int


BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = builder
        return builder

    return decorate


def registered_backbones() -> dict[str, Callable[..., nn.Module]]:
    """Every backbone by name: the built-in ones and those of plugins (`timm:<name>` aside)."""
    from fewshot.models import conv4, pixels, resnet12, torchvision_backbones  # noqa: F401

    load_plugins()
    return BACKBONES


def build_backbone(name: str, image_size: int = 84, in_channels: int = 3, **kwargs) -> nn.Module:
    """The encoder `name` with random weights (see `fewshot.models.weights` for weights)."""
    backbones = registered_backbones()
    if name.startswith("timm:"):
        from fewshot.models.timm_backbone import build_timm

        builder: Callable[..., nn.Module] = build_timm
        kwargs = {"name": name[5:], **kwargs}
    elif name in backbones:
        builder = backbones[name]
    else:
        raise UsageError("unknown backbone", name,
                         f"choose one of {', '.join(sorted(backbones))} or timm:<name>")
    try:
        inspect.signature(builder).bind(image_size=image_size, in_channels=in_channels, **kwargs)
        return builder(image_size=image_size, in_channels=in_channels, **kwargs)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise UsageError(f"bad option for backbone {name}: {exc}", "model.backbone_args",
                         "check the option names") from None


def last_stage_parameters(encoder: nn.Module) -> list[nn.Parameter]:
    """Parameters of the encoder's deepest stage (what freeze-then-unfreeze trains).

    Encoders say it with `last_stage()`; torchvision ones are known by name; otherwise
    the last top-level child holding parameters (for a Sequential, its last such child).
    """
    from fewshot.models.torchvision_backbones import last_stage

    if hasattr(encoder, "last_stage"):
        return list(encoder.last_stage().parameters())
    if hasattr(encoder, "torchvision_name"):
        return last_stage(encoder)
    module: nn.Module = encoder
    for _ in range(2):
        children = [c for c in module.children() if any(True for _ in c.parameters())]
        if not children:
            break
        module = children[-1]
        if not isinstance(module, nn.Sequential):
            break
    return list(module.parameters())


def split_last_stage(encoder: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(trunk, tail) with `tail(trunk(x)) == encoder(x)` and the deepest stage in the tail,
    for encoders whose forward is a known chain (`split_last_stage()` on the encoder, or a
    torchvision ResNet); None for others. The modules are shared, not copied, so that
    `finetune` can run a frozen trunk once and train only the tail."""
    from fewshot.models.torchvision_backbones import split_resnet

    if hasattr(encoder, "split_last_stage"):
        return encoder.split_last_stage()
    return split_resnet(encoder)
