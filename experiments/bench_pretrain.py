"""Supervised pretraining speed: `fewshot pretrain` against a plain torchvision loop.

Both train the same encoder (fewshot's `--backbone`) and a linear layer over the base
classes with Adam, cross-entropy with label smoothing 0.1, flips, batch 128 and, on CUDA,
float16 autocast with a gradient scaler and channels-last: the same step, fed two ways.

- `fewshot pretrain`, run as a user runs it: the split decoded once into the uint8 cache
  (its build is timed apart), the cache on the GPU, batches gathered and augmented there.
  Images/s from its own metrics (`train/images_per_s`, cumulative since its first step).
- torchvision: `ImageFolder` (decode, `RandomHorizontalFlip`, `RandomVerticalFlip`,
  `ToTensor`, `Normalize`) and a `DataLoader` (`--workers`, pinned memory), every image
  decoded every epoch, as the PyTorch examples do.

Both are timed over the same steps of one epoch after the same `--warmup` steps (cuDNN's
algorithm search, the loader's start-up), on one generated folder: random pixels tinted
by class, saved as JPEG at `--size` px.

    python experiments/bench_pretrain.py --device cuda            # GPU: ~1 minute
    python experiments/bench_pretrain.py --device cpu --size 64 --per-class 300 \
        --backbone resnet18 --backbone 'resnet18:{"maxpool": false}' --backbone resnet12 \
        --workers 2 --out experiments/results/bench_pretrain.md   # the CPU table
    python experiments/bench_pretrain.py --device cpu --per-class 40 --size 32   # a look
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BASE, OTHER = 8, 2
"""Base classes trained on; val and novel classes (the task needs them, nothing trains
on them)."""


def write_folder(root: Path, per_class: int, size: int) -> Path:
    """`root/base/b<i>/*.jpg` and `root/other/{v,n}<i>/*.jpg`, and a task file over them."""
    jobs = [(root / "base" / f"b{c}", c, per_class) for c in range(BASE)]
    jobs += [(root / "other" / f"{kind}{c}", BASE + c, 12) for kind in "vn" for c in range(OTHER)]

    def work(job: tuple[Path, int, int]) -> None:
        folder, c, count = job
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(c)
        tint = np.array([(c * 97) % 256, (c * 53 + 80) % 256, (c * 181 + 160) % 256], np.uint8)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) // 2 + tint // 2
            Image.fromarray(pixels).save(folder / f"img_{i:05d}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(work, jobs))
    task = root / "task.yaml"
    task.write_text(yaml.safe_dump({
        "name": "bench-pretrain", "image_size": size, "data_root": str(root),
        "datasets": {"b": "base", "o": "other"},
        "splits": {"base": [f"b/b{c}" for c in range(BASE)],
                   "val": [f"o/v{c}" for c in range(OTHER)],
                   "novel": [f"o/n{c}" for c in range(OTHER)]},
    }))
    return task


def parse_variant(text: str) -> tuple[str, dict]:
    """`BACKBONE` or `BACKBONE:{JSON backbone_args}`, e.g. `resnet18:{"maxpool": false}`."""
    name, _, extra = text.partition(":")
    return name, (json.loads(extra) if extra else {})


def fewshot_rate(task: Path, args: argparse.Namespace, work: Path, backbone: str,
                 backbone_args: dict) -> tuple[float, float]:
    """(images/s after the warm-up steps, seconds to build the decoded cache)."""
    run = work / f"run-{time.monotonic_ns()}"
    sets = [f"data.task={task}", f"data.cache_dir={work / 'cache'}",
            f"model.backbone={backbone}", f"model.backbone_args={json.dumps(backbone_args)}",
            "train.epochs=1",
            f"train.batch_size={args.batch}", "train.optimizer=adam", "train.lr=0.001",
            f"train.amp={str(args.device == 'cuda').lower()}", "train.val_episodes=5",
            "train.ways=2", "train.shots=1", "train.queries=1", "tracking.wandb=false"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "fewshot", "pretrain", "--quiet", "--no-wandb", "--device",
           args.device, "--out", str(run), *[a for s in sets for a in ("--set", s)]]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"fewshot pretrain failed:\n{out.stderr[-3000:]}")
    total = time.perf_counter() - start
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/images_per_s" in r]
    # the logged rate is cumulative since the first step: seconds to step k = k*B/rate_k
    seconds = {r["step"]: r["step"] * args.batch / r["train/images_per_s"] for r in steps}
    first, last = args.warmup, max(seconds)
    if last <= first:
        raise SystemExit(f"only {last} steps: raise --per-class or lower --warmup")
    rate = (last - first) * args.batch / (seconds[last] - seconds[first])
    return rate, total - seconds[last]


def torchvision_rate(task_root: Path, args: argparse.Namespace, backbone: str,
                     backbone_args: dict) -> float:
    """The same encoder and step on ImageFolder + DataLoader; images/s after warm-up."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from fewshot.data.images import IMAGENET_MEAN, IMAGENET_STD
    from fewshot.models import build_backbone

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dataset = datasets.ImageFolder(str(task_root / "base"), transform=transforms.Compose([
        transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=False,
                        num_workers=args.workers, pin_memory=cuda)
    torch.manual_seed(0)
    encoder = build_backbone(backbone, image_size=args.size, **backbone_args)
    model = nn.Sequential(encoder, nn.Linear(encoder.feature_dim, BASE)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    model.train()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start, seen = 0.0, 0
    for step, (images, labels) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()  # as fewshot does every step (its progress and metrics read it)
        if step == args.warmup:
            sync()
            start, seen = time.perf_counter(), 0
        elif step > args.warmup:
            seen += len(labels)
    sync()
    if not seen:
        raise SystemExit("too few steps: raise --per-class or lower --warmup")
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", action="append", dest="variants",
                        help='encoder to time, as BACKBONE or BACKBONE:{JSON backbone_args}; '
                             'repeat to time several on the same images (default resnet12)')
    parser.add_argument("--size", type=int, default=84, help="image size (px)")
    parser.add_argument("--per-class", type=int, default=1200,
                        help="images per base class (8 classes)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps, both paths")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, help="write the table here (Markdown)")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variants or ["resnet12"]]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        task = write_folder(work / "images", args.per_class, args.size)
        print(f"{BASE * args.per_class} images written in {time.perf_counter() - start:.0f} s",
              flush=True)
        for backbone, extra in variants:
            label = backbone + (f" {json.dumps(extra)}" if extra else "")
            ours, build = fewshot_rate(task, args, work, backbone, extra)
            print(f"{label}: fewshot pretrain {ours:.0f} images/s", flush=True)
            plain = torchvision_rate(work / "images", args, backbone, extra)
            print(f"{label}: torchvision loop {plain:.0f} images/s", flush=True)
            rows.append((label, ours, plain, build))

    cuda = args.device == "cuda"
    device = torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)"
    precision = "float16 autocast + gradient scaler, channels-last" if cuda else "float32"
    first = rows[0][1]
    lines = [
        "# Supervised pretraining speed: fewshot pretrain vs a plain torchvision loop", "",
        f"`python {shlex.join(sys.argv)}`", "",
        f"Encoder + linear layer over {BASE} classes, {args.size} px, batch {args.batch}, Adam,"
        f" cross-entropy with label smoothing 0.1, {precision};"
        f" {BASE * args.per_class} generated JPEG images, one epoch, timed after {args.warmup}"
        f" warm-up steps; device {device}, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads; torchvision DataLoader with {args.workers}"
        f" workers; load average {os.getloadavg()[0]:.2f} at the end.",
        "",
        f"| encoder | fewshot pretrain, images/s | torchvision loop, images/s | ratio |"
        f" time per image vs {rows[0][0]} |",
        "|---|---:|---:|---:|---:|",
        *[f"| {label} | {ours:.0f} | {plain:.0f} | {ours / plain:.2f}x | {first / ours:.1f}x |"
          for label, ours, plain, _ in rows],
        "", "fewshot reads the split's decoded cache (built once per image size, not timed: "
        + ", ".join(f"{b:.1f} s" for *_, b in rows)
        + " with process start-up, model set-up and the end-of-epoch validation); the"
        " torchvision loop decodes every JPEG every epoch.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
