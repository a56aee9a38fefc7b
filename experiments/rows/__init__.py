"""The registry of result rows behind experiments/RESULTS.md.

A row group is a task, the training stages its models need (each a fewshot command whose
run directory is cached under experiments/runs/) and the (model, head) pairs it scores.
A new group is a module in this folder that calls `register`; the harness
(experiments/run.py) finds it, trains what is missing and scores every pair on the same
episodes as every other row of its task (and query balance).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field


@dataclass
class Stage:
    """A training run: `fewshot <command> --config <config> --out experiments/runs/<name>`."""

    name: str
    command: str
    config: str
    sets: list[str] = field(default_factory=list)


@dataclass
class Pair:
    model: str
    """A stage name (its run directory), `pixels` or `random:<backbone>`."""
    head: str
    label: str = ""
    episodes: int | None = None
    """Fewer episodes than the tier's (heads that re-run the encoder); None: all."""
    unlabeled: list[str] = field(default_factory=list)
    """Folders (relative to the checkout) of unlabeled target-domain images the encoder
    is aligned to first (`fewshot evaluate --unlabeled`)."""
    keep_batchnorm: bool = False
    """With `unlabeled`: re-centre only, keeping the trained batch-norm statistics
    (`--keep-batchnorm`)."""
    whiten: bool = False
    """With `unlabeled`: also whiten the centred features with the unlabeled images'
    covariance (`--whiten`)."""
    members: list[Pair] = field(default_factory=list)
    """An ensemble row (`fewshot evaluate --ensemble`): the mean of these pairs'
    probabilities, paired against the reference and against each member's own row."""


@dataclass
class Group:
    name: str
    task: str
    tier: str
    pairs: list[Pair]
    stages: list[Stage] = field(default_factory=list)
    shots: tuple[int | str, ...] = (1, 5)
    """Shots of its episode sets: K, or unequal support sets as evaluate's --shots takes
    them (`1-5`, `1,2,3,4,5`)."""
    note: str = ""
    reference: str = ""
    """The label of the row its rows are paired against (default: the task's first row)."""
    query_imbalance: float | None = None
    """Dirichlet alpha of unequal queries per class (`--query-imbalance`); such a group is
    scored on its own episodes, so its reference must be one of its own rows."""
    prepare: dict[str, str] = field(default_factory=dict)
    """Folders its pairs read (relative to the checkout) -> the experiments/ script (with
    its arguments) that writes one when it is missing (e.g. an unlabeled stream)."""
    seed_of: str = ""
    """The stage whose recipe its stages repeat with other training seeds: RESULTS.md
    gives, for each head and shots, every seed's accuracy and their spread."""


@dataclass
class Target:
    """The accuracy (percent, per shots) one row of a task must reach: RESULTS.md says
    whether it does, which rows came closest, and what each lever measured against a
    learned encoder was worth."""

    task: str
    """The task's name, as its rows carry it (`blood-rare-rbc`)."""
    label: str
    accuracy: dict[int, float]
    floor: str
    """The label of the task's floor row (raw pixels): a difference against it is how far
    a method gets, not what one lever was worth."""
    elsewhere: str = ""
    """Where the levers measured outside these rows are (choices made on val)."""


GROUPS: list[Group] = []
TARGETS: list[Target] = []


def register(group: Group) -> Group:
    GROUPS.append(group)
    return group


def register_target(target: Target) -> Target:
    TARGETS.append(target)
    return target


def load_groups() -> list[Group]:
    """Every group of every module in this package, in module order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    return GROUPS
