"""Choose on val what feature-based heads read of the encoder (fewshot.models.embedding):
which stages are pooled, and whether features average the 8 flips and rotations.

    python experiments/select_embedding.py [--run experiments/runs/blood-base5] [--episodes 600]

The run must not have trained on the val classes: the default is configs/blood-v1.yaml's
recipe for 5 epochs on blood-rare-rbc's 10 base classes only,

    fewshot pretrain --config configs/blood-v1.yaml --set data.task=../tasks/blood-rare-rbc.yaml \
        --set train.epochs=5 --out experiments/runs/blood-base5 --no-wandb

Every candidate is a copy of the run with that embedding and its own base statistics
(experiments/refresh_prototypes.py), scored with the linear probe (the head the shipped
model is measured with) on the same val episodes, 1- and 5-shot, paired against the
encoder's plain output. The table goes to experiments/results/embedding_selection.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

from refresh_prototypes import with_embedding  # noqa: E402

from fewshot.data.tasks import load_task  # noqa: E402
from fewshot.device import pick_device  # noqa: E402
from fewshot.evaluate import Models, evaluate  # noqa: E402
from fewshot.models.embedding import EmbeddingSpec  # noqa: E402
from fewshot.run import RunDir  # noqa: E402

CANDIDATES = {
    "output": EmbeddingSpec(),
    "output, dihedral": EmbeddingSpec(dihedral=True),
    "layer3+layer4": EmbeddingSpec(stages=["layer3", "layer4"]),
    "layer3+layer4, dihedral": EmbeddingSpec(stages=["layer3", "layer4"], dihedral=True),
    "layer2+layer3+layer4, dihedral": EmbeddingSpec(stages=["layer2", "layer3", "layer4"],
                                                    dihedral=True),
}
OUT = ROOT / "experiments" / "results" / "embedding_selection.md"
PROBES = ["linear-probe", "linear-probe:steps=200", "linear-probe:lr=0.05",
          "linear-probe:temperature=5", "linear-probe:temperature=20",
          "linear-probe:power=0.5"]
"""The probe's default first, then the settings scored against it on the chosen embedding."""


def val_table(models: list[str], heads: list[str], names: list[str], first: str,
              args: argparse.Namespace, cache: Models,
              query_imbalance: float | None = None, queries_column: bool = False) -> list[str]:
    """Table rows of (model, head) pairs on the same val episodes, 1- and 5-shot, each
    paired against the first; queries split by a Dirichlet draw with `query_imbalance`,
    named in a column of their own when `queries_column`."""
    lines = []
    for shots in (1, 5):
        result = evaluate(models, heads, args.task, split="val", shots=shots,
                          episodes=args.episodes, seed=0, device="cpu", cache=cache, quiet=True,
                          query_imbalance=query_imbalance)
        for i, name in enumerate(names):
            acc = result["results"][i]["accuracy"]
            diff = first if i == 0 else \
                "{:+.1f} ± {:.1f}".format(*(100 * result["paired"][i - 1]["accuracy_difference"][k]
                                            for k in ("mean", "ci95")))
            queries = "" if not queries_column else " balanced |" if query_imbalance is None \
                else f" Dirichlet {query_imbalance:g} |"
            lines.append(f"| {name} | {shots} |{queries} {100 * acc['mean']:.1f} ± "
                         f"{100 * acc['ci95']:.1f} | {diff} |")
            print(lines[-1], flush=True)
    return lines


def write_keeping_sections(path: Path, lines: list[str]) -> None:
    """Write `lines` as the head of `path`, keeping the `## ` sections below it (checks on
    novel and the choice, written after a table), which a rerun would otherwise drop."""
    kept = path.read_text(encoding="utf-8").partition("\n## ") if path.is_file() else ("",) * 3
    path.write_text("\n".join(lines) + "\n" + kept[1] + kept[2], encoding="utf-8")


def probe_settings(folder: str, args: argparse.Namespace, cache: Models, started: float,
                   load: float) -> None:
    """Linear-probe settings on one embedding, paired against the default; appended to the
    results file."""
    lines = ["", f"## Linear-probe settings on {args.probe_on}", "",
             f"`python experiments/select_embedding.py --probe-on '{args.probe_on}'`: the same "
             "val episodes, each setting paired against the probe's default.", "",
             "| head | shots | accuracy % | paired vs default |", "|---|---|---|---|"]
    lines += val_table([folder], PROBES, PROBES, "default", args, cache)
    lines += ["", f"{(time.time() - started) / 60:.1f} min, load average {load:.2f} at the "
              "start."]
    with OUT.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"appended to {OUT.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "experiments" / "runs" / "blood-base5")
    parser.add_argument("--task", type=Path, default=ROOT / "tasks" / "blood-rare-rbc.yaml")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--probe-on", choices=list(CANDIDATES),
                        help="instead, score linear-probe settings on this embedding")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    started, load = time.time(), os.getloadavg()[0]
    folders = []
    for name, spec in CANDIDATES.items():
        out = ROOT / "experiments" / "runs" / "embedding-select" / name.replace(", ", "-")
        if not (out / "prototypes.safetensors").is_file():
            with_embedding(RunDir(args.run), out, spec, args.task, quiet=True)
        folders.append(str(out))
    cache = Models(load_task(args.task), "val", 0, pick_device("cpu"), quiet=True)
    if args.probe_on:
        return probe_settings(folders[list(CANDIDATES).index(args.probe_on)], args, cache,
                              started, load)
    lines = [
        "# Embedding selection on val",
        "",
        f"`python experiments/select_embedding.py --run {os.path.relpath(args.run, ROOT)} "
        f"--episodes {args.episodes}`: linear probe, {args.task.stem} val classes, 5-way, "
        f"15 queries, {args.episodes} seeded episodes, paired against the encoder's output "
        "(mean ± 95% CI, points).",
        "",
        "| embedding | shots | accuracy % | paired vs output |",
        "|---|---|---|---|",
    ]
    lines += val_table(folders, ["linear-probe"], list(CANDIDATES), "reference", args, cache)
    lines += ["", f"{(time.time() - started) / 60:.1f} min on {pick_device('cpu')}, torch "
              f"{torch.__version__}, load average {load:.2f} at the start."]
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
