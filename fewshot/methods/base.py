"""The contract every head keeps (in the manner of easyfsl's FewShotClassifier).

A head wraps an encoder. `process_support_set` adapts it to a support set (labels
0..N-1, any number of shots per class), then `forward(query)` returns logits `[M, N]`.
What callers may rely on, and nothing else:

- `feature_based`: the head only ever looks at encoder outputs, so a caller may embed
  every image once and run the head on features inside `with head.on_features():`.
- `transductive`: the head uses the query batch beyond each image on its own (the result
  is then labelled `transductive`; everything else is `inductive`).
- `options()`: the keyword options the constructor declares; `build_head` refuses any
  other, and `select_options` keeps only the declared ones of a wider set.
- `task_state()` / `load_task_state()`: tensors a head computed from the support set
  that are not module parameters or buffers (saved with an adapted model).

Adding a head is a file with a class on this base and `@register_head("name")`; a head
outside the package is found through the `fewshot.heads` entry-point group or
`FEWSHOT_PLUGINS` (fewshot.plugins).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.errors import UsageError
from fewshot.plugins import load_plugins


class FewShotHead(nn.Module):
    name: ClassVar[str] = ""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    # ---- what callers may ask of any head ---------------------------------------------
    @property
    def feature_based(self) -> bool:
        """True when the head never needs to re-run the encoder after embedding."""
        return True

    @property
    def transductive(self) -> bool:
        """True when a query's logits depend on the other queries of the batch."""
        return False

    def joint(self, queries: int) -> bool:
        """Whether a batch of `queries` images is classified as one problem; a transductive
        head may fall back to its inductive rule for a batch too small to use."""
        return self.transductive

    @property
    def protocol(self) -> str:
        return "transductive" if self.transductive else "inductive"

    context_options: ClassVar[frozenset[str]] = frozenset(
        {"base_mean", "base_features", "feature_dim", "ways"})
    """Options the caller fills in from the model and the episode, never the user: a value
    given by hand would disagree with the encoder or the task."""

    @classmethod
    def options(cls) -> dict[str, inspect.Parameter]:
        """The options the constructor declares (its keyword parameters after `encoder`)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]
        return {p.name: p for p in params
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    @classmethod
    def user_options(cls) -> dict[str, inspect.Parameter]:
        """The options a user may set (`--head NAME:KEY=VALUE`, `method.KEY`)."""
        return {k: v for k, v in cls.options().items() if k not in cls.context_options}

    @contextmanager
    def on_features(self) -> Iterator[FewShotHead]:
        """Run on precomputed features: the encoder is an identity inside the block."""
        if not self.feature_based:
            raise UsageError(f"head '{self.name}' re-runs the encoder", self.name,
                             "give it images, not features")
        encoder, self.encoder = self.encoder, nn.Identity()
        try:
            yield self
        finally:
            self.encoder = encoder

    def task_state(self) -> dict[str, Tensor]:
        """Support-set state beyond parameters and buffers (none for most heads)."""
        return {}

    def load_task_state(self, tensors: dict[str, Tensor]) -> None:
        if tensors:
            raise UsageError(f"head '{self.name}' keeps no task state", sorted(tensors)[0],
                             "the adapted weights belong to another method")

    # ---- the episode interface ----------------------------------------------------------
    def process_support_set(self, support: Tensor, support_labels: Tensor) -> None:
        raise NotImplementedError

    def forward(self, query: Tensor) -> Tensor:
        raise NotImplementedError

    def episode_loss(self, support: Tensor, support_labels: Tensor, query: Tensor,
                     query_labels: Tensor) -> tuple[Tensor, Tensor]:
        """(cross-entropy on the query, query logits) of one episode, for meta-training."""
        self.process_support_set(support, support_labels)
        logits = self(query)
        return F.cross_entropy(logits, query_labels), logits


HEADS: dict[str, type[FewShotHead]] = {}


def register_head(name: str) -> Callable[[type[FewShotHead]], type[FewShotHead]]:
    def decorate(cls: type[FewShotHead]) -> type[FewShotHead]:
        cls.name = name
        HEADS[name] = cls
        return cls

    return decorate


def registered_heads() -> dict[str, type[FewShotHead]]:
    """Every head: the built-in ones and those of plugins."""
    import fewshot.methods.builtin  # noqa: F401  (registers the built-in heads)

    load_plugins()
    return HEADS


def head_class(name: str, what: str = "head") -> type[FewShotHead]:
    heads = registered_heads()
    if name not in heads:
        raise UsageError(f"unknown {what}", name, f"choose one of {', '.join(sorted(heads))}")
    return heads[name]


def select_options(name: str, available: dict[str, Any]) -> dict[str, Any]:
    """The entries of `available` that head `name` declares (context a caller offers to
    any head: a seed, the base mean, the number of ways)."""
    declared = head_class(name).options()
    return {k: v for k, v in available.items() if k in declared}


def check_options(name: str, options: dict[str, Any], where: str = "head options",
                  user: bool = False) -> None:
    """Every option given must be one the head declares (with `user`, one a user may set)."""
    cls = head_class(name)
    declared = cls.user_options() if user else cls.options()
    unknown = sorted(set(options) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise UsageError(f"head '{name}' has no option '{unknown[0]}'", where,
                         f"its options are: {known}")


def build_head(name: str, encoder: nn.Module, **options: Any) -> FewShotHead:
    check_options(name, options)
    return head_class(name)(encoder, **options)


def parse_head_spec(spec: str, what: str = "head") -> tuple[str, dict[str, Any]]:
    """`NAME` or `NAME:KEY=VALUE[,KEY=VALUE]` (values read as YAML: `5`, `0.5`, `true`)."""
    import yaml

    name, _, rest = spec.partition(":")
    head_class(name.strip(), what)
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError("head option needs KEY=VALUE", spec,
                             "write --head NAME:KEY=VALUE[,KEY=VALUE], e.g. linear-probe:steps=50")
        try:
            options[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            options[key.strip()] = raw
    name = name.strip()
    check_options(name, options, spec, user=True)
    return name, options
