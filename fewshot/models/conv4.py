"""Conv4: four 3x3 conv / batch-norm / ReLU / 2x2 max-pool blocks, the few-shot standard.

Each block pools before its ReLU: ReLU is monotonic, so max-pool and ReLU commute, in value
and in gradient, and ReLU then touches a quarter of the elements (its forward and backward
were among the costliest passes of CPU meta-training). Parameter names are unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from fewshot.models.registry import Backbone, register_backbone


def conv_block(in_channels: int, out_channels: int, track_running_stats: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    )


class Conv4(Backbone):
    def __init__(self, image_size: int = 84, in_channels: int = 3, channels: int = 64,
                 track_running_stats: bool = True) -> None:
        super().__init__()
        blocks = [conv_block(in_channels, channels, track_running_stats)]
        blocks += [conv_block(channels, channels, track_running_stats) for _ in range(3)]
        self.features = nn.Sequential(*blocks, nn.Flatten())
        side = image_size
        for _ in range(4):
            side //= 2
        self.feature_dim = channels * side * side

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)

    def split_last_stage(self) -> tuple[nn.Module, nn.Module]:
        return self.features[:-2], self.features[-2:]


@register_backbone("conv4")
def conv4(image_size: int = 84, in_channels: int = 3, **kwargs) -> Conv4:
    return Conv4(image_size=image_size, in_channels=in_channels, **kwargs)
