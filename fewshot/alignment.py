"""Test-time alignment to a new image domain from unlabeled images of it.

An encoder trained on one domain (white cells, one stain, one scanner) normalises every
layer with that domain's batch-norm statistics; on another domain the activations are
shifted and scaled away from them, and the features collapse. Re-estimating the
statistics on unlabeled images of the new domain (AdaBN, Li et al. 2016) and centring the
features on those images' mean, instead of the base classes' mean, removes the first- and
second-order shift at no training cost. `adapt --unlabeled` and `evaluate --unlabeled`
apply it to the encoder before any support image is seen; with `--keep-batchnorm` the
trained statistics stay and only the centring mean moves (for an encoder whose features
the new statistics disturb more than they align: measure both). `--whiten` then also
whitens the centred features with the unlabeled images' covariance (ZCA, shrunk towards
the identity; `fewshot.methods.common.whitening_matrix`), so that the new domain's own
directions of variation, not the training domain's, set the distances: on wbc-to-rbc
it is the step that helps (experiments/RESULTS.md). A head that uses the unlabeled
images while it fits (`linear-probe:mmd_weight`) gets their features here too, through
its `use_unlabeled`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fewshot.data.images import Normalize
from fewshot.errors import UsageError
from fewshot.features import embed
from fewshot.methods.common import power_transform, whitening_matrix

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def reestimate_batchnorm(encoder: nn.Module, images: Tensor, normalize: Normalize,
                         device: torch.device, batch_size: int = 256) -> int:
    """Replace every batch-norm layer's running mean and variance by their exact average
    over `images` (uint8); returns the number of layers re-estimated (0: none to do)."""
    layers = [m for m in encoder.modules()
              if isinstance(m, _BATCHNORMS) and m.track_running_stats]
    if not layers or not len(images):
        return 0
    was_training = encoder.training
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over every batch
    encoder.train()
    for m in encoder.modules():  # dropout and the like stay in eval mode
        if not isinstance(m, _BATCHNORMS):
            m.training = False
    for start in range(0, len(images), batch_size):
        encoder(normalize(images[start:start + batch_size].to(device)))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    encoder.train(was_training)
    return len(layers)


def can_whiten(head: nn.Module) -> bool:
    return isinstance(getattr(head, "whitening", None), Tensor)


def align_head(head: nn.Module, images: Tensor, normalize: Normalize,
               device: torch.device, quiet: bool = True,
               keep_batchnorm: bool = False, whiten: bool = False) -> dict[str, Any]:
    """Re-estimate the head's encoder's batch-norm statistics on unlabeled `images` (unless
    `keep_batchnorm`), then centre the head (when it centres features) on their mean
    feature, power-transformed like the head's own features, and with `whiten` whiten
    them with those features' covariance. Returns what was done, for the JSON records."""
    if whiten and not can_whiten(head):
        raise UsageError(f"method '{head.name}' does not whiten its features", "--whiten",
                         "use simpleshot, linear-probe or a transductive prototype head "
                         "(tim, tim-probe, batch-centred-probe, bd-cspn, laplacianshot), or drop "
                         "--whiten")
    encoder = head.encoder
    layers = 0 if keep_batchnorm else reestimate_batchnorm(encoder, images, normalize, device)
    centres = isinstance(getattr(head, "base_mean", None), Tensor)
    wants = hasattr(head, "use_unlabeled")
    if centres or wants:
        features = embed(encoder, images, normalize, device, quiet=quiet,
                         description="embedding unlabeled images")
    if centres:
        transformed = power_transform(features.float(), getattr(head, "power", None))
        head.base_mean = transformed.mean(0).to(  # as centring_mean: the transformed mean
            head.base_mean.device if head.base_mean.numel() else device)
        if whiten:
            head.whitening = whitening_matrix(transformed).to(head.base_mean.device)
    record = {"images": len(images), "batchnorm_layers": layers,
              "batchnorm": "kept" if keep_batchnorm else "re-estimated", "centred": centres,
              "whitened": bool(whiten)}
    if wants:  # a head that fits on them (`use_unlabeled`) keeps their features
        record.update(head.use_unlabeled(features.to(device)))
    return record


def check_alignment_flags(keep_batchnorm: bool, unlabeled: bool, whiten: bool = False) -> None:
    """`--keep-batchnorm` and `--whiten` mean nothing without `--unlabeled`: exit 2, not a
    silent no-op."""
    for flag, given in (("--keep-batchnorm", keep_batchnorm), ("--whiten", whiten)):
        if given and not unlabeled:
            raise UsageError("nothing to align without --unlabeled", flag,
                             f"pass --unlabeled DIR, or drop {flag}")


def require_unlabeled(head: nn.Module, given: bool, option: str) -> None:
    """A head option that fits on unlabeled images is exit 2 without them, before any
    image is read (the head words the error: `missing_unlabeled`)."""
    if getattr(head, "needs_unlabeled", False) and not given:
        raise head.missing_unlabeled(option)
