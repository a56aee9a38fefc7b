"""torchvision's ImageNet architectures as encoders, built by torchvision's own builders.

The classifier is replaced by `nn.Identity`, so each returns its pooled feature vector;
parameter names stay torchvision's, so torchvision and timm-free checkpoints load as
they are. VGG keeps its convolutional trunk and pools it globally (512-d) instead of
flattening a 7x7 map into the 4096-wide classifier.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fewshot.errors import UsageError
from fewshot.models.registry import register_backbone

MIN_SIZE = {"inception_v3": 75}
"""Smallest input side each architecture accepts (its stride-2 stem and pools)."""

LAST_STAGE = {
    "resnet18": "layer4", "resnet50": "layer4", "densenet121": "features.denseblock4",
    "inception_v3": "Mixed_7c",
}


def replace_stem(model: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one with `in_channels` inputs (grayscale, multi-band)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                            module.padding, bias=module.bias is not None)
            setattr(parent, name.rpartition(".")[2], new)
            return


def _build(name: str, image_size: int, in_channels: int, maxpool: bool = True,
           **kwargs) -> nn.Module:
    """`maxpool=False` (ResNets) drops the stem's max-pool: for small images (64 px cells)
    the last map is 4x4 instead of 2x2, at about 4x the compute."""
    if image_size < MIN_SIZE.get(name, 0):
        raise UsageError(f"{name} needs images of at least {MIN_SIZE[name]} px, got {image_size}",
                         "data.image_size", f"set data.image_size={MIN_SIZE[name]} or more")
    if name == "inception_v3":
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    import torchvision  # here, not at import: it costs a command about 3 s on a 2-core CPU

    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if not maxpool:
        if not hasattr(model, "maxpool"):
            raise UsageError(f"{name} has no stem max-pool to drop", "model.backbone_args",
                             "use maxpool: false with a ResNet only")
        model.maxpool = nn.Identity()
    if name.startswith("vgg"):
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Identity()
        dim = 512
    elif name.startswith("densenet"):
        dim = model.classifier.in_features
        model.classifier = nn.Identity()
    else:
        dim = model.fc.in_features
        model.fc = nn.Identity()
    if in_channels != 3:
        replace_stem(model, in_channels)
    model.feature_dim = dim
    model.torchvision_name = name
    return model


def last_stage(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the deepest stage, which `finetune` unfreezes."""
    name = getattr(model, "torchvision_name", "")
    if name in LAST_STAGE:
        return list(model.get_submodule(LAST_STAGE[name]).parameters())
    if name.startswith("vgg"):  # the last block: everything after the 4th max-pool
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        return [p for m in list(model.features)[pools[-2] + 1:] for p in m.parameters()]
    raise KeyError(name)


def split_resnet(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(trunk, tail) of a torchvision ResNet, layer4 in the tail (torchvision's forward,
    cut in two); None for the other torchvision models."""
    if not getattr(model, "torchvision_name", "").startswith("resnet"):
        return None
    trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                          model.layer1, model.layer2, model.layer3)
    return trunk, nn.Sequential(model.layer4, model.avgpool, nn.Flatten(1), model.fc)


def _register(name: str) -> Callable[..., nn.Module]:
    def builder(image_size: int = 224, in_channels: int = 3, **kwargs) -> nn.Module:
        return _build(name, image_size, in_channels, **kwargs)

    builder.__doc__ = f"torchvision `{name}`, classifier removed."
    return register_backbone(name)(builder)


for _name in ("resnet18", "resnet50", "densenet121", "vgg16_bn", "inception_v3"):
    _register(_name)
