"""`fewshot explain`: where in the image the adapted model looked for its answer.

Grad-CAM (Selvaraju et al. 2017) of the predicted class's score on the encoder's last
convolutional stage: the stage's feature maps, weighted by the spatial mean of the
score's gradient with respect to each map, summed, rectified and resized to the image.
"The last convolutional stage" is the last module of the encoder whose output is a
feature map larger than 1x1 (a map pooled to one cell shows nothing of where). An
encoder without one (raw pixels) gets gradient-times-input instead. The score is the
head's logit for the predicted class, so feature-based heads explain the score they
compute from the features (distance to a prototype, a linear score).

Transductive heads (a prediction depends on the other images of the call) and ensembles
(several encoders, several maps) are refused. An encoder read over its 8 flips and
rotations (model.json `embedding`) gets the mean of the 8 views' maps, each turned back.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.errors import UsageError
from fewshot.models.embedding import installed, undo_dihedral


def last_feature_map(encoder: nn.Module, batch: Tensor) -> nn.Module | None:
    """The last module (in execution order) whose output is a map larger than 1x1."""
    found: list[nn.Module] = []

    def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.dim() == 4 and output.shape[-2:].numel() > 1:
            found.append(module)

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if m is not encoder]
    try:
        with torch.no_grad():
            encoder(batch)
    finally:
        for handle in handles:
            handle.remove()
    return found[-1] if found else None


def saliency(model, images: Tensor) -> tuple[Tensor, Tensor, str]:
    """(maps `[N, H, W]` in [0, 1], calibrated probabilities `[N, classes]`, method name)
    for uint8 images `[N, C, H, W]` of an adapted model."""
    if getattr(model, "members", None):
        raise UsageError("explain does not take an ensemble", "ADAPTED_DIR",
                         "explain one of its members: ADAPTED_DIR/members/0")
    if model.transductive:
        raise UsageError(f"explain does not take a transductive head ('{model.method}'): its "
                         "prediction depends on the other images", "ADAPTED_DIR",
                         "adapt with an inductive method, e.g. --method linear-probe")
    head = model.head.eval()
    x = model.transform(images.to(model.device)).detach()
    target = last_feature_map(head.encoder, x[:1])
    maps: list[Tensor] = []
    stored: dict[str, Tensor] = {}

    def keep(_m: nn.Module, _i: Any, output: Tensor) -> None:
        output.retain_grad()
        stored["map"] = output

    with torch.enable_grad():
        for i in range(len(x)):
            one = x[i:i + 1].clone().requires_grad_(True)
            stored.clear()
            handle = target.register_forward_hook(keep) if target is not None else None
            try:
                logits = head(one)
            finally:
                if handle is not None:
                    handle.remove()
            score = logits[0, int(logits[0].argmax())]
            head.zero_grad(set_to_none=True)
            score.backward()
            if target is not None and stored["map"].grad is not None:
                activation, grad = stored["map"].detach(), stored["map"].grad.detach()
                weights = grad.mean(dim=(2, 3), keepdim=True)
                cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
                if len(cam) == 8 and installed(head.encoder).dihedral:
                    cam = undo_dihedral(cam).mean(0, keepdim=True)  # one map per image
                cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear",
                                    align_corners=False)[0, 0]
            else:
                cam = (one.grad * one).detach().abs().sum(dim=1)[0]
            top = float(cam.max())
            maps.append((cam / top if top > 0 else cam).cpu())
    probs = model.probabilities(images)
    return torch.stack(maps), probs, "Grad-CAM" if target is not None else \
        "gradient x input"


def explain(model, paths: list[Path], out: Path, top_k: int = 3) -> list[Path]:
    """One PNG per image (image, overlay, top probabilities) and `contact_sheet.png`."""
    from fewshot import plots
    from fewshot.data.files import load_many

    if not plots.available():
        raise UsageError("explain needs matplotlib", "explain", plots.INSTALL_HINT)
    if out.exists() and not out.is_dir():
        raise UsageError("--out names a file", out, "pass a folder")
    results = load_many(paths, model.image_size)
    bad = [(p, r) for p, r in zip(paths, results, strict=True) if isinstance(r, str)]
    good = [(p, r) for p, r in zip(paths, results, strict=True) if not isinstance(r, str)]
    if not good:
        raise UsageError("no readable image to explain", paths[0] if paths else "IMAGE",
                         "pass image files")
    images = torch.from_numpy(np.stack([r for _, r in good]))
    maps, probs, method = saliency(model, images)
    written = []
    names: set[str] = set()
    for (path, _), image, cam, p in zip(good, images, maps, probs, strict=True):
        stem = path.stem
        while stem in names:  # two files of one name in different folders
            stem += "_"
        names.add(stem)
        order = torch.argsort(p, descending=True)[:top_k].tolist()
        top = [(model.classes[j], float(p[j])) for j in order]
        written.append(plots.explanation(image.permute(1, 2, 0).numpy(), cam.numpy(), top,
                                         method, out / f"{stem}_explained.png"))
    plots.contact_sheet([(p.name, image.permute(1, 2, 0).numpy(), cam.numpy(),
                          model.classes[int(pr.argmax())], float(pr.max()))
                         for (p, _), image, cam, pr in zip(good, images, maps, probs,
                                                           strict=True)],
                        method, out / "contact_sheet.png")
    for path, reason in bad:
        print(f"error: {reason} ({path})", file=sys.stderr)
    return written
