"""`fewshot verify`: is image A the same finding as image B?

A model with a siamese head (meta-trained on pairs, or adapted with `--method siamese`)
answers with its same-finding probability, the sigmoid of its learned pair score. Any
other run directory or adapted folder answers with the cosine similarity of the two
images' encoder features (in [-1, 1]). Both use the encoder in eval mode, its stored
batch-norm statistics and the model's own preprocessing. A similarity is not a
probability: it ranks pairs, and what counts as "the same" depends on the encoder and
the finding.
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


def head_of(model: str | Path) -> tuple[nn.Module, Normalize, int]:
    """The head (on its encoder), normalisation and image size of a run or an adapted
    folder (an ensemble: its first member)."""
    from fewshot.adapted import META, Adapted
    from fewshot.assembly import load_model, model_transform

    path = Path(model)
    if path.is_dir() and (path / META).is_file():
        adapted = Adapted.load(path)
        members = getattr(adapted, "members", None)
        if members:  # an ensemble: its first member's encoder
            adapted = members[0]
        return adapted.head, adapted.transform, adapted.image_size
    head, meta = load_model(model)
    return head, model_transform(meta), meta.image_size


def verify(model: str | Path, image_a: Path, image_b: Path) -> tuple[str, float]:
    """(`same-finding probability` or `similarity`, its value) of the two images."""
    for image in (image_a, image_b):
        if not image.is_file():
            raise UsageError("image not found", image, "pass two image files")
    head, normalize, size = head_of(model)
    arrays = []
    for image in (image_a, image_b):
        loaded = try_load(image, size)
        if isinstance(loaded, str):
            raise DataError(f"cannot read the image: {loaded}", image,
                            "pass an image file (PNG, JPEG, TIFF, DICOM)")
        arrays.append(torch.from_numpy(loaded))
    images = torch.stack(arrays)
    if hasattr(head, "same_probability"):  # a siamese head: its learned pair score
        batch = normalize(images)
        with torch.no_grad():
            probability = head.eval().same_probability(batch[0:1], batch[1:2])
        return "same-finding probability", float(probability)
    features = embed(head.encoder, images, normalize, torch.device("cpu"))
    return "similarity", float(F.cosine_similarity(features[0:1], features[1:2]).clamp(-1, 1))
