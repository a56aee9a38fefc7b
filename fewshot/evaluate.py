"""The evaluation protocol: seeded N-way K-shot episodes of a split, scored
for one or more (model, head) pairs on the very same episodes.

Per episode: accuracy, macro-F1, balanced accuracy and macro one-vs-rest AUROC, averaged
over episodes as mean ± 1.96·std/√E (ddof=1); per-class sensitivity pooled over all
episodes per class name; for every pair after the first, the mean paired difference in
accuracy against the first, with its 95% CI. Inductive: the encoder is in eval mode
(stored batch-norm statistics) and nothing is computed from the query set.

Feature-based heads see each image once: the split is embedded once per model and the
episodes index the features. Heads that re-run the encoder (finetune, MAML family) cost
an encoder pass per step and episode; on the CPU they run on the first
`slow_episodes` episodes only (default 100), which are the same episodes the other pairs
see, and their paired differences use those episodes.

`--model` takes a run directory, `pixels` (16x16 raw pixels, the floor) or
`random:<backbone>` (random initialisation, seeded). Models without a stored base mean
centre on the mean feature of a seeded subset of the task's base images. `max_per_class`
draws the episodes from a seeded pool of at most that many images per class (bounded
CPU runs; recorded in the JSON).

`--unlabeled DIR` aligns every encoder to unlabeled images of the test domain before any
episode (fewshot.alignment: batch-norm statistics and the centring mean re-estimated on
them), as `adapt --unlabeled` does; they must share no image with the evaluated pool
(path, content, near-duplicate), and the JSON records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fewshot.alignment import align_head, check_alignment_flags, require_unlabeled
from fewshot.assembly import load_model, model_transform
from fewshot.data.episodes import EpisodeSampler, Shots, check_shots, parse_shots, shots_json
from fewshot.data.images import Normalize, decode_all, load_split_images
from fewshot.data.tasks import SplitData, Task, load_task
from fewshot.data.unlabeled import ANALYSIS_SIZE, Unlabeled, find_unlabeled, refuse_overlap
from fewshot.device import pick_device
from fewshot.errors import UsageError
from fewshot.features import embed, subsample
from fewshot.methods import FewShotHead, build_head, parse_head_spec, select_options
from fewshot.metrics import accuracy_difference, episode_metrics, mean_ci
from fewshot.models import build_backbone
from fewshot.models.embedding import installed
from fewshot.progress import PlainProgress, console, make_progress
from fewshot.run import resolve_run

SLOW_EPISODES_CPU = 100
BASE_MEAN_PER_CLASS = 50
"""Base images per class embedded for the centring mean of models without prototypes."""
# ---------------------------------------------------------------- models
@dataclass
class Candidate:
    """One (model, head) pair under evaluation."""

    model: str
    head_name: str
    head: FewShotHead
    image_size: int
    normalize: Normalize
    episodes: int
    accuracy: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    balanced_accuracy: list[float] = field(default_factory=list)
    auroc: list[float] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    members: list[int] = field(default_factory=list)
    """For the `--ensemble` row: the indices of the pairs it averages."""
    member_protocols: list[str] = field(default_factory=list)
    key: str = ""
    """Of its features in the `Models` cache (the model, and the unlabeled images it was
    aligned to)."""
    alignment: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.model} + {self.head_name}"

    @property
    def protocol(self) -> str:
        if self.members:
            return "transductive" if "transductive" in self.member_protocols else "inductive"
        return self.head.protocol


def pair_up(models: list, heads: list[str], option: str = "--head"
            ) -> list[tuple[Any, str | None]]:
    """`--model` and `--head` pair in order; one of either is shared by all of the other."""
    if not models:
        raise UsageError("no model to evaluate", "--model", "pass --model RUN_DIR")
    if not heads:
        return [(m, None) for m in models]
    if len(models) == 1:
        return [(models[0], h) for h in heads]
    if len(heads) == 1:
        return [(m, heads[0]) for m in models]
    if len(models) != len(heads):
        raise UsageError(f"{len(models)} --model and {len(heads)} {option} do not pair up",
                         option, f"give one {option}, one --model, or as many of each")
    return list(zip(models, heads, strict=True))


class Models:
    """Builds each `--model` once and caches its encoder, base mean and split features."""

    def __init__(self, task: Task, split: str, seed: int, device: torch.device,
                 quiet: bool, max_per_class: int | None = None) -> None:
        self.task, self.split, self.seed, self.device, self.quiet = task, split, seed, device, quiet
        self.max_per_class = max_per_class
        self.images: dict[int, tuple[Tensor, Any]] = {}
        self.features: dict[str, Tensor] = {}
        self.base_features: dict[str, Tensor | None] = {}
        self.checked: set[str] = set()
        """Digests of unlabeled sets already checked against the pool."""
        if split == "novel":  # scoring a split that shares a file with training is void
            task.check_held_apart(by_content=True)

    def check_unlabeled(self, unlabeled: Unlabeled) -> str:
        """Refuse unlabeled images that are in the evaluated pool; their digest: the sha256
        of their files' sha256 hex digests, sorted and joined (the same set of images in any
        layout or order gives the same digest)."""
        import hashlib

        digest = hashlib.sha256("".join(sorted(unlabeled.hashes)).encode()).hexdigest()
        if digest not in self.checked:
            images, data = self.split_images(ANALYSIS_SIZE)
            refuse_overlap(unlabeled, data.paths, f"the evaluated split ({self.split})",
                           measured_images=images, quiet=self.quiet)
            self.checked.add(digest)
        return digest

    def split_images(self, size: int) -> tuple[Tensor, Any]:
        if size not in self.images:
            images, data = load_split_images(self.task, self.split, size, quiet=self.quiet)
            if self.max_per_class:  # a seeded pool per class, for bounded CPU runs
                keep = subsample(data.labels, self.max_per_class, self.seed)
                images = images[torch.from_numpy(keep)]
                data = SplitData(data.classes, [data.paths[i] for i in keep], data.labels[keep],
                                 None if data.groups is None else data.groups[keep])
            self.images[size] = (images, data)
        return self.images[size]

    def build(self, spec: str, head_name: str | None, context: dict[str, Any],
              options: dict[str, Any]) -> tuple[FewShotHead, int, Normalize]:
        """(head on the model's encoder, image size, normalisation) of one `--model`.

        `context` is offered to any head (it takes what it declares: a seed, the base
        mean); `options` were asked for by name and must all be declared."""
        if spec == "pixels" or spec.startswith("random:"):
            name = head_name or "simpleshot"
            size = self.task.image_size
            torch.manual_seed(self.seed)
            encoder = build_backbone("pixels" if spec == "pixels" else spec[7:], image_size=size)
            normalize = Normalize()
            if spec not in self.base_features:
                self.base_features[spec] = self.base_sample(encoder.to(self.device).eval(),
                                                            size, normalize)
            base = self.base_features[spec]
            offered = select_options(name, {**context, "base_features": base,
                                            "base_mean": None if base is None else base.mean(0)})
            head = build_head(name, encoder, **offered, **options)
        else:
            try:
                run = resolve_run(spec)
            except UsageError:
                raise UsageError("model not found", spec, "pass a run directory, a shipped "
                                 "model's name, 'pixels' or 'random:<backbone>'") from None
            name = head_name or run.read_meta().head or "simpleshot"
            head, meta = load_model(run, head=name, **select_options(name, context), **options)
            size = meta.image_size
            normalize = model_transform(meta)
        return head.to(self.device).eval(), size, normalize

    def base_sample(self, encoder: nn.Module, size: int, normalize: Normalize
                    ) -> Tensor | None:
        """Features of a seeded base subset (the base mean, and the centre of
        power-transformed features), for encoders that come without a run."""
        if not self.task.classes("base"):
            return None
        data = self.task.split("base")  # decode only the chosen images
        keep = subsample(data.labels, BASE_MEAN_PER_CLASS, self.seed)
        images = decode_all([data.paths[i] for i in keep], size, self.quiet)
        return embed(encoder, images, normalize, self.device, quiet=self.quiet,
                     description="base features").cpu()

    def split_features(self, spec: str, encoder: nn.Module, size: int,
                       normalize: Normalize) -> Tensor:
        if spec not in self.features:
            images, _ = self.split_images(size)
            self.features[spec] = embed(encoder, images, normalize, self.device,
                                        quiet=self.quiet, description="embedding "
                                        + spec.split("|")[0])
        return self.features[spec].to(self.device)


# ---------------------------------------------------------------- the protocol
def evaluate(models: list[str], heads: list[str], task: str | Path, *, split: str = "novel",
             ways: int = 5, shots: Shots | str = 5, queries: int = 15, episodes: int = 600,
             seed: int = 0, data_root: str | None = None, device: str = "auto",
             slow_episodes: int | None = None, head_options: dict[str, Any] | None = None,
             max_per_class: int | None = None, cache: Models | None = None,
             relative_to: Path | None = None, query_imbalance: float | None = None,
             ensemble: bool = False, unlabeled: list[str | Path] | None = None,
             keep_batchnorm: bool = False, whiten: bool = False,
             quiet: bool = False) -> dict[str, Any]:
    """Score every (model, head) pair on the same seeded episodes; returns the JSON dict.

    `cache` (a `Models` of the same task, split, seed and pool) reuses features across
    calls, e.g. 1-shot and 5-shot on one embedding. `ensemble` adds a last row that
    scores the mean of every pair's softmax probabilities (on the episodes all pairs
    have), paired against the reference and against each pair it averages. `unlabeled`
    (folders) aligns every encoder to those images first (fewshot.alignment), re-centring
    only when `keep_batchnorm`."""
    from fewshot.version import __version__

    if split not in ("base", "val", "novel"):
        raise UsageError("unknown split", split, "use base, val or novel")
    shots = check_shots(parse_shots(shots) if isinstance(shots, str) else shots, ways)
    check_alignment_flags(keep_batchnorm, bool(unlabeled), whiten)
    dev = pick_device(device)
    pairs = [(spec, parse_head_spec(head) if head else (None, {}))
             for spec, head in pair_up(models, heads)]  # every option checked before any work
    if cache is None:
        cache = Models(load_task(task, data_root, relative_to=relative_to), split, seed, dev,
                       quiet, max_per_class)
    loaded = cache.task
    found = find_unlabeled(unlabeled, quiet) if unlabeled else None
    digest = cache.check_unlabeled(found) if found else None
    if slow_episodes is None:
        slow_episodes = episodes if dev.type == "cuda" else SLOW_EPISODES_CPU
    candidates: list[Candidate] = []
    for spec, (head_name, options) in pairs:
        context = {"seed": seed, **(head_options or {})}
        head, size, normalize = cache.build(spec, head_name, context, options)
        require_unlabeled(head, found is not None, "--head")
        alignment = None
        if found:
            alignment = align_head(head, found.images(size, quiet), normalize, cache.device,
                                   quiet, keep_batchnorm, whiten)
        count = episodes if head.feature_based else min(episodes, slow_episodes)
        label = head.name + "".join(f":{k}={v}" for k, v in options.items())
        key = spec if found is None else \
            f"{spec}|unlabeled:{digest}{'|kept-batchnorm' if keep_batchnorm else ''}" \
            f"{'|whitened' if whiten else ''}"
        if not installed(head.encoder).plain:  # heads of one model may read it differently
            key += f"|embedding:{installed(head.encoder).describe()}"
        candidates.append(Candidate(spec, label, head, size, normalize, count, key=key,
                                    alignment=alignment))
        if count < episodes and not quiet:
            console.print(f"note: {head.name} re-runs the encoder every step, so it is scored "
                          f"on the first {count} of the {episodes} episodes (--slow-episodes)")

    if ensemble:
        if len(candidates) < 2:
            raise UsageError("--ensemble needs at least two (model, head) pairs", "--ensemble",
                             "pass several --model and/or --head")
        candidates.append(ensemble_candidate(candidates))
    _, data = cache.split_images(candidates[0].image_size)
    sampler = EpisodeSampler(data.labels, ways, shots, queries, episodes=episodes, seed=seed,
                             groups=data.groups, class_names=data.classes,
                             query_imbalance=query_imbalance)
    features: dict[int, Tensor] = {}
    for i, c in enumerate(candidates):
        if c.head.feature_based and not c.members:  # embed once per model; the head then
            # sees features only
            features[i] = cache.split_features(c.key, c.head.encoder, c.image_size,
                                               c.normalize)
    progress = make_progress(quiet)
    plain = PlainProgress("evaluate", episodes, quiet=quiet or not progress.disable)
    with progress:
        bar = progress.add_task("evaluate", total=episodes, status="")
        for index in range(episodes):
            ep = sampler.episode(index)
            names = [data.classes[c] for c in ep.classes]
            query_labels = torch.from_numpy(ep.query_labels(sampler.queries)).to(dev)
            support_labels = torch.from_numpy(ep.support_labels(sampler.shots)).to(dev)
            probs: dict[int, Tensor] = {}
            for i, c in enumerate(candidates):
                if index >= c.episodes:
                    continue
                if c.members:  # the mean of the members' probabilities, as a log for softmax
                    logits = torch.log(torch.stack([probs[m] for m in c.members]).mean(0))
                else:
                    logits = run_episode(c, ep, features.get(i), cache, support_labels)
                    probs[i] = torch.softmax(logits.float(), dim=-1)
                record(c, episode_metrics(logits, query_labels, ways), names)
            progress.update(bar, completed=index + 1,
                            status=f"{100 * np.mean(candidates[0].accuracy):.1f}%")
            plain.update(index + 1)

    return {
        "fewshot_version": __version__,
        "task": loaded.name, "split": split, "ways": ways, "shots": shots_json(shots),
        "queries": sampler.queries, "episodes": episodes, "seed": seed,
        "protocol": overall_protocol(candidates), "max_per_class": max_per_class,
        "query_imbalance": query_imbalance,
        "unlabeled": None if found is None else {
            "folders": [str(f) for f in found.folders], "images": len(found.paths),
            "sha256": digest, "batchnorm": "kept" if keep_batchnorm else "re-estimated",
            "whitened": whiten},
        "results": [summarise(c) for c in candidates],
        "paired": [paired(candidates[0], c) for c in candidates[1:]]
        + [paired(candidates[m], c) for c in candidates if c.members for m in c.members[1:]],
    }


def ensemble_candidate(candidates: list[Candidate]) -> Candidate:
    """The row that averages the probabilities of every pair before it."""
    first = candidates[0]
    return Candidate(
        "ensemble", "mean(" + ", ".join(c.label for c in candidates) + ")", first.head,
        first.image_size, first.normalize, min(c.episodes for c in candidates),
        members=list(range(len(candidates))),
        member_protocols=[c.head.protocol for c in candidates])


def run_episode(c: Candidate, ep, features: Tensor | None, cache: Models,
                support_labels: Tensor) -> Tensor:
    """Query logits of one episode for one pair."""
    if features is not None:
        support_index = torch.from_numpy(ep.support).to(features.device)
        query_index = torch.from_numpy(ep.query).to(features.device)
        with torch.no_grad(), c.head.on_features():
            c.head.process_support_set(features[support_index], support_labels)
            return c.head(features[query_index])
    images, _ = cache.split_images(c.image_size)
    support = c.normalize(images[torch.from_numpy(ep.support)].to(cache.device))
    query = c.normalize(images[torch.from_numpy(ep.query)].to(cache.device))
    c.head.process_support_set(support, support_labels)  # may train: gradients allowed
    with torch.no_grad():
        return c.head(query)


def overall_protocol(candidates: list[Candidate]) -> str:
    """`inductive` or `transductive` when every pair agrees, else `mixed`."""
    protocols = {c.protocol for c in candidates}
    return protocols.pop() if len(protocols) == 1 else "mixed"


def record(c: Candidate, metrics: dict[str, Any], names: list[str]) -> None:
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "auroc"):
        getattr(c, key).append(metrics[key])
    for name, hit, total in zip(names, metrics["hits"], metrics["totals"], strict=True):
        c.hits[name] = c.hits.get(name, 0) + hit
        c.totals[name] = c.totals.get(name, 0) + total


def summarise(c: Candidate) -> dict[str, Any]:
    out: dict[str, Any] = {"model": c.model, "head": c.head_name, "protocol": c.protocol,
                           "episodes": len(c.accuracy)}
    if not c.members and not installed(c.head.encoder).plain:
        out["embedding"] = installed(c.head.encoder).model_dump()
    if c.alignment is not None:
        out["alignment"] = c.alignment
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "auroc"):
        mean, ci = mean_ci(np.asarray(getattr(c, key)))
        out[key] = {"mean": mean, "ci95": ci}
    out["per_class_sensitivity"] = {name: c.hits[name] / c.totals[name]
                                    for name in sorted(c.totals)}
    out["per_episode_accuracy"] = c.accuracy
    return out


def paired(reference: Candidate, other: Candidate) -> dict[str, Any]:
    """The paired difference of two pairs scored in one evaluation."""
    d = accuracy_difference(reference.accuracy, other.accuracy)
    return {"reference": reference.label, "other": other.label, "episodes": d["episodes"],
            "accuracy_difference": {"mean": d["mean"], "ci95": d["ci95"]}}
