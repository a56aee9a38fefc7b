"""Episodes per second from the decoded cache on the GPU, against the cache on the CPU.

experiments/bench_cache.py measures the CPU cache against per-episode decoding on real
images; this one measures where meta-train puts the cache on a GPU. 5-way 5-shot
15-query episodes at 84 px (bench_cache.py's shape), one and four episodes per batch,
from generated images (random pixels: gathering does not depend on them) decoded once
into the cache by `cached_array`:

- `cpu`: gathered from the memory-mapped cache and normalised on the CPU (one thread,
  as bench_cache.py), then moved to the GPU as a training step receives it;
- `gpu`: the cache moved to the GPU once (as meta-train places it), episodes gathered
  and normalised there.

    python experiments/bench_cache_gpu.py [--device cuda] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshot.data.cache import as_tensor, cached_array
from fewshot.data.episodes import EpisodeSampler, TensorEpisodes
from fewshot.data.images import Normalize

WAYS, SHOTS, QUERIES, SIZE = 5, 5, 15, 84


def write_images(root: Path, classes: int, per_class: int) -> tuple[list[Path], np.ndarray]:
    def work(c: int) -> list[Path]:
        rng = np.random.default_rng(c)
        folder = root / f"c{c:02d}"
        folder.mkdir(parents=True)
        paths = []
        for i in range(per_class):
            path = folder / f"img_{i:04d}.png"
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        return paths

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        per = list(pool.map(work, range(classes)))
    return [p for paths in per for p in paths], np.repeat(np.arange(classes), per_class)


def rate(images: torch.Tensor, labels: np.ndarray, episodes: int, per_batch: int,
         device: torch.device) -> float:
    """Episodes/s delivered as normalised float tensors on `device`."""
    sampler = EpisodeSampler(labels, WAYS, SHOTS, QUERIES, episodes=episodes + per_batch,
                             seed=0, tasks_per_batch=per_batch)
    stream = iter(TensorEpisodes(images, sampler, transform=Normalize()))
    next(stream).to(device)  # first use of each kernel is not counted
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for batch in stream:
        batch = batch.to(device)
        assert batch.support.dtype == torch.float32 and batch.support.device.type == device.type
    sync()
    return episodes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--out", type=Path, help="write the table here (Markdown)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = write_images(Path(tmp) / "images", args.classes, args.per_class)
        start = time.perf_counter()
        cache = as_tensor(cached_array(paths, SIZE, directory=Path(tmp) / "cache", quiet=True))
        build = time.perf_counter() - start
        on_device = cache.to(device) if device.type == "cuda" else None
        for per_batch in (1, 4):
            row = {"per_batch": per_batch,
                   "cpu": rate(cache, labels, args.episodes, per_batch, device)}
            if on_device is not None:
                row["gpu"] = rate(on_device, labels, args.episodes, per_batch, device)
            rows.append(row)
            print(row, flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [
        f"# Episodes per second from the decoded cache ({WAYS}-way {SHOTS}-shot {QUERIES}-query,"
        f" {SIZE} px)", "",
        f"{len(paths)} generated images in {args.classes} classes, cache built once in "
        f"{build:.1f} s; {args.episodes} episodes timed per row, delivered normalised (float32)"
        f" on {args.device} ({name}). `cpu`: gathered and normalised on one CPU thread, then "
        "moved; `gpu`: the cache on the GPU, gathered and normalised there.", "",
        "| episodes per batch | cache on the CPU, episodes/s | cache on the GPU, episodes/s |"
        " ratio |", "|---:|---:|---:|---:|",
    ]
    for r in rows:
        gpu = r.get("gpu")
        lines.append(f"| {r['per_batch']} | {r['cpu']:.0f} | "
                     + (f"{gpu:.0f} | {gpu / r['cpu']:.1f}x |" if gpu else "- | - |"))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
