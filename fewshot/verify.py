"""`fewshot verify`: is image A the same finding as image B?

Any run directory or adapted folder answers with the cosine similarity of the two images'
encoder features (in [-1, 1]; the encoder in eval mode, its stored batch-norm
statistics, the model's own preprocessing). A similarity is not a probability: it
ranks pairs, and what counts as "the same" depends on the encoder and the finding.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.files import try_load
from fewshot.data.images import Normalize
from fewshot.errors import DataError, UsageError
from fewshot.features import embed


def encoder_of(model: str | Path) -> tuple[nn.Module, Normalize, int]:
    """The encoder, normalisation and image size of a run or an adapted folder."""
    from fewshot.adapted import META, Adapted
    from fewshot.assembly import load_model, model_transform

    path = Path(model)
    if path.is_dir() and (path / META).is_file():
        adapted = Adapted.load(path)
        members = getattr(adapted, "members", None)
        if members:  # an ensemble: its first member's encoder
            adapted = members[0]
        return adapted.head.encoder, adapted.transform, adapted.image_size
    head, meta = load_model(model)
    return head.encoder, model_transform(meta), meta.image_size


def similarity(model: str | Path, image_a: Path, image_b: Path) -> float:
    for image in (image_a, image_b):
        if not image.is_file():
            raise UsageError("image not found", image, "pass two image files")
    encoder, normalize, size = encoder_of(model)
    arrays = []
    for image in (image_a, image_b):
        loaded = try_load(image, size)
        if isinstance(loaded, str):
            raise DataError(f"cannot read the image: {loaded}", image,
                            "pass an image file (PNG, JPEG, TIFF, DICOM)")
        arrays.append(torch.from_numpy(loaded))
    features = embed(encoder, torch.stack(arrays), normalize, torch.device("cpu"))
    return float(F.cosine_similarity(features[0:1], features[1:2]).clamp(-1, 1))
