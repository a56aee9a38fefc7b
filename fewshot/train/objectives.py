"""Losses that learn from unlabeled images: self-supervision and domain alignment.

- SimCLR (Chen et al., 2020): two augmented views of each image, a projection head and
  the NT-Xent loss (each view must pick its twin among the other 2B - 1 views).
- BYOL (Grill et al., 2020): an online network (encoder, projector, predictor) regresses
  a slowly moving (EMA) copy of itself on the other view; no negatives needed.
- Multi-kernel MMD (Long et al., 2015): the squared maximum mean discrepancy between the
  source and target features under a family of Gaussian kernels.
- DANN (Ganin et al., 2016): a domain discriminator on the features, trained through a
  gradient-reversal layer so that the encoder learns to make the domains inseparable.

Views keep a cell's size in pixels (flips, 90-degree rotations, intensity and colour
jitter, shifts of at most an eighth of the image with reflected borders; no rescaling),
for the reason given in fewshot.data.augment. Every random draw comes from a generator
seeded by the caller (seed, position), so a resumed run draws what it would have drawn.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.config import Config
from fewshot.data.augment import augment
from fewshot.data.cache import as_tensor, cached_array
from fewshot.data.tasks import Task
from fewshot.methods.common import mmd


def load_unlabeled(config: Config, task: Task, image_size: int, cache: dict[str, Any]
                   ) -> Tensor | None:
    """uint8 images of `data.unlabeled`, refused when any is a val or novel image (val
    chooses the model, novel measures it), or None when none are given."""
    from fewshot.data.unlabeled import find_unlabeled, refuse_overlap

    if not config.data.unlabeled:
        return None
    found = find_unlabeled(config.data.unlabeled, quiet=cache["quiet"])
    measured = [path for split in ("val", "novel") if task.classes(split)
                for path in task.split(split).paths]
    refuse_overlap(found, measured, "the task's val and novel classes", quiet=cache["quiet"])
    return as_tensor(cached_array(found.paths, image_size, cache["directory"],
                                  workers=cache["workers"], quiet=cache["quiet"]))


def check_objectives(config: Config, world, uses: str = "set "
                       "train.objective=both or ssl, or train.align=mmd or dann") -> None:
    """Unlabeled images and the objectives that use them come together, in one process;
    checked before any image is read."""
    from fewshot.errors import UsageError

    t, given = config.train, bool(config.data.unlabeled)
    wanted = t.objective != "supervised" or t.align != "none"
    if wanted and not given:
        raise UsageError(f"train.objective={t.objective} and train.align={t.align} need "
                         "unlabeled images", "data.unlabeled",
                         "pass --unlabeled DIR (or set data.unlabeled)")
    if given and not wanted:
        raise UsageError("unlabeled images given, but nothing uses them", "--unlabeled",
                         uses)
    if wanted and world.distributed:
        raise UsageError("unlabeled objectives run in one process, not under torchrun",
                         "train.objective", "run this pretrain without torchrun")


def views(images: Tensor, generator: torch.Generator) -> Tensor:
    """One size-keeping augmented view of a normalised float batch `[B, C, H, W]`."""
    out = augment(images, jitter=0.4, generator=generator)
    b, c, h, w = out.shape
    gains = 1 + (torch.rand(b, c, 1, 1, generator=generator) * 2 - 1) * 0.2
    out = out * gains.to(out.device)
    m = max(1, h // 8)
    padded = F.pad(out, (m, m, m, m), mode="reflect")
    dy = torch.randint(0, 2 * m + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * m + 1, (b,), generator=generator).tolist()
    return torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in
                        enumerate(zip(dy, dx, strict=True))])


def mlp(dim_in: int, hidden: int, dim_out: int, batchnorm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(dim_in, hidden)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, dim_out)]
    return nn.Sequential(*layers)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """SimCLR's loss: cross-entropy of each view against its twin among all other views."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class SimCLR(nn.Module):
    """Projection head and loss; the encoder stays the stage's."""

    def __init__(self, feature_dim: int, temperature: float = 0.2) -> None:
        super().__init__()
        self.projector = mlp(feature_dim, 512, 128)
        self.temperature = temperature

    def loss(self, encoder: nn.Module, v1: Tensor, v2: Tensor) -> Tensor:
        z = self.projector(encoder(torch.cat([v1, v2])))
        return nt_xent(z[:len(v1)], z[len(v1):], self.temperature)

    def after_step(self, encoder: nn.Module) -> None:
        pass


class BYOL(nn.Module):
    """Online projector and predictor, and the EMA target (encoder and projector), which
    gets no gradients: `after_step` moves it towards the online weights."""

    def __init__(self, encoder: nn.Module, feature_dim: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.projector = mlp(feature_dim, 512, 128)
        self.predictor = mlp(128, 512, 128)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)
        self.momentum = momentum

    def loss(self, encoder: nn.Module, v1: Tensor, v2: Tensor) -> Tensor:
        both = torch.cat([v1, v2])
        online = self.predictor(self.projector(encoder(both)))
        with torch.no_grad():
            target = self.target_projector(self.target_encoder(both))
        n = len(v1)
        swapped = torch.cat([target[n:], target[:n]])  # each view predicts the other
        return (2 - 2 * F.cosine_similarity(online.float(), swapped.float(), dim=1)).mean()

    @torch.no_grad()
    def after_step(self, encoder: nn.Module) -> None:
        for online, target in ((encoder, self.target_encoder),
                               (self.projector, self.target_projector)):
            for p, q in zip(online.parameters(), target.parameters(), strict=True):
                q.lerp_(p.detach(), 1 - self.momentum)
            for b, c in zip(online.buffers(), target.buffers(), strict=True):
                c.copy_(b)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coefficient: float) -> Tensor:  # noqa: ANN001
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        return -ctx.coefficient * grad, None


