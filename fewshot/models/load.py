"""Rebuild a trained model (encoder + head) from a run directory, without its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from fewshot.errors import UsageError
from fewshot.methods import FewShotHead, build_head
from fewshot.models.registry import build_backbone
from fewshot.run import RunDir, resolve_run


def takes_option(head: str, option: str) -> bool:
    """Whether head `head`'s constructor accepts `option` by name."""
    import inspect

    from fewshot.methods.base import HEADS

    build_head("protonet", nn.Identity())  # registers the built-in heads
    cls = HEADS.get(head)
    return cls is not None and option in inspect.signature(cls).parameters


def load_model(run: RunDir | str | Path | None = None, head: str | None = None,
               **head_overrides: Any) -> tuple[FewShotHead, dict[str, Any]]:
    """(model, model.json) of a run; `head` swaps in another head on the same encoder.

    The encoder always gets the run's weights; the run's own head parameters are loaded
    only when the head is the one it was trained with.
    """
    run = run if isinstance(run, RunDir) else resolve_run(run)
    meta = run.read_meta()
    encoder = build_backbone(meta["backbone"], image_size=meta["image_size"],
                             **meta.get("backbone_args", {}))
    weights = run.load_weights()
    trained_head = meta.get("head")
    name = head or trained_head
    options = dict(meta.get("head_options", {})) if name == trained_head else {}
    options.update(head_overrides)
    if ("base_mean" not in options and run.prototypes_path.is_file()
            and takes_option(name, "base_mean")):
        options["base_mean"] = run.load_prototypes()[2]  # SimpleShot-style centring
    try:
        model = build_head(name, encoder, **options)
    except TypeError as exc:
        raise UsageError(f"head '{name}' does not take these options: {exc}", run.path,
                         "check --head and the run's model.json") from None
    if name == trained_head:
        model.load_state_dict(weights)
    else:
        encoder_weights = {k.removeprefix("encoder."): v for k, v in weights.items()
                           if k.startswith("encoder.")}
        encoder.load_state_dict(encoder_weights)
    model.eval()
    return model, meta
