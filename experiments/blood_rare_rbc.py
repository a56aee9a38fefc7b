"""Rare red-cell morphologies (tasks/blood-rare-rbc.yaml, novel split), 5-way 1- and 5-shot,
15 queries, 64 px, CPU: every (model, head) pair on the same seeded episodes, with paired
differences against the first pair.

    # the encoder issue's rows: pixels, random and pretrained ResNet-18 with three heads
    python experiments/blood_rare_rbc.py --pretrained runs/pretrain-resnet18-blood
    # and the meta-training rows beside them (run directories of fewshot meta-train)
    python experiments/blood_rare_rbc.py --pretrained runs/pretrain-resnet18-blood \\
        --meta runs/protonet-conv4 runs/maml-conv4 runs/anil-resnet18-pretrained \\
        --pmf runs/protonet-resnet18-pretrained --name blood-rare-rbc-meta \
        --pair runs/pretrain-resnet18-blood-last simpleshot

Feature-based heads (and MAML-family heads on stored batch-norm statistics) are scored on
all `--episodes`; MAML-family heads that re-run the encoder on the first `--slow-episodes`;
freeze-then-unfreeze (`finetune`, the costliest) on the first `--finetune-episodes`.
The episodes are a pure function of the seed, so the shorter runs are the first episodes
of the long one and their paired differences use exactly those episodes.

Prints a table and writes experiments/results/<name>.{md,json}, with the wall time of
each evaluation and, for each run directory, the training time its metrics.jsonl records.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fewshot.data.tasks import load_task
from fewshot.device import pick_device
from fewshot.evaluate import Models, evaluate
from fewshot.metrics import accuracy_difference

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def training_minutes(run: str) -> float | None:
    """Wall minutes between the first and last record of a run's metrics.jsonl."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return None
    times = [json.loads(line)["time"] for line in path.read_text().splitlines()
             if '"time"' in line]
    return (max(times) - min(times)) / 60 if times else None


def pairs_for(args: argparse.Namespace) -> list[tuple[str, str]]:
    pairs = [("pixels", "simpleshot")]
    if not args.no_random:
        pairs += [("random:resnet18", "simpleshot"), ("random:resnet18", "linear-probe")]
    if args.pretrained:
        pairs += [(args.pretrained, h) for h in ("simpleshot", "linear-probe", "finetune")]
    for run in args.meta:
        head = json.loads((Path(run) / "model.json").read_text())["head"]
        pairs.append((run, head))
    pairs += [tuple(pair) for pair in args.pair]
    for run in args.pmf:  # P>M>F: the meta-trained encoder, fine-tuned at test time too
        pairs += [(run, json.loads((Path(run) / "model.json").read_text())["head"]),
                  (run, "finetune")]
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", help="a fewshot pretrain run directory")
    parser.add_argument("--meta", nargs="*", default=[], help="meta-train run directories, "
                        "scored with their own head")
    parser.add_argument("--pmf", nargs="*", default=[], help="meta-train run directories, "
                        "scored with their own head and with finetune (P>M>F)")
    parser.add_argument("--pair", nargs=2, action="append", default=[],
                        metavar=("MODEL", "HEAD"), help="any further pair (repeatable)")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--slow-episodes", type=int, default=100)
    parser.add_argument("--finetune-episodes", type=int, default=50)
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--name", default="blood-rare-rbc")
    parser.add_argument("--no-random", action="store_true", help="skip the random encoder")
    args = parser.parse_args()

    pairs = pairs_for(args)
    task = load_task(ROOT / "tasks" / "blood-rare-rbc.yaml")
    cache = Models(task, "novel", 0, pick_device("cpu"), quiet=False,
                   max_per_class=args.max_per_class)
    common = {"ways": 5, "queries": 15, "episodes": args.episodes, "seed": 0,
              "device": "cpu", "max_per_class": args.max_per_class, "cache": cache}
    tuned = [i for i, (_, h) in enumerate(pairs) if h == "finetune"]
    groups = [([i for i in range(len(pairs)) if i not in tuned], args.slow_episodes),
              (tuned, args.finetune_episodes)]
    results, timings = {}, {}
    for shots in args.shots:
        rows: list[dict | None] = [None] * len(pairs)
        timings[shots] = []
        for members, slow in groups:
            if not members:
                continue
            started = time.monotonic()
            out = evaluate([pairs[i][0] for i in members], [pairs[i][1] for i in members],
                           task.source, shots=shots, slow_episodes=slow, **common)
            timings[shots].append(time.monotonic() - started)
            for i, row in zip(members, out["results"], strict=True):
                rows[i] = row
        results[shots] = rows

    lines = write_results(args, pairs, results, timings)
    print("\n".join(lines))


def paired(reference: dict, other: dict) -> dict:
    """Paired difference of two result rows from separate evaluate calls."""
    return accuracy_difference(reference["per_episode_accuracy"],
                               other["per_episode_accuracy"])


def write_results(args, pairs, results, timings) -> list[str]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"task": "blood-rare-rbc", "split": "novel", "ways": 5, "queries": 15,
               "seed": 0, "episodes": args.episodes, "slow_episodes": args.slow_episodes,
               "finetune_episodes": args.finetune_episodes,
               "max_per_class": args.max_per_class, "torch_threads": torch.get_num_threads(),
               "pairs": [list(p) for p in pairs],
               "results": {str(s): rows for s, rows in results.items()},
               "paired_vs_first": {str(s): [paired(rows[0], r) for r in rows[1:]]
                                   for s, rows in results.items()},
               "evaluation_seconds": {str(s): t for s, t in timings.items()}}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")

    shots = list(results)
    lines = [f"# {args.name}: novel classes, 5-way, 15 queries, 64 px, CPU", "",
             f"Episodes: {args.episodes} (seed 0); MAML-family heads that re-run the encoder: "
             f"first {args.slow_episodes}; finetune: first {args.finetune_episodes}. Pool: "
             f"{args.max_per_class or 'all'} images per class. Torch threads "
             f"{torch.get_num_threads()}. Evaluation wall time (s): "
             + "; ".join(f"{s}-shot " + " + ".join(f"{t:.0f}" for t in timings[s])
                         for s in shots), "",
             "| model | head | " + " | ".join(f"{s}-shot acc % (E)" for s in shots)
             + " | " + " | ".join(f"{s}-shot vs first, points" for s in shots) + " |",
             "|---|---|" + "---|" * (2 * len(shots))]
    for i, (model, head) in enumerate(pairs):
        cells = [f"{100 * results[s][i]['accuracy']['mean']:.1f} ± "
                 f"{100 * results[s][i]['accuracy']['ci95']:.1f} ({results[s][i]['episodes']})"
                 for s in shots]
        diffs = []
        for s in shots:
            if i == 0:
                diffs.append("reference")
                continue
            d = paired(results[s][0], results[s][i])
            diffs.append(f"{100 * d['mean']:+.1f} ± {100 * d['ci95']:.1f}")
        lines.append(f"| {model} | {head} | " + " | ".join(cells) + " | "
                     + " | ".join(diffs) + " |")
    runs = dict.fromkeys(m for m, _ in pairs if Path(m).is_dir())
    if runs:
        lines += ["", "Training wall time recorded in each run's metrics.jsonl "
                  "(first to last record):", ""]
        for run in runs:
            minutes = training_minutes(run)
            lines.append(f"- {run}: " + (f"{minutes:.1f} min" if minutes else "n/a"))
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
