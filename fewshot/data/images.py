"""Images as uint8 tensors `[N, C, H, W]`: a task split through the decoded cache, or an
ad-hoc list of files (a support folder) decoded directly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fewshot.data.cache import (  # noqa: F401  (the public names of image loading)
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    decode_into,
    load_split_images,
)


def decode_all(paths: Sequence[str | Path], size: int, quiet: bool = False) -> Tensor:
    """Decode files in parallel (no cache: for a few images read once) into
    `[N, 3, size, size]` uint8."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    decode_into(out, paths, size, None, quiet)
    return torch.from_numpy(out)
