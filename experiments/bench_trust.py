"""What calibration, the out-of-domain check and the reliability diagram cost `fewshot adapt`.

`fewshot adapt --shots 5` on the shipped sample (3 classes, 60 images each: 15 support,
165 held out and scored), as a user runs it: a fresh process each time, Python and torch
import included, timed with and without `--no-calibrate` (the out-of-domain check and
the picture run in both), interleaved, median of the repeats. Models: the quickstart
model (trained here first into a temporary folder unless `--run` names one) and the
shipped blood-v1 (ResNet-18). Target: under 10 s for the quickstart model.

    python experiments/bench_trust.py [--run RUN_DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results" / "bench_trust.md"
TARGET_S = 10.0


def fewshot(*args: str, cwd: Path) -> float:
    env = {**os.environ, "WANDB_MODE": "offline"}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "fewshot", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="quickstart run directory (else trained)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        load_before = os.getloadavg()[0]
        if args.run is None:
            print("training the quickstart model (fewshot meta-train, no arguments)...")
            train_s = fewshot("meta-train", "--no-wandb", "--quiet", "--out", "quick",
                              cwd=work)
            run = work / "quick"
        else:
            train_s, run = None, args.run.resolve()
        fewshot("data", "sample", "sample", cwd=work)
        models = {"quickstart": str(run), "blood-v1": "blood-v1"}
        variants = {"calibrated": [], "--no-calibrate": ["--no-calibrate"]}
        times: dict[tuple[str, str], list[float]] = {}
        for repeat in range(args.repeats):
            for model_name, model in models.items():
                for variant, extra in variants.items():
                    out = f"adapted-{model_name}-{repeat}-{len(extra)}"
                    seconds = fewshot("adapt", "--shots", "5", "sample", "--model", model,
                                      "--out", out, "--no-wandb", "--quiet", *extra, cwd=work)
                    times.setdefault((model_name, variant), []).append(seconds)
                    print(f"{model_name:10s} {variant:15s} {seconds:6.2f} s", flush=True)
        doc = json.loads((work / "adapted-quickstart-0-0" / "adapted.json").read_text())
        load_after = os.getloadavg()[0]
    lines = ["# `fewshot adapt --shots 5`: the cost of calibration, the out-of-domain check "
             "and reliability.png", "",
             "The shipped sample (3 classes x 60 images: 15 support, 165 held out and "
             "scored), a fresh process per call (imports included), interleaved; median of "
             f"{args.repeats} (min-max). The out-of-domain check and the picture run in "
             "both variants; `--no-calibrate` skips the k-fold refits.", "",
             f"Machine: {os.cpu_count()} CPU cores, {platform.platform()}, torch "
             f"{torch.__version__}, {torch.get_num_threads()} threads; load average "
             f"(1-min) {load_before:.2f} before, {load_after:.2f} after.", "",
             "| model | variant | median s | min s | max s | target s | met |",
             "|---|---|---:|---:|---:|---:|---|"]
    for (model_name, variant), values in times.items():
        median = statistics.median(values)
        target = TARGET_S if model_name == "quickstart" else None
        met = "-" if target is None else ("yes" if median < target else "no")
        lines.append(f"| {model_name} | {variant} | {median:.2f} | {min(values):.2f} | "
                     f"{max(values):.2f} | {target or '-'} | {met} |")
    c = doc["calibration"]
    lines += ["", f"Quickstart model (`{doc['method']}`"
              + (f", trained in {train_s / 60:.1f} min" if train_s else "")
              + f"): T = {c['temperature']:.3g} ({c['fit']}, {c['folds']} folds), held-out "
              f"ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f}, Brier "
              f"{c['brier_before']:.3f} -> {c['brier_after']:.3f}; out of domain: "
              f"{doc['domain']['out_of_domain']}.", ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
