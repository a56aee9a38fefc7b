"""The gradient-based meta-learning engine shared by `maml`, `fomaml`, `anil` and `metasgd`.

Built on `torch.func`: the inner loop takes `torch.func.grad` of the support loss with
respect to the adapted parameters, and the outer (meta) gradient is ordinary autograd
through it, second order unless `first_order`. One per-task function serves two
execution paths, chosen automatically: a Python loop over the tasks of a meta-batch
(fastest on CPU, least memory) and `torch.func.vmap` over tasks in chunks (GPU; the chunk
size bounds memory). Batch-norm layers are swapped for exact ones (fewshot.models.norm):
`nn.BatchNorm2d` under vmap gives wrong second-order gradients.

Batch-norm statistics: layers with stored statistics (a trained encoder) use
them. Otherwise the default is inductive: the support set's statistics normalise the
support and the query alike, in meta-training and at test time, so nothing is computed
from the query set. `transductive=True` normalises the query with its own batch statistics,
as learn2learn's examples do (used by the learn2learn parity tests).
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fewshot.errors import UsageError
from fewshot.methods.base import FewShotHead
from fewshot.models.norm import exact_batchnorm, exact_layers, normalise_with, set_phase

Execution = Literal["auto", "loop", "vmap"]
DEFAULT_CUDA_CHUNK = 8
"""Tasks per vmap chunk on CUDA when `chunk_size` is not set (untested on a GPU here)."""


class GradientMetaHead(FewShotHead):
    """A linear classifier of `ways` outputs on the encoder, adapted per task by SGD.

    `meta_loss` takes a meta-batch `[B, ...]` of tasks; `process_support_set` / `forward`
    / `episode_loss` handle one task, as every head does.
    """

    adapts_encoder: ClassVar[bool] = True
    """False: the inner loop adapts the classifier only (ANIL)."""
    learns_inner_lrs: ClassVar[bool] = False
    """True: one learned inner learning rate per adapted parameter entry (Meta-SGD)."""
    always_first_order: ClassVar[bool] = False

    @classmethod
    def options(cls) -> dict[str, inspect.Parameter]:
        """As declared, but `first_order` shows True where it is always on (FOMAML)."""
        options = super().options()
        if cls.always_first_order:
            options["first_order"] = options["first_order"].replace(default=True)
        return options

    def __init__(self, encoder: nn.Module, ways: int = 5, feature_dim: int | None = None,
                 inner_steps: int = 5, inner_lr: float = 0.01, first_order: bool = False,
                 transductive: bool = False, chunk_size: int | None = None,
                 execution: Execution = "auto") -> None:
        super().__init__(exact_batchnorm(encoder))
        feature_dim = feature_dim or getattr(encoder, "feature_dim", None)
        if not feature_dim:
            raise UsageError("cannot tell the encoder's feature size", type(encoder).__name__,
                             "pass feature_dim or give the encoder a feature_dim attribute")
        if ways < 2:
            raise UsageError("a classifier head needs at least 2 ways", "ways", "use ways >= 2")
        if execution not in ("auto", "loop", "vmap"):
            raise UsageError("unknown execution path", execution, "use auto, loop or vmap")
        self.ways = ways
        self.classifier = nn.Linear(feature_dim, ways)
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.first_order = first_order or self.always_first_order
        self._transductive = transductive
        self.chunk_size = chunk_size
        self.execution = execution
        self._bn = exact_layers(self.encoder)
        self._episode_ways = ways
        if self.learns_inner_lrs:
            self.inner_lrs = nn.ParameterDict([
                (_key(name), nn.Parameter(torch.full_like(p, inner_lr)))
                for name, p in self._adaptable().items()
            ])
        self.support_losses: Tensor | None = None
        """Mean support loss [before, after] the inner loop over the last meta-batch."""
        self._support: Tensor | None = None
        self._fast: dict[str, Tensor] | None = None

    # ---- the head contract -------------------------------------------------------------
    @property
    def feature_based(self) -> bool:
        return False  # the inner loop re-runs the encoder (or needs the episode's statistics)

    @property
    def transductive(self) -> bool:
        """Query batch statistics normalise the query (`transductive=True`)."""
        return self._transductive

    @transductive.setter
    def transductive(self, value: bool) -> None:
        self._transductive = bool(value)

    def task_state(self) -> dict[str, Tensor]:
        """The adapted (fast) weights, the normalised support images (their batch
        statistics normalise the query when the encoder has no stored ones) and the ways."""
        if self._fast is None or self._support is None:
            return {}
        state = {f"fast.{name}": t.detach() for name, t in self._fast.items()}
        state["support"] = self._support.detach()
        state["ways"] = torch.tensor(int(self._episode_ways))
        return state

    def load_task_state(self, tensors: dict[str, Tensor]) -> None:
        if not tensors:
            return
        if "support" not in tensors or "ways" not in tensors:
            raise UsageError("task state lacks the support set or the ways", self.name,
                             "the adapted weights are incomplete; adapt again")
        self._fast = {k.removeprefix("fast."): v for k, v in tensors.items()
                      if k.startswith("fast.")}
        self._support = tensors["support"]
        self._episode_ways = int(tensors["ways"])

    # ---- parameters -------------------------------------------------------------------
    def _adaptable(self) -> dict[str, Tensor]:
        """The parameters the inner loop adapts (names relative to this head)."""
        named = dict(self.classifier.named_parameters(prefix="classifier"))
        if self.adapts_encoder:
            named = {**dict(self.encoder.named_parameters(prefix="encoder")), **named}
        return named

    def _lr(self, name: str) -> Tensor | float:
        return self.inner_lrs[_key(name)] if self.learns_inner_lrs else self.inner_lr

    # ---- one task (runs in the loop path and under vmap alike) ------------------------
    def _embed(self, fast: dict[str, Tensor], images: Tensor,
               phase: str | None = None) -> Tensor:
        set_phase(self._bn, phase)
        if not self.adapts_encoder:
            return self.encoder(images)
        enc = {name[8:]: t for name, t in fast.items() if name.startswith("encoder.")}
        return functional_call(self.encoder, enc, (images,))

    def _logits(self, fast: dict[str, Tensor], features: Tensor, ways: int) -> Tensor:
        return F.linear(features, fast["classifier.weight"][:ways],
                        fast["classifier.bias"][:ways])

    def _query_features(self, fast: dict[str, Tensor], support: Tensor,
                        query: Tensor) -> tuple[Tensor | None, Tensor]:
        """(support features at the adapted weights when computed anyway, query features)."""
        if self.transductive or not any(layer.statistics == "batch" for layer in self._bn):
            return None, self._embed(fast, query)
        # Inductive: the support set's statistics (at the adapted weights) normalise the query.
        # Recorded from a support pass and replayed: cheaper than a support+query batch.
        adapted = self._embed(fast, support, "record")
        return adapted, self._embed(fast, query, "replay")

    def _adapt(self, support: Tensor, labels: Tensor, ways: int
               ) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
        """Fast weights, the support loss before adaptation (detached) and, for ANIL, the
        support features (the encoder is not adapted, so they serve after the loop too)."""
        fast = self._adaptable()
        features = None
        if self.adapts_encoder:
            def support_loss(params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
                loss = F.cross_entropy(self._logits(params, self._embed(params, support),
                                                    ways), labels)
                return loss, loss.detach()
        else:  # ANIL: the encoder runs once; its features carry the meta-gradient
            features = self._embed(fast, support)

            def support_loss(params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
                loss = F.cross_entropy(self._logits(params, features, ways), labels)
                return loss, loss.detach()

        before = None
        for _ in range(self.inner_steps):
            grads, loss = grad(support_loss, has_aux=True)(fast)
            before = loss if before is None else before
            if self.first_order:
                grads = {name: g.detach() for name, g in grads.items()}
            fast = {name: p - self._lr(name) * grads[name] for name, p in fast.items()}
        if before is None:  # no inner steps
            with torch.no_grad():
                before = support_loss(fast)[1]
        return fast, before, features

    def _task(self, support: Tensor, support_labels: Tensor, query: Tensor,
              query_labels: Tensor, ways: int) -> tuple[Tensor, Tensor, Tensor]:
        """Query loss, query logits, and the support loss [before, after] adaptation."""
        fast, before, features = self._adapt(support, support_labels, ways)
        adapted, query_features = self._query_features(fast, support, query)
        with torch.no_grad():
            if adapted is None:
                adapted = features if features is not None else self._embed(fast, support)
            after = F.cross_entropy(self._logits(fast, adapted, ways), support_labels)
        logits = self._logits(fast, query_features, ways)
        return F.cross_entropy(logits, query_labels), logits, torch.stack([before, after])

    # ---- meta-batches -----------------------------------------------------------------
    def check_ways(self, labels: Tensor) -> int:
        """The episode's number of ways, refused when the classifier has fewer outputs."""
        ways = int(labels.max()) + 1
        if ways > self.ways:
            raise UsageError(f"episode has {ways} ways but the head was built for {self.ways}",
                             "ways", "build the head with at least as many ways")
        return ways

    def _path(self, device: torch.device) -> tuple[str, int | None]:
        path = self.execution
        if path == "auto":
            path = "vmap" if device.type == "cuda" else "loop"
        chunk = self.chunk_size or (DEFAULT_CUDA_CHUNK if device.type == "cuda" else None)
        return path, chunk

    def meta_loss(self, support: Tensor, support_labels: Tensor, query: Tensor,
                  query_labels: Tensor, backward: bool = False,
                  loss_scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """Mean query loss over a meta-batch, and query logits `[B, NQ, N]`.

        Shapes: support `[B, NK, ...]`, support_labels `[B, NK]`, query `[B, NQ, ...]`,
        query_labels `[B, NQ]`. With `backward=True` the meta-gradient of
        `loss * loss_scale` is accumulated into `.grad` chunk by chunk (task by task in
        the loop path), freeing each chunk's graph at once, so peak memory is that of one
        chunk; the returned loss and logits are then detached.
        """
        if support.shape[0] != query.shape[0] or support_labels.shape[:2] != support.shape[:2] \
                or query_labels.shape[:2] != query.shape[:2]:
            raise UsageError("meta-batch shapes disagree", "meta_loss",
                             "pass support [B,NK,...], labels [B,NK], query [B,NQ,...], [B,NQ]")
        ways = self.check_ways(support_labels)
        batch = support.shape[0]
        path, chunk = self._path(support.device)
        step = 1 if path == "loop" else (chunk or batch)
        losses, logits, support_losses = [], [], []
        with normalise_with(self._bn):
            for start in range(0, batch, step):
                part = slice(start, start + step)
                if path == "loop":
                    loss, logit, inner = self._task(support[start], support_labels[start],
                                                    query[start], query_labels[start], ways)
                    loss, logit, inner = loss[None], logit[None], inner[None]
                else:
                    task = vmap(partial(self._task, ways=ways), randomness="different")
                    loss, logit, inner = task(support[part], support_labels[part],
                                              query[part], query_labels[part])
                if backward:
                    (loss.sum() * (loss_scale / batch)).backward()
                    loss, logit = loss.detach(), logit.detach()
                losses.append(loss)
                logits.append(logit)
                support_losses.append(inner)
        self.support_losses = torch.cat(support_losses).mean(0)
        return torch.cat(losses).mean(), torch.cat(logits)

    def task_gradients(self, support: Tensor, support_labels: Tensor, query: Tensor,
                       query_labels: Tensor, ways: int, indices: list[int], scale: float
                       ) -> list[tuple[int, Tensor, Tensor, Tensor, tuple[Tensor | None, ...]]]:
        """(index, loss, logits, support losses, gradients of `loss * scale` with respect to
        the trainable parameters) of each task in `indices` of a meta-batch: a share of the
        meta-batch, for a process that returns gradients instead of accumulating them."""
        params = [p for p in self.parameters() if p.requires_grad]
        done = []
        with normalise_with(self._bn):
            for t in indices:
                loss, logits, inner = self._task(support[t], support_labels[t], query[t],
                                                 query_labels[t], ways)
                grads = torch.autograd.grad(loss * scale, params, allow_unused=True)
                done.append((t, loss.detach(), logits.detach(), inner.detach(), grads))
        return done

    # ---- the single-task head interface ------------------------------------------------
    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        """Run the inner loop on one support set; `forward` then uses the adapted weights."""
        ways = self.check_ways(support_labels)
        with normalise_with(self._bn):
            self._fast = self._adapt(support, support_labels, ways)[0]
        self._support = support
        self._episode_ways = ways

    def forward(self, query: Tensor) -> Tensor:
        if self._fast is None or self._support is None:
            raise UsageError("no support set processed", type(self).__name__,
                             "call process_support_set(support, labels) first")
        with normalise_with(self._bn):
            features = self._query_features(self._fast, self._support, query)[1]
            return self._logits(self._fast, features, self._episode_ways)

    def episode_loss(self, support: Tensor, support_labels: Tensor, query: Tensor,
                     query_labels: Tensor) -> tuple[Tensor, Tensor]:
        loss, logits = self.meta_loss(support[None], support_labels[None], query[None],
                                      query_labels[None])
        return loss, logits[0]


def _key(name: str) -> str:
    """ParameterDict keys cannot contain dots."""
    return name.replace(".", "-")
