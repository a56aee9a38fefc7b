"""Any timm model as an encoder: `timm:<name>` (needs the optional extra `fewshot[timm]`)."""

from __future__ import annotations

from torch import nn

from fewshot.errors import UsageError


def require_timm():
    try:
        import timm
    except ImportError:
        raise UsageError("timm is not installed", "timm", "pip install 'fewshot[timm]'") from None
    return timm


def build_timm(name: str, image_size: int = 224, in_channels: int = 3,
               pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's model with its classifier removed (`num_classes=0`): pooled features `[B, D]`."""
    timm = require_timm()
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0,
                                  in_chans=in_channels, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UsageError("unknown timm model", name, "see timm.list_models()") from None
        raise
    model.feature_dim = model.num_features
    model.timm_name = name
    return model
