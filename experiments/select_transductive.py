"""Choose on val how much the transductive heads trust the balance of the query batch.

    python experiments/select_transductive.py [--run RUN] [--episodes 600]

TIM's marginal-entropy term pulls the predicted class split of the query batch towards
equal classes. With balanced queries it helps; with queries split unequally (a Dirichlet
draw, alpha 2, as a clinic's batch would be) it pulls correct predictions onto the wrong
classes. Every candidate weight of that term is scored on the same val episodes, balanced
and imbalanced, 1- and 5-shot, paired against the linear probe (the reference of the
transductive rows). The encoder is configs/blood-v1.yaml's recipe for 5 epochs on
blood-rare-rbc's 10 base classes only, read through the shipped embedding
(experiments/select_embedding.py writes it), so val classes are unseen. The table goes to
experiments/results/transductive_selection.md. A setting becomes the default when its
imbalanced paired CI reaches zero at both shots and, among those, its balanced gain is
the largest.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from fewshot.data.tasks import load_task
from fewshot.device import pick_device
from fewshot.evaluate import Models, evaluate

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "experiments" / "runs" / "embedding-select" / "layer3+layer4-dihedral"
OUT = ROOT / "experiments" / "results" / "transductive_selection.md"
HEADS = ["linear-probe",
         "tim-probe:marginal_entropy_weight=1", "tim-probe:marginal_entropy_weight=0.2",
         "tim-probe:marginal_entropy_weight=0.1",
         "tim:marginal_entropy_weight=1", "tim:marginal_entropy_weight=0.1"]
"""The reference first; weight 1 was both heads' default before this choice."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=RUN)
    parser.add_argument("--task", type=Path, default=ROOT / "tasks" / "blood-rare-rbc.yaml")
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    started, load = time.time(), os.getloadavg()[0]
    cache = Models(load_task(args.task), "val", 0, pick_device("cpu"), quiet=True)
    rows = []
    for imbalance in (None, 2.0):
        for shots in (1, 5):
            result = evaluate([str(args.run)] * len(HEADS), HEADS, args.task, split="val",
                              shots=shots, episodes=args.episodes, seed=0, device="cpu",
                              cache=cache, quiet=True, query_imbalance=imbalance)
            queries = "balanced" if imbalance is None else f"Dirichlet {imbalance:g}"
            for i, head in enumerate(HEADS):
                acc = result["results"][i]["accuracy"]
                diff = "reference" if i == 0 else "{:+.1f} ± {:.1f}".format(
                    *(100 * result["paired"][i - 1]["accuracy_difference"][k]
                      for k in ("mean", "ci95")))
                rows.append(f"| {head} | {shots} | {queries} | {100 * acc['mean']:.1f} ± "
                            f"{100 * acc['ci95']:.1f} | {diff} |")
                print(rows[-1], flush=True)
    lines = ["# How much the transductive heads trust a balanced batch, chosen on val", "",
             f"`python experiments/select_transductive.py --episodes {args.episodes}`: "
             f"{os.path.relpath(args.run, ROOT)} (blood-v1's recipe, 5 epochs, base classes "
             f"only, the shipped embedding), {args.task.stem} val classes, 5-way, 15 queries "
             f"a class (balanced) or 75 split by a Dirichlet draw (alpha 2), {args.episodes} "
             "seeded episodes, each head paired against the linear probe (mean ± 95% CI, "
             "points).", "",
             "| head | shots | queries | accuracy % | paired vs linear probe |",
             "|---|---|---|---|---|", *rows, "",
             f"{(time.time() - started) / 60:.1f} min on cpu, torch {torch.__version__}, "
             f"load average {load:.2f} at the start."]
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
