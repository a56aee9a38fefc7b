"""Choose on val how test-time alignment uses unlabeled images of the new domain.

    python experiments/select_whitening.py [--episodes 600]

The white-cell encoder (wbc-v1 trained with blood-v1's current recipe) embeds wbc-to-rbc's
val classes (red cells) and the unlabeled red-cell stream (experiments/unlabeled_rbc.py)
once, with its trained batch-norm statistics. Every candidate feature transform is then
scored with SimpleShot and the linear probe on the same seeded val episodes as
`fewshot evaluate` draws, paired against the default (centring on the base classes'
mean): centring on the unlabeled images' mean (`--keep-batchnorm`), whitening with their
covariance at three shrinkages (`--keep-batchnorm --whiten`), and, to tell the images'
part from whitening's, whitening with the base-class features the run stores. The table
goes to experiments/results/whitening_selection.md. Features are cached in
experiments/runs/whitening-select/.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "experiments" / "runs" / "wbc-v1-current-recipe"
STREAM = ROOT / "experiments" / "runs" / "unlabeled-rbc"
CACHE = ROOT / "experiments" / "runs" / "whitening-select" / "features.pt"
OUT = ROOT / "experiments" / "results" / "whitening_selection.md"
SHRINKAGES = (1.0, 0.1, 0.01)

from fewshot.data.episodes import EpisodeSampler  # noqa: E402
from fewshot.methods.common import transform_features, whitening_matrix  # noqa: E402
from fewshot.methods.linear_probe import LR, STEPS, TEMPERATURE, train_linear  # noqa: E402


def features(task: Path) -> dict:
    """Val and unlabeled features through the run's embedding (cached)."""
    if CACHE.is_file():
        return torch.load(CACHE, weights_only=True)
    from fewshot.data.tasks import load_task
    from fewshot.data.unlabeled import find_unlabeled
    from fewshot.device import pick_device
    from fewshot.evaluate import Models
    from fewshot.features import embed

    cache = Models(load_task(task), "val", 0, pick_device("cpu"), quiet=True)
    head, size, normalize = cache.build(str(RUN), "simpleshot", {"seed": 0}, {})
    _, data = cache.split_images(size)
    found = find_unlabeled([STREAM])
    out = {"val": cache.split_features(str(RUN), head.encoder, size, normalize),
           "labels": torch.as_tensor(data.labels),
           "groups": torch.as_tensor(data.groups) if data.groups is not None else torch.empty(0),
           "unlabeled": embed(head.encoder, found.images(size), normalize, pick_device("cpu")),
           "base_mean": head.base_mean}
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, CACHE)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", type=Path, default=ROOT / "tasks" / "wbc-to-rbc.yaml")
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    started, load = time.time(), os.getloadavg()[0]
    d = features(args.task)
    val, unlabeled, base_mean = d["val"], d["unlabeled"], d["base_mean"]
    base = load_file(RUN / "prototypes.safetensors")["base_features"]
    centre = unlabeled.mean(0)
    candidates = {  # name: (centre, whitening)
        "centred on the base mean (default)": (base_mean, None),
        "centred on the unlabeled mean": (centre, None),
        **{f"centred on and whitened with the unlabeled images, shrinkage {s:g}":
           (centre, whitening_matrix(unlabeled, s)) for s in SHRINKAGES},
        "centred on and whitened with the base-class features, shrinkage 0.1":
            (base_mean, whitening_matrix(base, 0.1)),
    }
    transformed = {name: transform_features(val, None, c, w)
                   for name, (c, w) in candidates.items()}
    labels = d["labels"].numpy()
    groups = d["groups"].numpy() if d["groups"].numel() else None
    lines = []
    for head in ("SimpleShot", "linear probe"):
        for shots in (1, 5):
            sampler = EpisodeSampler(labels, 5, shots, 15, episodes=args.episodes, seed=0,
                                     groups=groups)
            accuracy = {name: [] for name in transformed}
            for index in range(args.episodes):
                ep = sampler.episode(index)
                support_labels = torch.from_numpy(ep.support_labels(shots))
                query_labels = torch.from_numpy(ep.query_labels(15))
                for name, x in transformed.items():
                    support, query = x[ep.support], x[ep.query]
                    if head == "SimpleShot":
                        centroids = torch.stack([support[support_labels == c].mean(0)
                                                 for c in range(5)])
                        predicted = torch.cdist(query, centroids).argmin(-1)
                    else:
                        predicted = train_linear(support, support_labels, STEPS, LR,
                                                 TEMPERATURE)(query).argmax(-1)
                    accuracy[name].append((predicted == query_labels).float().mean().item())
            reference = np.array(next(iter(accuracy.values())))
            for i, (name, values) in enumerate(accuracy.items()):
                a = 100 * np.array(values)
                diff = a - 100 * reference
                paired = "reference" if i == 0 else \
                    f"{diff.mean():+.1f} ± {1.96 * diff.std(ddof=1) / np.sqrt(len(diff)):.1f}"
                lines.append(f"| {head} | {name} | {shots} | {a.mean():.1f} ± "
                             f"{1.96 * a.std(ddof=1) / np.sqrt(len(a)):.1f} | {paired} |")
                print(lines[-1], flush=True)
    text = [
        "# How test-time alignment uses unlabeled images, chosen on val", "",
        f"`python experiments/select_whitening.py --episodes {args.episodes}`: "
        f"{os.path.relpath(RUN, ROOT)} (trained batch-norm statistics), wbc-to-rbc val "
        f"classes, {len(unlabeled)} unlabeled red cells ({os.path.relpath(STREAM, ROOT)}), "
        f"5-way, 15 queries a class, {args.episodes} seeded episodes (those of `fewshot "
        "evaluate --split val`), each transform paired against the default one for the "
        "same head (mean ± 95% CI, points).", "",
        "| head | features | shots | accuracy % | paired vs default |",
        "|---|---|---|---|---|", *lines, "",
        f"{(time.time() - started) / 60:.1f} min on cpu, torch {torch.__version__}, load "
        f"average {load:.2f} at the start.", ""]
    kept = OUT.read_text(encoding="utf-8").partition("\n## ") if OUT.is_file() else ("",) * 3
    OUT.write_text("\n".join(text) + kept[1] + kept[2], encoding="utf-8")  # keep the choice
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
