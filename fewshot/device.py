"""Which device a command runs on: every stage (training, evaluation, adapt) asks here."""

from __future__ import annotations

import torch

from fewshot.errors import UsageError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA, then MPS, then the CPU; an unavailable explicit choice is exit 2."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA is not available", "--device cuda", "use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise UsageError("MPS is not available", "--device mps", "use --device cpu or auto")
    return torch.device(name)
