"""ResNet-12: the few-shot standard encoder (MetaOptNet, FEAT, Meta-Baseline).

Four residual blocks of three 3x3 conv / batch-norm / leaky-ReLU layers, each followed
by 2x2 max-pooling, with widths 64-160-320-640 and global average pooling, so the
feature is 640-d at any image size. DropBlock (torchvision's) is optional.
"""

from __future__ import annotations

from torch import Tensor, nn

from fewshot.models.registry import Backbone, register_backbone


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, drop_block: float,
                 block_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3,
                                    padding=1, bias=False))
            layers.append(nn.BatchNorm2d(out_channels))
            if i < 2:
                layers.append(nn.LeakyReLU(0.1, inplace=True))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.BatchNorm2d(out_channels))
        self.out = nn.Sequential(nn.LeakyReLU(0.1, inplace=True), nn.MaxPool2d(2))
        if drop_block > 0:
            from torchvision.ops import DropBlock2d  # only then: importing torchvision
            # costs a command about 3 s on a 2-core CPU

            self.drop: nn.Module = DropBlock2d(drop_block, block_size)
        else:
            self.drop = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.out(self.body(x) + self.shortcut(x)))


class ResNet12(Backbone):
    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (64, 160, 320, 640),
                 drop_block: float = 0.0, block_size: int = 5) -> None:
        super().__init__()
        blocks = []
        previous = in_channels
        for i, width in enumerate(widths):
            # DropBlock only on the last two (coarse) stages, as in the reference models.
            rate = drop_block if i >= len(widths) - 2 else 0.0
            blocks.append(ResBlock(previous, width, rate, block_size if i == len(widths) - 1
                                   else 1))
            previous = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = previous
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def last_stage(self) -> nn.Module:
        return self.layers[-1]

    def split_last_stage(self) -> tuple[nn.Module, nn.Module]:
        return self.layers[:-1], nn.Sequential(self.layers[-1], self.pool)

    def forward(self, images: Tensor) -> Tensor:
        return self.pool(self.layers(images))


@register_backbone("resnet12")
def resnet12(image_size: int = 84, in_channels: int = 3, **kwargs) -> ResNet12:
    """`widths`, `drop_block` (probability, 0 = off) and `block_size` are options."""
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    return ResNet12(in_channels=in_channels, **kwargs)
