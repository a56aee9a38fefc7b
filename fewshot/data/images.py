"""A split's images as one uint8 tensor `[N, C, H, W]`, the form every training loop uses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from fewshot.data.folders import load_tensor
from fewshot.data.tasks import SplitData, Task
from fewshot.tracking import track

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_all(paths: list, size: int, quiet: bool = False) -> Tensor:
    """Decode files in parallel threads (Pillow releases the GIL) into `[N, 3, size, size]`."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    with ThreadPoolExecutor() as pool:
        jobs = pool.map(lambda p: load_tensor(p, size), paths)
        for i, array in enumerate(track(jobs, len(paths), "decoding images", quiet)):
            out[i] = array
    return torch.from_numpy(out)


def load_split_images(task: Task, split: str, size: int | None = None,
                      quiet: bool = False) -> tuple[Tensor, SplitData]:
    data = task.split(split)
    return decode_all(data.paths, size or task.image_size, quiet), data


class Normalize:
    """uint8 `[..., C, H, W]` -> float, normalised per channel, on the tensor's device."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float().div_(255.0) - mean).div_(std)
