"""Episodes per second delivered as normalised float tensors: decoded cache vs. decoding.

5-way 5-shot 15-query episodes at 84 px on the rare Chula RBC classes (01, 02, 07, 08,
09), twice: on the 64 px crops as they are, and on the same images saved at 512 px (a
copy made in a temporary folder). Both paths are measured side by side in one run:

- per-episode decoding: torchvision ImageFolder (Resize 84, ToTensor, Normalize) and
  a DataLoader with 2 workers over an easyfsl-style task sampler (one batch = one task);
- cache: fewshot's decoded uint8 cache (built once, timed separately), episodes gathered
  by `TensorEpisodes` and normalised by `Normalize` in one pass.

    python experiments/bench_cache.py [--root ../shared/data/chula-rbc]

Prints a table and writes experiments/results/bench_cache.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler
from torchvision import datasets, transforms

from fewshot.data.cache import IMAGENET_MEAN, IMAGENET_STD, Normalize, as_tensor, cached_array
from fewshot.data.episodes import EpisodeSampler, TensorEpisodes
from fewshot.data.folders import scan_folder

CLASSES = ["01_macrocyte", "02_microcyte", "07_teardrop", "08_burr_cell", "09_schistocyte"]
WAYS, SHOTS, QUERIES, SIZE = 5, 5, 15, 84
RESULTS = Path(__file__).resolve().parent / "results"


class TaskSampler(Sampler):
    """easyfsl's TaskSampler: each item is the index list of one N-way (K+Q)-shot task."""

    def __init__(self, labels: list[int], n_way: int, n_shot: int, n_query: int,
                 n_tasks: int) -> None:
        self.n_way, self.n_shot, self.n_query, self.n_tasks = n_way, n_shot, n_query, n_tasks
        self.items_per_label: dict[int, list[int]] = {}
        for item, label in enumerate(labels):
            self.items_per_label.setdefault(label, []).append(item)

    def __len__(self) -> int:
        return self.n_tasks

    def __iter__(self):
        for _ in range(self.n_tasks):
            yield torch.cat([
                torch.tensor(self.items_per_label[label])[
                    torch.randperm(len(self.items_per_label[label]))[: self.n_shot + self.n_query]]
                for label in random.sample(sorted(self.items_per_label), self.n_way)
            ]).tolist()

    def episodic_collate_fn(self, batch):
        """(support, support labels, query, query labels), as easyfsl returns them."""
        images = torch.stack([x[0] for x in batch]).reshape(
            self.n_way, self.n_shot + self.n_query, *batch[0][0].shape)
        labels = torch.arange(self.n_way).repeat_interleave(self.n_shot + self.n_query)
        labels = labels.reshape(self.n_way, -1)
        support = images[:, : self.n_shot].reshape(-1, *images.shape[2:])
        query = images[:, self.n_shot:].reshape(-1, *images.shape[2:])
        return (support, labels[:, : self.n_shot].flatten(), query,
                labels[:, self.n_shot:].flatten())


def copy_at(root: Path, target: Path, size: int) -> Path:
    """The five classes saved again at `size` px (JPEG), in the same layout."""
    jobs = []
    for name in CLASSES:
        (target / name).mkdir(parents=True, exist_ok=True)
        jobs += [(p, target / name / p.name) for p in sorted((root / name).iterdir())]

    def work(job: tuple[Path, Path]) -> None:
        with Image.open(job[0]) as image:
            image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
                job[1], quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(work, jobs))
    return target


def subset(root: Path, folder: Path) -> Path:
    """A folder holding only the five classes (symlinks), for ImageFolder."""
    for name in CLASSES:
        (folder / name).symlink_to(root / name, target_is_directory=True)
    return folder


def decoding_path(root: Path, episodes: int, workers: int) -> float:
    dataset = datasets.ImageFolder(str(root), transform=transforms.Compose([
        transforms.Resize((SIZE, SIZE)), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    sampler = TaskSampler(dataset.targets, WAYS, SHOTS, QUERIES, episodes + 2)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        collate_fn=sampler.episodic_collate_fn)
    it = iter(loader)
    next(it), next(it)  # worker start-up is not counted
    start = time.perf_counter()
    for support, _, query, _ in it:
        assert support.dtype == torch.float32 and query.shape[0] == WAYS * QUERIES
    return episodes / (time.perf_counter() - start)


def cache_path(root: Path, episodes: int, cache: Path) -> tuple[float, float]:
    folder = scan_folder(root, CLASSES)
    start = time.perf_counter()
    images = as_tensor(cached_array(folder.paths, SIZE, directory=cache, quiet=True))
    build = time.perf_counter() - start
    sampler = EpisodeSampler(folder.labels, WAYS, SHOTS, QUERIES, episodes=episodes, seed=0)
    stream = TensorEpisodes(images, sampler, transform=Normalize())
    next(iter(stream))
    start = time.perf_counter()
    for batch in stream:
        assert batch.support.dtype == torch.float32
    return episodes / (time.perf_counter() - start), build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "chula-rbc"
    parser.add_argument("--root", type=Path, default=default)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--decode-episodes", type=int, default=40)
    parser.add_argument("--cache-episodes", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    random.seed(0)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sets = {"64 px crops": subset(args.root, tmp_path / "crops")}
        start = time.perf_counter()
        sets["same images at 512 px"] = copy_at(args.root, tmp_path / "big", 512)
        print(f"512 px copy written in {time.perf_counter() - start:.0f} s")
        for name, root in sets.items():
            decode = decoding_path(root, args.decode_episodes, args.workers)
            cached, build = cache_path(root, args.cache_episodes, tmp_path / "cache")
            rows.append({"images": name, "decode_eps": round(decode, 1),
                         "cache_eps": round(cached, 1), "ratio": round(cached / decode, 1),
                         "cache_build_s": round(build, 1)})
            print(rows[-1])
    n_images = len(scan_folder(args.root, CLASSES))
    lines = [
        "# Episodes per second as normalised float tensors (5-way 5-shot 15-query, 84 px)", "",
        f"Rare Chula RBC classes ({', '.join(CLASSES)}; {n_images} images). Per-episode "
        f"decoding: torchvision ImageFolder + DataLoader ({args.workers} workers) + "
        "easyfsl-style task sampler. Cache: decoded uint8 cache + TensorEpisodes + "
        "Normalize. Measured side by side in one run, "
        f"{args.decode_episodes} / {args.cache_episodes} episodes, on a shared 2-core CPU.", "",
        "| images | decoding, episodes/s | cache, episodes/s | ratio | cache build (once), s |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['images']} | {r['decode_eps']} | {r['cache_eps']} | {r['ratio']}x | "
              f"{r['cache_build_s']} |" for r in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_cache.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (RESULTS / "bench_cache.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
