"""Loading encoder weights: `imagenet`, a local state-dict file, or a fewshot run directory.

Files load only through safetensors or `torch.load(weights_only=True)`, so a pickle
that would run code is refused. Key names are matched leniently: a `module.` prefix
(DataParallel/DDP) is dropped, a common prefix such as `encoder.` or `backbone.` is
found automatically, and classifier keys the encoder lacks are reported, not fatal.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from fewshot.data.files import UNREADABLE
from fewshot.errors import DataError, UsageError

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "encoder", "net")


@dataclass
class LoadReport:
    """What a weight load matched; `summary()` is one line for the user."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    """Keys present in both with different shapes (left at their initial values)."""

    def summary(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.source}"
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape-mismatched", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
                text += f"; {len(keys)} {label} ({shown})"
        return text


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a `.safetensors` / `.pt` / `.pth` file or of a run directory's model."""
    from fewshot.data.files import shipped_model

    path = shipped_model(path) or Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise UsageError("not a fewshot run directory (no model.safetensors)", path,
                             "pass a run directory, a .safetensors or a .pt/.pth file")
        path = path / "model.safetensors"
    if not path.is_file():
        raise UsageError("weights file not found", path,
                         "pass 'imagenet', a .safetensors or .pt/.pth file, or a run directory")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"cannot read safetensors file: {exc}", path,
                            "re-export the weights") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError("refused to load: the file holds objects other than tensors "
                        "(a pickle that could run code)", path,
                        "re-save it as a state dict of tensors or as .safetensors") from None
    except UNREADABLE as exc:
        raise DataError(f"cannot read weights file: {exc}".splitlines()[0], path,
                        "re-save it with torch.save(model.state_dict(), path)") from None
    for _ in range(2):  # {"state_dict": {...}} as Lightning and many scripts save it
        if isinstance(data, dict) and not any(isinstance(v, Tensor) for v in data.values()):
            nested = next((data[k] for k in NESTED_KEYS if isinstance(data.get(k), dict)), None)
            if nested is None:
                break
            data = nested
    if not isinstance(data, dict):
        raise DataError("weights file is not a state dict", path,
                        "save model.state_dict(), not the model")
    return {k: v for k, v in data.items() if isinstance(v, Tensor)}


def match_keys(state: dict[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Rename `state`'s keys towards `expected`: drop `module.`, then the prefix that
    matches most keys (e.g. `encoder.`, `backbone.`, `model.`)."""
    state = {k.replace("module.", "", 1) if k.startswith("module.") else k: v
             for k, v in state.items()}
    state = {k.replace(".module.", ".", 1): v for k, v in state.items()}
    prefixes = {""}
    for key in state:
        parts = key.split(".")
        prefixes.update(".".join(parts[:i]) + "." for i in range(1, min(3, len(parts))))
    best = max(sorted(prefixes),
               key=lambda p: (sum(k[len(p):] in expected for k in state if k.startswith(p)),
                              -len(p)))
    return {k[len(best):] if k.startswith(best) else k: v for k, v in state.items()}


def load_into(model: nn.Module, state: dict[str, Tensor], source: str) -> LoadReport:
    """Copy matching tensors into `model`; everything else is reported."""
    own = model.state_dict()
    state = match_keys(state, set(own))
    report = LoadReport(source)
    usable: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append(key)
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in usable and k not in report.mismatched
                      and not k.endswith("num_batches_tracked")]
    if not usable:
        raise DataError("no weights in the file match the model", source,
                        "check that the weights are for this backbone")
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report


def imagenet_state_dict(backbone: str) -> dict[str, Tensor]:
    """ImageNet weights through torchvision's (or timm's) own weight API."""
    import torchvision

    if backbone.startswith("timm:"):
        from fewshot.models.timm_backbone import build_timm

        try:
            return build_timm(backbone[5:], pretrained=True).state_dict()
        except (OSError, RuntimeError) as exc:
            raise _offline(backbone, exc) from None
    try:
        weights = torchvision.models.get_model_weights(backbone).DEFAULT
    except (ValueError, KeyError):
        raise UsageError("no imagenet weights for this backbone", backbone,
                         "use a torchvision or timm: backbone, or pass a weights file") from None
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise _offline(backbone, exc) from None


def _offline(backbone: str, exc: Exception) -> UsageError:
    reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
    return UsageError(f"cannot download imagenet weights for {backbone} ({reason})",
                      "model.weights", "download them elsewhere and pass the local file "
                      "(--set model.weights=PATH.pth)")


def backbone_name(encoder: nn.Module) -> str:
    """The registry name of an encoder built by torchvision or timm (for `imagenet`)."""
    if hasattr(encoder, "timm_name"):
        return f"timm:{encoder.timm_name}"
    return getattr(encoder, "torchvision_name", type(encoder).__name__.lower())


def load_encoder_weights(encoder: nn.Module, weights: str | Path | None,
                         backbone: str | None = None, quiet: bool = False) -> LoadReport | None:
    """`load_weights`, with the report printed as one line on stderr unless quiet."""
    report = load_weights(encoder, weights, backbone or backbone_name(encoder))
    if report is not None and not quiet:
        from fewshot.progress import console

        console.print(report.summary(), markup=False)
    return report


def load_weights(model: nn.Module, weights: str | Path | None, backbone: str) -> LoadReport | None:
    """Apply `model.weights` (None, `imagenet`, a file, or a run directory) to an encoder."""
    if weights is None or str(weights) in {"", "none", "scratch", "random"}:
        return None
    if str(weights) == "imagenet":
        return load_into(model, imagenet_state_dict(backbone), f"imagenet ({backbone})")
    from fewshot.data.files import shipped_model

    state = read_state_dict(weights)
    if Path(weights).is_dir() or shipped_model(weights):  # a run: its encoder only
        state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    return load_into(model, state, str(weights))
