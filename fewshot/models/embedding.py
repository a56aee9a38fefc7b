"""How feature-based heads read an encoder: which stages are pooled, and over which views.

A network trained to tell common classes apart keeps, in its last stage, mostly what
separates those classes; a rare class may differ in finer detail that an earlier stage
still holds. `stages` pools each named stage's map, L2-normalises it and concatenates
them, so every stage counts equally. `dihedral` averages the features of the 8 flips and
rotations of each image: a cell under the microscope has no up or left, so the average
is a feature the orientation of the crop does not move.

The spec is installed with hooks on the encoder itself (its parameters, names and
state dict are untouched), so every caller of `encoder(images)` gets the same features:
evaluation, adapt, predict and the base statistics stored with a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fewshot.errors import UsageError


class EmbeddingSpec(BaseModel):
    """`stages`: module names of the encoder whose pooled outputs are concatenated (empty:
    the encoder's own output); `dihedral`: average over the 8 flips and rotations."""

    model_config = ConfigDict(extra="forbid")

    stages: list[str] = Field(default_factory=list)
    dihedral: bool = False

    @property
    def plain(self) -> bool:
        return not self.stages and not self.dihedral

    def describe(self) -> str:
        parts = ["+".join(self.stages) if self.stages else "output"]
        if self.dihedral:
            parts.append("dihedral views")
        return ", ".join(parts)


def dihedral(images: Tensor) -> Tensor:
    """The 8 flips and rotations of each image, `[8, N, C, H, W]`."""
    flips = [images, images.flip(-1), images.flip(-2), images.flip(-1).flip(-2)]
    return torch.stack(flips + [x.transpose(-1, -2) for x in flips])


def undo_dihedral(views: Tensor) -> Tensor:
    """Maps of the 8 views `[8, ..., H, W]` turned back to the original orientation."""
    back = [v.transpose(-1, -2) if k >= 4 else v for k, v in enumerate(views)]
    flips = [lambda m: m, lambda m: m.flip(-1), lambda m: m.flip(-2),
             lambda m: m.flip(-1).flip(-2)]
    return torch.stack([flips[k % 4](v) for k, v in enumerate(back)])


def pool(output: Tensor) -> Tensor:
    """A stage's output as one vector per image: maps are averaged over space."""
    return output.flatten(2).mean(-1) if output.dim() > 2 else output.flatten(1)


def install(encoder: nn.Module, spec: EmbeddingSpec) -> None:
    """Make `encoder(images)` return the spec's features, replacing any spec installed
    before (hooks never stack: a second install would pool pooled features)."""
    modules = dict(encoder.named_modules())
    missing = [name for name in spec.stages if name not in modules]
    if missing:
        raise UsageError(f"the encoder has no module {missing[0]!r}", "model.embedding.stages",
                         "name modules of the encoder, e.g. layer3 and layer4 of a ResNet")
    uninstall(encoder)
    if spec.plain:
        return
    captured: dict[str, Tensor] = {}
    handles: list[RemovableHandle] = []

    def keep(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            captured[name] = output
        return hook

    def views(_module: nn.Module, inputs: tuple) -> tuple:
        images = inputs[0]
        return (dihedral(images).flatten(0, 1),) + tuple(inputs[1:])

    def combine(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        if spec.stages:
            output = torch.cat([F.normalize(pool(captured.pop(name)), dim=-1)
                                for name in spec.stages], -1)
        if spec.dihedral:
            output = output.unflatten(0, (8, -1)).mean(0)
        return output

    if spec.dihedral:
        handles.append(encoder.register_forward_pre_hook(views))
    handles += [modules[name].register_forward_hook(keep(name)) for name in spec.stages]
    handles.append(encoder.register_forward_hook(combine))
    encoder.embedding_spec = spec
    encoder.embedding_hooks = handles


def uninstall(encoder: nn.Module) -> None:
    """The encoder's plain output again."""
    for handle in getattr(encoder, "embedding_hooks", []):
        handle.remove()
    for name in ("embedding_spec", "embedding_hooks"):
        if name in encoder.__dict__:
            delattr(encoder, name)


def installed(encoder: nn.Module) -> EmbeddingSpec:
    """The spec installed on the encoder (plain when none is)."""
    return getattr(encoder, "embedding_spec", None) or EmbeddingSpec()


@contextmanager
def embedding(encoder: nn.Module, spec: EmbeddingSpec | None) -> Iterator[nn.Module]:
    """The encoder with `spec` installed inside the block (None: as it is), and whatever
    it had before restored after, so blocks nest."""
    if spec is None:
        yield encoder
        return
    before = installed(encoder)
    install(encoder, spec)
    try:
        yield encoder
    finally:
        install(encoder, before)
