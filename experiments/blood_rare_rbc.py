"""Rare red-cell morphologies (tasks/blood-rare-rbc.yaml, novel split), 5-way 1- and 5-shot,
64 px, CPU: raw pixels, a random ResNet-18 and the pretrained ResNet-18 with SimpleShot,
the linear probe and freeze-then-unfreeze fine-tuning, all on the same seeded episodes.

    python experiments/blood_rare_rbc.py --run runs/pretrain-resnet18-blood \\
        [--episodes 600] [--max-per-class 100] [--finetune-episodes 10]

Prints a table per shot setting and writes experiments/results/blood-rare-rbc.{md,json}.
Without --run only the baselines that need no training are measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewshot.data.tasks import load_task
from fewshot.evaluate import Models, evaluate, results_table
from fewshot.tracking import console
from fewshot.train.device import pick_device

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="pretrained run directory")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--finetune-episodes", type=int, default=10)
    parser.add_argument("--finetune-steps", type=int, default=5)
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--name", default="blood-rare-rbc")
    parser.add_argument("--no-random", action="store_true",
                        help="skip the random encoder (already measured)")
    args = parser.parse_args()

    pairs = [("pixels", "simpleshot")]
    if not args.no_random:
        pairs += [("random:resnet18", "simpleshot"), ("random:resnet18", "linear-probe")]
    if args.run:
        pairs += [(args.run, "simpleshot"), (args.run, "linear-probe"), (args.run, "finetune")]
    task = load_task(ROOT / "tasks" / "blood-rare-rbc.yaml")
    cache = Models(task, "novel", 0, pick_device("cpu"), quiet=False,
                   max_per_class=args.max_per_class)
    results, timings = [], []
    for shots in args.shots:
        started = time.monotonic()
        result = evaluate([m for m, _ in pairs], [h for _, h in pairs], task.source,
                          ways=5, shots=shots, queries=15, episodes=args.episodes, seed=0,
                          device="cpu", slow_episodes=args.finetune_episodes,
                          head_options={"finetune_steps": args.finetune_steps},
                          max_per_class=args.max_per_class, cache=cache)
        timings.append(time.monotonic() - started)
        console.print(results_table(result))
        results.append(result)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# {args.name}: novel classes, 5-way, 15 queries, 64 px, CPU", "",
             f"episodes: {args.episodes} (finetune: first {args.finetune_episodes}, "
             f"{args.finetune_steps} unfrozen steps); pool: "
             f"{args.max_per_class or 'all'} images per class; seed 0; "
             f"torch threads {torch.get_num_threads()}; wall time per setting (s): "
             + ", ".join(f"{s}-shot {t:.0f}" for s, t in zip(args.shots, timings, strict=True)),
             "", "| model | head | " + " | ".join(f"{s}-shot acc % (E)" for s in args.shots)
             + " |", "|---|---|" + "---|" * len(args.shots)]
    for i, (model, head) in enumerate(pairs):
        cells = []
        for result in results:
            r = result["results"][i]
            cells.append(f"{100 * r['accuracy']['mean']:.1f} ± {100 * r['accuracy']['ci95']:.1f}"
                         f" ({r['episodes']})")
        lines.append(f"| {model} | {head} | " + " | ".join(cells) + " |")
    lines += ["", "Paired accuracy differences against pixels + simpleshot (points, 95% CI):", ""]
    for shots, result in zip(args.shots, results, strict=True):
        for p in result["paired"]:
            d = p["accuracy_difference"]
            lines.append(f"- {shots}-shot {p['other']}: {100 * d['mean']:+.1f} ± "
                         f"{100 * d['ci95']:.1f} ({p['episodes']} episodes)")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