def reverse_gradient(x: Tensor, coefficient: float = 1.0) -> Tensor:
    """Identity forward; the gradient multiplied by -coefficient backward."""
    return _Reverse.apply(x, coefficient)


class DomainDiscriminator(nn.Module):
    """Source-or-target classifier on features, behind a gradient-reversal layer."""

    def __init__(self, feature_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = mlp(feature_dim, hidden, 1, batchnorm=False)

    def loss(self, source: Tensor, target: Tensor, coefficient: float
             ) -> tuple[Tensor, float]:
        """(binary cross-entropy, the discriminator's accuracy) on one batch of each."""
        features = reverse_gradient(torch.cat([source, target]).float(), coefficient)
        logits = self.net(features).squeeze(1)
        labels = torch.cat([torch.ones(len(source)), torch.zeros(len(target))]).to(
            logits.device)
        accuracy = ((logits > 0).float() == labels).float().mean().item()
        return F.binary_cross_entropy_with_logits(logits, labels), accuracy


def dann_coefficient(progress: float) -> float:
    """Ganin et al.'s schedule of the reversal strength: 0 at the start, towards 1."""
    import math

    return 2 / (1 + math.exp(-10 * progress)) - 1


class UnlabeledObjectives(nn.Module):
    """What a training stage adds to each step from its stream of unlabeled images:
    the self-supervised loss (`train.objective` ssl or both) and the alignment loss
    (`train.align`), with their modules (projector, predictor, EMA target, discriminator),
    which train with the stage's optimiser and are saved in its checkpoint.

    A step's unlabeled batch is `batch_size` images drawn with a generator seeded by
    (seed, position), so a resumed run draws the same batches."""

    def __init__(self, encoder: nn.Module, images: Tensor, *, objective: str, ssl: str,
                 ssl_weight: float, align: str, align_weight: float, batch_size: int,
                 seed: int) -> None:
        super().__init__()
        dim = int(encoder.feature_dim)
        self.use_ssl = objective in ("ssl", "both")
        self.align = align
        self.ssl_weight, self.align_weight = ssl_weight, align_weight
        self.ssl = (BYOL(encoder, dim) if ssl == "byol" else SimCLR(dim)) if self.use_ssl \
            else None
        self.discriminator = DomainDiscriminator(dim) if align == "dann" else None
        self.images = images  # uint8, not a buffer: the checkpoint holds modules only
        self.batch_size, self.seed = batch_size, seed

    def generator(self, position: int) -> torch.Generator:
        import numpy as np

        return torch.Generator().manual_seed(
            int(np.random.default_rng([self.seed, position, 29]).integers(2**62)))

    def target_batch(self, generator: torch.Generator, normalize, device: torch.device
                     ) -> Tensor:
        size = min(self.batch_size, len(self.images))
        index = torch.randperm(len(self.images), generator=generator)[:size]
        return normalize(self.images[index].to(device))

    def losses(self, encoder: nn.Module, position: int, progress: float, normalize,
               device: torch.device, source_features: Tensor | None = None,
               ssl_images: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """(weighted extra loss, metrics) of one step. `ssl_images` (normalised): the
        step's own batch when the stage trains on the unlabeled images alone; otherwise
        a batch is drawn from the stream. `source_features`: the step's labelled-image
        features, aligned with the stream's."""
        generator = self.generator(position)
        total = torch.zeros((), device=device)
        metrics: dict[str, float] = {}
        target = None
        if self.ssl is not None:
            images = ssl_images if ssl_images is not None else \
                (target := self.target_batch(generator, normalize, device))
            v1, v2 = views(images, generator), views(images, generator)
            ssl_loss = self.ssl.loss(encoder, v1, v2)
            total = total + self.ssl_weight * ssl_loss
            metrics["train/ssl_loss"] = ssl_loss.item()
        if self.align != "none" and source_features is not None:
            if target is None:
                target = self.target_batch(generator, normalize, device)
            target_features = encoder(augment(target, generator=generator))
            if self.align == "mmd":
                domain_loss = mmd(source_features, target_features)
            else:
                domain_loss, accuracy = self.discriminator.loss(
                    source_features, target_features, dann_coefficient(progress))
                metrics["train/domain_acc"] = accuracy
            total = total + self.align_weight * domain_loss
            metrics["train/domain_loss"] = domain_loss.item()
        return total, metrics

    def after_step(self, encoder: nn.Module) -> None:
        if self.ssl is not None:
            self.ssl.after_step(encoder)


class AlignmentObjective:
    """Alignment for a stage whose step does not expose its features (meta-training's
    episodic heads): each step it draws a seeded batch of base images and one of
    unlabeled images and adds the alignment loss of their features, an Objective of
    fewshot.train.loop (its gradients join the step's)."""

    name, weight = "align", 1.0

    def __init__(self, modules: UnlabeledObjectives, base_images: Tensor, normalize,
                 device: torch.device, total: int) -> None:
        self.modules, self.base_images = modules, base_images
        self.normalize, self.device, self.total = normalize, device, total
        self.metrics: dict[str, float] = {}

    def loss(self, model: nn.Module, position: int) -> Tensor:
        generator = self.modules.generator(position + 1_000_003)  # apart from the stream's
        size = min(self.modules.batch_size, len(self.base_images))
        index = torch.randperm(len(self.base_images), generator=generator)[:size]
        source = augment(self.normalize(self.base_images[index.to(self.base_images.device)]
                                        .to(self.device)), generator=generator)
        encoder = model.encoder
        loss, self.metrics = self.modules.losses(
            encoder, position, position / max(self.total, 1), self.normalize, self.device,
            source_features=encoder(source))
        return loss
