"""Speed of `fewshot adapt`: 5 classes x 5 shots, model load + adaptation + writing the
adapted folder, without scoring held-out images (targets: < 5 s for protonet and
simpleshot, < 30 s for finetune, on a 2-core CPU).

Real images (the five rare Chula red-cell classes, 5 files each, linked into a temporary
folder) and realistic encoders at 64 px with random weights (speed does not depend on
the weights): Conv4 (64 channels) and ResNet-12. Methods are timed interleaved, in the
same process, with the torch default thread count and with one thread, so that load
from other processes on the machine falls on all of them alike. Also timed once per
method: the whole `fewshot adapt` command in a fresh process (Python and torch import
included), as a user meets it.

    nice -n 10 python experiments/bench_adapt.py [--data-root DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fewshot
from fewshot.data.images import IMAGENET_MEAN, IMAGENET_STD
from fewshot.methods import build_head
from fewshot.models import build_backbone
from fewshot.run import RunDir
from fewshot.schema import ModelMeta, Prototypes

ROOT = Path(__file__).resolve().parents[1]
RARE = ["01_macrocyte", "02_microcyte", "07_teardrop", "08_burr_cell", "09_schistocyte"]
METHODS = ["protonet", "simpleshot", "finetune"]
TARGET_S = {"protonet": 5.0, "simpleshot": 5.0, "finetune": 30.0}
BACKBONES = {"conv4": {}, "resnet12": {}}
SIZE, SHOTS = 64, 5


def write_run(path: Path, backbone: str) -> Path:
    """A run directory as meta-train writes it, with random weights."""
    torch.manual_seed(0)
    encoder = build_backbone(backbone, image_size=SIZE, **BACKBONES[backbone])
    head = build_head("protonet", encoder)
    path.mkdir(parents=True)
    run = RunDir(path)
    dim = encoder.feature_dim
    run.save_model(head.state_dict(), ModelMeta(**{
        "kind": "meta-train", "task": "benchmark", "backbone": backbone,
        "backbone_args": BACKBONES[backbone], "image_size": SIZE,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "feature_dim": dim, "head": "protonet", "head_options": {},
        "classes": {"base": ["b0", "b1"], "val": [], "novel": RARE}, "metrics": {}}))
    run.save_prototypes(Prototypes(["b0", "b1"], torch.randn(2, dim), torch.randn(dim)))
    return path


def link_folder(source: Path, target: Path) -> Path:
    """5 images of each rare class, linked (the shared data is never copied)."""
    for name in RARE:
        files = sorted(p for p in (source / name).iterdir() if p.is_file())[:SHOTS]
        (target / name).mkdir(parents=True)
        for file in files:
            (target / name / file.name).symlink_to(file)
    return target


def time_adapt(run: Path, folder: Path, method: str, out: Path) -> float:
    start = time.perf_counter()
    fewshot.load(run).adapt(folder, shots=SHOTS, method=method, out=out, score=False)
    return time.perf_counter() - start


def time_cli(run: Path, folder: Path, method: str, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fewshot", "adapt", "--shots", str(SHOTS),
                    str(folder), "--model", str(run), "--method", method, "--out", str(out),
                    "-q"], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path(
        os.environ.get("FEWSHOT_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results"
                        / "bench_adapt.md")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = link_folder(args.data_root / "chula-rbc", tmp / "new_disease")
        runs = {name: write_run(tmp / f"run-{name}", name) for name in BACKBONES}
        time_adapt(runs["conv4"], folder, "protonet", tmp / "warm")  # imports, first call
        for backbone, run in runs.items():
            for threads in sorted({default_threads, 1}, reverse=True):
                torch.set_num_threads(threads)
                times: dict[str, list[float]] = {m: [] for m in METHODS}
                for _ in range(args.repeats):  # interleaved: load falls on all alike
                    for method in METHODS:
                        times[method].append(time_adapt(run, folder, method, tmp / method))
                        print(f"  {backbone} threads={threads} {method}: "
                              f"{times[method][-1]:.2f}s", flush=True)
                for method in METHODS:
                    rows.append((backbone, threads, method, statistics.median(times[method]),
                                 min(times[method]), max(times[method])))
                    print(f"{backbone:9s} threads={threads} {method:10s} median "
                          f"{rows[-1][3]:6.2f}s  (min {rows[-1][4]:.2f}, max {rows[-1][5]:.2f})",
                          flush=True)
        torch.set_num_threads(default_threads)
        cli = {m: time_cli(runs["conv4"], folder, m, tmp / f"cli-{m}") for m in METHODS}
    load_after = os.getloadavg()

    lines = [
        "# `fewshot adapt` speed: 5 classes x 5 shots",
        "",
        "Model load + adaptation + writing the adapted folder, held-out scoring off "
        f"(`fewshot.load(run).adapt(folder, shots=5, method=..., out=..., score=False)`), "
        f"timed in one process after a warm-up call; median of {args.repeats} interleaved "
        "repeats (min-max). Images: 5 files of each rare Chula class (01_macrocyte, "
        "02_microcyte, 07_teardrop, 08_burr_cell, 09_schistocyte), 64 px. Encoders with "
        "random weights (speed does not depend on them): Conv4 (64 channels, 1600-d "
        "features), ResNet-12 (640-d).",
        "",
        f"Machine: {os.cpu_count()} CPU cores, no GPU, {platform.platform()}, torch "
        f"{torch.__version__}. **Shared with other jobs during the run**: load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after (1-min), on "
        f"{os.cpu_count()} cores, so absolute times are pessimistic; compare rows.",
        "",
        "| encoder | torch threads | method | median s | min s | max s | target s | met |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for backbone, threads, method, med, low, high in rows:
        ok = "yes" if med < TARGET_S[method] else "no"
        lines.append(f"| {backbone} | {threads} | {method} | {med:.2f} | {low:.2f} | "
                     f"{high:.2f} | {TARGET_S[method]:.0f} | {ok} |")
    lines += [
        "",
        "Whole command in a fresh process (`python -m fewshot adapt --shots 5 DIR --model "
        f"RUN --method M --out OUT -q`, Conv4, {default_threads} threads; includes starting "
        "Python and importing torch and torchvision), one run each:",
        "",
        "| method | seconds |",
        "|---|---:|",
    ] + [f"| {m} | {s:.2f} |" for m, s in cli.items()] + [""]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print()
    print(text)


if __name__ == "__main__":
    main()
