"""Building encoders from a config, and rebuilding encoder + head from a run directory.

A run directory's `model.json` says everything needed to rebuild the model without its
config (backbone, options, image size, channels, normalisation, head and head options);
`model.safetensors` holds the weights as `encoder.*` plus the head's own keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from fewshot.errors import DataError, UsageError
from fewshot.models.registry import build_backbone
from fewshot.models.weights import load_weights

FORMAT_VERSION = 1


def build_encoder(backbone: str, image_size: int, in_channels: int = 3,
                  backbone_args: dict[str, Any] | None = None, weights: str | None = None,
                  log: Any = None) -> nn.Module:
    """The encoder of `model.*` config keys, with its weights applied (report logged)."""
    encoder = build_backbone(backbone, image_size=image_size, in_channels=in_channels,
                             **(backbone_args or {}))
    report = load_weights(encoder, weights, backbone)
    if report is not None and log is not None:
        log(report.summary())
    return encoder


def read_model_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "model.json"
    if not Path(run_dir).is_dir():
        raise UsageError("run directory not found", run_dir, "pass a runs/<name> directory")
    if not path.is_file() or not (Path(run_dir) / "model.safetensors").is_file():
        raise UsageError("not a fewshot run directory (model.json / model.safetensors missing)",
                         run_dir, "pass a directory written by pretrain or meta-train")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise DataError("model.json is not valid JSON", path, "re-run the training") from None
    for key in ("backbone", "image_size"):
        if key not in info:
            raise DataError("model.json lacks a key", f"{path}: {key}", "re-run the training")
    return info


def base_mean(run_dir: str | Path, info: dict[str, Any] | None = None) -> Tensor | None:
    """The base-class feature mean: prototypes.safetensors, else model.json, else None."""
    path = Path(run_dir) / "prototypes.safetensors"
    if path.is_file():
        tensors = load_file(str(path))
        if "base_mean" in tensors:
            return tensors["base_mean"]
    info = info if info is not None else read_model_json(run_dir)
    mean = info.get("base_feature_mean")
    return torch.tensor(mean, dtype=torch.float32) if mean else None


def load_encoder(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(encoder with the run's weights, model.json contents)."""
    info = read_model_json(run_dir)
    encoder = build_backbone(info["backbone"], image_size=int(info["image_size"]),
                             in_channels=int(info.get("in_channels", 3)),
                             **info.get("backbone_args", {}))
    state = load_file(str(Path(run_dir) / "model.safetensors"))
    own = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    try:
        encoder.load_state_dict(own, strict=True)
    except RuntimeError as exc:
        raise DataError(f"weights do not fit the model.json backbone: {exc}".splitlines()[0],
                        run_dir, "the run directory is inconsistent; re-run the training") from None
    return encoder, info


def load_model(run_dir: str | Path, head: str | None = None, **options: Any):
    """Rebuild encoder + head from a run directory.

    `head` defaults to the run's own head. When it is the run's own head, the head's
    trained parameters are restored too; otherwise only the encoder is (e.g. SimpleShot
    on a pretrained encoder). `options` override the stored head options; SimpleShot,
    the probe and finetune get the stored base mean unless one is given.
    """
    from fewshot.methods import build_head

    encoder, info = load_encoder(run_dir)
    name = head or info.get("head") or "simpleshot"
    head_options = dict(info.get("head_options", {})) if name == info.get("head") else {}
    head_options.update(options)
    if "base_mean" not in head_options:
        head_options["base_mean"] = base_mean(run_dir, info)
    model = build_head(name, encoder, **head_options)
    if name == info.get("head"):
        state = load_file(str(Path(run_dir) / "model.safetensors"))
        own = model.state_dict()
        extra = {k: v for k, v in state.items()
                 if not k.startswith("encoder.") and k in own and own[k].shape == v.shape}
        model.load_state_dict(extra, strict=False)
    return model, info
