"""Out-of-domain checks: is a new class, or an image, like what the encoder has seen?

Two questions, two references:

- At adapt time, the support set against the encoder's base domain. The base images'
  L2-normalised features are summarised by a Gaussian with a Ledoit-Wolf shrunk
  covariance (fitted on 80% of the stored base features, seeded); an image's score is
  its Mahalanobis distance to it. The threshold is the DOMAIN_PERCENTILE-th percentile
  of the scores of the other 20% (base images the fit did not see). A support set whose
  median score is above the threshold is out of the encoder's domain.
- At predict time, each image against the adapted classes' support: the cosine
  distance to its nearest support image. The threshold is the SUPPORT_PERCENTILE-th
  percentile of the held-out images' scores when there are at least MIN_REFERENCE of
  them (they are images of the adapted classes), otherwise the largest leave-one-out
  score of the support images themselves.

The base statistics live in prototypes.safetensors under the DOMAIN_KEYS names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DOMAIN_PERCENTILE = 95.0
SUPPORT_PERCENTILE = 95.0
MIN_REFERENCE = 10
BASE_MEASURE = "Mahalanobis distance (Ledoit-Wolf) of L2-normalised features to the base domain"
SUPPORT_MEASURE = "cosine distance to the nearest support image"
REMEDIES = ("pretrain an encoder on images of this domain (fewshot pretrain), or adapt "
            "with unlabeled images of it (--unlabeled)")


def fit_domain(features: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """Base-domain statistics (the DOMAIN_KEYS tensors) from base features `[N, D]`."""
    from sklearn.covariance import LedoitWolf

    x = F.normalize(features.float(), dim=1).double().numpy()
    order = np.random.default_rng(seed).permutation(len(x))
    cut = max(2, int(round(0.8 * len(x))))
    fit, held = x[order[:cut]], x[order[cut:]]
    estimate = LedoitWolf().fit(fit)
    mean = torch.from_numpy(estimate.location_).float()
    precision = torch.from_numpy(estimate.precision_).float()
    reference = held if len(held) else fit
    base_scores = torch.sort(mahalanobis(torch.from_numpy(reference).float(), mean,
                                         precision)).values
    threshold = torch.quantile(base_scores.double(), DOMAIN_PERCENTILE / 100).float()
    return {"domain_mean": mean, "domain_precision": precision,
            "domain_threshold": threshold.reshape(()), "domain_base_scores": base_scores}


def mahalanobis(features: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """Distance of each (already normalised) row to `mean` under `precision`."""
    centred = features.double() - mean.double()
    return torch.sqrt(((centred @ precision.double()) * centred).sum(1).clamp_min(0)).float()


def base_check(stats: dict[str, Tensor] | None, features: Tensor) -> dict[str, Any] | None:
    """The support set (and held-out images) against the base domain; None without stats."""
    if stats is None or len(features) == 0:
        return None
    values = mahalanobis(F.normalize(features.float(), dim=1), stats["domain_mean"],
                         stats["domain_precision"])
    score = float(values.median())
    threshold = float(stats["domain_threshold"])
    base = stats["domain_base_scores"]
    return {"score": score, "threshold": threshold, "percentile": DOMAIN_PERCENTILE,
            "base_images_below": float((base < score).double().mean()),
            "images": int(len(values)), "above_threshold": int((values > threshold).sum()),
            "out_of_domain": score > threshold}


def nearest_support(features: Tensor, support: Tensor, exclude_self: bool = False) -> Tensor:
    """Cosine distance of each row of `features` to its nearest row of `support`."""
    similarity = F.normalize(features.float(), dim=1) @ F.normalize(support.float(), dim=1).T
    if exclude_self:
        similarity.fill_diagonal_(-2.0)
    return (1 - similarity.max(dim=1).values).clamp_min(0)


def support_threshold(support: Tensor, heldout: Tensor) -> dict[str, Any]:
    """Where predict's `out_of_domain` starts (see the module docstring)."""
    if len(heldout) >= MIN_REFERENCE:
        values = nearest_support(heldout, support)
        return {"measure": SUPPORT_MEASURE, "threshold": float(
            torch.quantile(values.double(), SUPPORT_PERCENTILE / 100)),
            "reference": f"{SUPPORT_PERCENTILE:g}th percentile of {len(heldout)} held-out "
                         "images"}
    if len(support) >= 2:
        values = nearest_support(support, support, exclude_self=True)
        return {"measure": SUPPORT_MEASURE, "threshold": float(values.max()),
                "reference": f"largest leave-one-out score of {len(support)} support images"}
    return {"measure": SUPPORT_MEASURE, "threshold": None,
            "reference": "one support image: no reference, out_of_domain not decided"}


ALIGNED_REMEDY = ("pretrain an encoder on images of this domain (fewshot pretrain); the "
                  "check is of the encoder before its alignment to the unlabeled images, and "
                  "the leave-out accuracy is of the aligned one")


def warning_line(check: dict[str, Any]) -> str:
    remedies = ALIGNED_REMEDY if check.get("before_alignment") else REMEDIES
    return (f"the new classes look out of domain for this encoder: {BASE_MEASURE} "
            f"{check['score']:.2f} (median of {check['images']} images) is above "
            f"{check['threshold']:.2f}, the {check['percentile']:g}th percentile of base "
            f"images; accuracy may be near the pixel floor. Remedies: {remedies}")
