"""MAML meta-training speed, fewshot's engine vs learn2learn, each as its users run it.

Conv4 (84 px), 5-way 1-shot, 15 queries per class, 5 inner steps, second order, Adam,
on the same synthetic tasks (random tensors: speed does not depend on the pixels).

- `fewshot`: the `maml` head with its defaults (inductive batch-norm, the loop path on
  CPU), set up as `fewshot meta-train` does: channels-last weights, the meta-batch split
  over one process per core (`fewshot.train.task_workers`; its sys % counts the main
  process only), each task's graph freed after its backward, and the allocator setting
  of fewshot's training commands (`keep_freed_memory`).
- `learn2learn`: learn2learn's own example (maml_miniimagenet.py): its `MiniImagenetCNN`
  (the same Conv4), `MAML.clone()`, `adapt()` per step, `backward()` per task,
  gradients averaged, default allocator.
- `learn2learn+malloc`: the same with the allocator setting through glibc's environment
  variables, to separate the engine's share of the speed-up from the allocator's.

Every measurement runs in its own process; rounds interleave the implementations so a
shared machine's load falls on all of them alike, and ratios are taken within a round.

    python experiments/bench_maml.py                  # CPU: meta-batch 4 and 8
    python experiments/bench_maml.py --meta-batch 4 --rounds 1 --iters 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

WAYS, SHOTS, QUERIES, STEPS, SIZE = 5, 1, 15, 5, 84
IMPLS = ("fewshot", "learn2learn", "learn2learn+malloc")
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str((1 << 31) - 1),
              "MALLOC_TOP_PAD_": str(64 << 20)}
RESULTS = Path(__file__).parent / "results" / "bench_maml.md"


def make_tasks(batch: int, device: str):
    import torch

    gen = torch.Generator().manual_seed(batch)
    support = torch.randn(batch, WAYS * SHOTS, 3, SIZE, SIZE, generator=gen)
    query = torch.randn(batch, WAYS * QUERIES, 3, SIZE, SIZE, generator=gen)
    s_labels = torch.arange(WAYS).repeat_interleave(SHOTS).expand(batch, -1).contiguous()
    q_labels = torch.arange(WAYS).repeat_interleave(QUERIES).expand(batch, -1).contiguous()
    return [t.to(device) for t in (support, s_labels, query, q_labels)]


def fewshot_step(channels: int, device: str, batch: int):
    import torch

    from fewshot.methods import build_head
    from fewshot.models.conv4 import Conv4
    from fewshot.runtime import keep_freed_memory
    from fewshot.train.task_workers import TaskWorkers, task_processes

    keep_freed_memory()
    torch.manual_seed(0)
    head = build_head("maml", Conv4(SIZE, channels=channels, track_running_stats=False),
                      ways=WAYS, inner_steps=STEPS, inner_lr=0.5)
    head = head.to(device, memory_format=torch.channels_last)  # as fewshot meta-train does
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    processes = task_processes(head, torch.device(device), batch, None)
    workers = TaskWorkers(head, processes) if processes > 1 else None

    def step(tasks: list) -> None:  # as fewshot meta-train runs it
        opt.zero_grad()
        if workers is not None:
            workers.meta_backward(*tasks)
        else:
            head.meta_loss(*tasks, backward=True)
        opt.step()

    return step


def learn2learn_step(channels: int, device: str, batch: int):
    import warnings

    import torch
    import torch.nn.functional as F

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn as l2l

    torch.manual_seed(0)
    model = l2l.vision.models.MiniImagenetCNN(WAYS, hidden_size=channels).to(device)
    maml = l2l.algorithms.MAML(model, lr=0.5, first_order=False)
    opt = torch.optim.Adam(maml.parameters(), 1e-3)
    def step(tasks: list) -> None:  # learn2learn's maml_miniimagenet.py, minus data loading
        support, s_labels, query, q_labels = tasks
        batch = support.shape[0]
        opt.zero_grad()
        for task in range(batch):
            learner = maml.clone()
            for _ in range(STEPS):
                learner.adapt(F.cross_entropy(learner(support[task]), s_labels[task]))
            F.cross_entropy(learner(query[task]), q_labels[task]).backward()
        for p in maml.parameters():
            p.grad.data.mul_(1.0 / batch)
        opt.step()

    return step


def worker(impl: str, batch: int, iters: int, channels: int, device: str) -> None:
    import torch

    build = fewshot_step if impl == "fewshot" else learn2learn_step
    step = build(channels, device, batch)
    tasks = make_tasks(batch, device)
    step(tasks)  # warm-up: one-time allocations, kernels, worker processes
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(iters):
        step(tasks)
    sync()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"tasks_per_s": batch * iters / wall, "wall_s": wall,
                      "user_s": after.ru_utime - before.ru_utime,
                      "sys_s": after.ru_stime - before.ru_stime,
                      "threads": torch.get_num_threads()}))


def measure(impl: str, batch: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for name in MALLOC_ENV:
        env.pop(name, None)
    if impl == "learn2learn+malloc":
        env.update(MALLOC_ENV)
    cmd = [sys.executable, __file__, "--worker", impl, "--meta-batch", str(batch),
           "--iters", str(args.iters), "--channels", str(args.channels),
           "--device", args.device]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{impl} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meta-batch", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2, help="timed meta-batches per run")
    parser.add_argument("--channels", type=int, default=32,
                        help="Conv4 width for both (learn2learn's MiniImagenetCNN defaults to 64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--worker", choices=IMPLS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.meta_batch[0], args.iters, args.channels, args.device)
        return

    rows = []
    for round_ in range(args.rounds):
        for batch in args.meta_batch:
            impls = args.impls if round_ % 2 == 0 else args.impls[::-1]
            result = {impl: measure(impl, batch, args) for impl in impls}
            rows.append((round_, batch, result))
            cells = "  ".join(f"{i} {r['tasks_per_s']:.3f}" for i, r in result.items())
            print(f"round {round_} meta-batch {batch}: {cells} tasks/s", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)  # partial results survive
            args.out.write_text(render(rows, args), encoding="utf-8")
    print(render(rows, args))


def render(rows: list, args: argparse.Namespace) -> str:
    impls = args.impls
    lines = [
        "# MAML meta-training speed: fewshot vs learn2learn",
        "",
        f"Conv4 ({args.channels} channels), {SIZE} px, {WAYS}-way {SHOTS}-shot, {QUERIES} "
        f"queries per class, {STEPS} inner steps, second order, Adam; device {args.device}; "
        f"{args.iters} timed meta-batches per run after one untimed meta-batch, each run in "
        f"its own "
        f"process, {args.rounds} interleaved rounds.",
        f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, shared with other "
        "jobs during the run (absolute numbers vary with its load; compare the ratios, "
        "which are taken within a round).",
        "",
        "| meta-batch | round | " + " | ".join(f"{i} tasks/s (sys %)" for i in impls)
        + " | fewshot / learn2learn | fewshot / learn2learn+malloc |",
        "|---|---|" + "---|" * (len(impls) + 2),
    ]
    ratios: dict[tuple[int, str], list[float]] = {}
    for round_, batch, result in rows:
        cells = []
        for impl in impls:
            r = result[impl]
            sys_share = 100 * r["sys_s"] / max(r["user_s"] + r["sys_s"], 1e-9)
            cells.append(f"{r['tasks_per_s']:.3f} ({sys_share:.0f}%)")
        ratio_cells = []
        for ref in ("learn2learn", "learn2learn+malloc"):
            if "fewshot" in result and ref in result:
                ratio = result["fewshot"]["tasks_per_s"] / result[ref]["tasks_per_s"]
                ratios.setdefault((batch, ref), []).append(ratio)
                ratio_cells.append(f"{ratio:.2f}x")
            else:
                ratio_cells.append("-")
        lines.append(f"| {batch} | {round_} | " + " | ".join(cells + ratio_cells) + " |")
    lines += ["", "Median ratio over rounds:", ""]
    for (batch, ref), values in sorted(ratios.items()):
        lines.append(f"- meta-batch {batch}: fewshot / {ref} = "
                     f"{statistics.median(values):.2f}x ({len(values)} rounds)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
