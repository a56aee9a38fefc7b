"""meta-train on torch.distributed against one process, on the CPU (gloo), side by side.

Both train ProtoNet Conv4 (configs/protonet-conv4.yaml, blood-rare-rbc, 64 px) with SGD on
the same global meta-batch: one process with `train.meta_batch=4` and 2 threads, and
`torchrun --nproc_per_node=2` with `train.meta_batch=2` per rank and 1 thread per rank.
The point on a CPU is correctness (the two runs should end with the same weights up to
float rounding); the speed is reported as it is, with the machine's load average.

    python experiments/bench_distributed.py [--episodes 200] [--one-thread]

Writes experiments/results/bench_distributed.md and .json (`_one_thread` with
--one-thread: both runs on one thread a process, the same arithmetic per episode).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def run(out: Path, ranks: int, episodes: int, threads: int) -> float:
    per_rank = 4 // ranks
    fewshot = ["-m", "fewshot", "meta-train", "--quiet", "--no-wandb",
               "--config", str(ROOT / "configs" / "protonet-conv4.yaml"), "--out", str(out),
               "--set", f"train.episodes={episodes}", "--set", f"train.meta_batch={per_rank}",
               "--set", "train.optimizer=sgd", "--set", "train.lr=0.01",
               "--set", f"train.val_every={episodes}", "--set", "train.val_episodes=50",
               "--set", f"train.checkpoint_every={episodes}"]
    command = [sys.executable, *fewshot] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={ranks}", *fewshot]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--one-thread", action="store_true",
                        help="1 thread for the single process too (the same arithmetic as "
                             "each rank's, so the weights can be compared at float tolerance)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seconds, weights = {}, {}
        for ranks in (1, 2):
            out = Path(tmp) / f"ranks-{ranks}"
            threads = 1 if args.one_thread else 2 // ranks
            seconds[ranks] = run(out, ranks, args.episodes, threads)
            weights[ranks] = load_file(out / "checkpoint" / "last.safetensors")
            meta = json.loads((out / "model.json").read_text())
            assert meta.get("world_size", 1) == ranks
        # parameters only: batch-norm running statistics and their counters are each
        # rank's own (rank 0's are kept), by design
        params = [k for k in weights[1] if "running_" not in k
                  and "num_batches_tracked" not in k]
        diff = max((weights[1][k] - weights[2][k]).abs().max().item() for k in params)
        scale = max(weights[1][k].abs().max().item() for k in params)
    load = [round(x, 2) for x in os.getloadavg()]
    result = {"episodes": args.episodes, "global_meta_batch": 4,
              "seconds": {"1 process": round(seconds[1], 1),
                          "2 gloo ranks": round(seconds[2], 1)},
              "episodes_per_s": {"1 process": round(args.episodes / seconds[1], 2),
                                 "2 gloo ranks": round(args.episodes / seconds[2], 2)},
              "ratio_2_ranks_over_1": round(seconds[2] / seconds[1], 2),
              "max_abs_weight_difference": diff, "max_abs_weight": scale,
              "torch": torch.__version__, "cpus": os.cpu_count(), "load_average": load}
    lines = ["# meta-train: 2 gloo ranks against 1 process (CPU)", "",
             "`python experiments/bench_distributed.py --episodes "
             f"{args.episodes}`: ProtoNet Conv4 on blood-rare-rbc (64 px), SGD, a global "
             "meta-batch of 4 episodes (1 process x 4, "
             f"{1 if args.one_thread else 2} thread(s); or 2 ranks x 2, 1 thread each), whole "
             "runs including start-up, validation and the final prototypes.", "",
             "| run | wall s | episodes/s |", "|---|---:|---:|",
             f"| 1 process | {seconds[1]:.1f} | {args.episodes / seconds[1]:.2f} |",
             f"| torchrun, 2 gloo ranks | {seconds[2]:.1f} | {args.episodes / seconds[2]:.2f} |",
             "", f"2 ranks / 1 process wall time: {seconds[2] / seconds[1]:.2f}. Largest "
             f"parameter difference (batch-norm statistics left out: each rank keeps its "
             f"own, rank 0's are saved) after {args.episodes} episodes: {diff:.2e} (largest weight "
             f"{scale:.2f}). torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
             f"{load[0]} after the runs.", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "bench_distributed_one_thread" if args.one_thread else "bench_distributed"
    result["one_thread"] = args.one_thread
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
