"""Seconds per 5-shot episode of `finetune` on ResNet-18 at 64 px: the cached-trunk path
(`fast`, the default) against re-running the whole encoder every step (`fast=false`),
side by side on the same episodes, with their accuracies.

    python experiments/bench_finetune.py [--model experiments/runs/blood-v1] [--episodes 20]

Writes experiments/results/bench_finetune.md. The target: at most 1 s a 5-shot episode
with 2 threads, so that finetune rows are scored on all 600 episodes.
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
TASK = ROOT / "tasks" / "blood-rare-rbc.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "experiments" / "runs" / "blood-v1"))
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Models(load_task(TASK), "novel", 0, pick_device("cpu"), quiet=True)
    rows = []
    for head in ("finetune", "finetune:fast=false"):
        evaluate([args.model], [head], TASK, shots=5, episodes=1, device="cpu",
                 slow_episodes=1, cache=cache, quiet=True)  # warm-up: embedding, first call
        started = time.monotonic()
        result = evaluate([args.model], [head], TASK, shots=5, episodes=args.episodes,
                          device="cpu", slow_episodes=args.episodes, cache=cache, quiet=True)
        seconds = (time.monotonic() - started) / args.episodes
        acc = result["results"][0]["accuracy"]
        rows.append((head, seconds, acc, os.getloadavg()[0]))
        print(f"{head}: {seconds:.2f} s/episode, {100 * acc['mean']:.1f} ± "
              f"{100 * acc['ci95']:.1f}%", flush=True)
    ratio = rows[1][1] / rows[0][1]
    lines = ["# finetune speed", "",
             f"`python experiments/bench_finetune.py --episodes {args.episodes}`: "
             f"`{Path(args.model).name}` (ResNet-18, 64 px) on tasks/blood-rare-rbc.yaml, "
             f"5-way 5-shot, 15 queries, the same {args.episodes} seeded episodes for both, "
             f"{args.threads} threads, torch {torch.__version__}, 20 phase-2 steps.", "",
             "| head | s / episode | accuracy % | load avg |", "|---|---|---|---|"]
    lines += [f"| {h} | {s:.2f} | {100 * a['mean']:.1f} ± {100 * a['ci95']:.1f} | {load:.2f} |"
              for h, s, a, load in rows]
    lines += ["", f"The cached trunk is {ratio:.1f}x faster."]
    out = ROOT / "experiments" / "results" / "bench_finetune.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
