"""Turn a pretrain run's last checkpoint into a run directory of its own, so the model
that training ended with can be scored beside the one validation selected.

    python experiments/export_last_checkpoint.py runs/pretrain-resnet18-blood \\
        runs/pretrain-resnet18-blood-last

Model selection on held-apart classes is the honest protocol; this answers how much it
gave up (or saved) on the novel classes, which it never saw.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fewshot.assembly import load_model
from fewshot.data.images import Normalize, load_split_images
from fewshot.data.tasks import load_task
from fewshot.run import RunDir
from fewshot.train.loop import base_prototypes
from fewshot.train.pretrain import PROTOTYPES_PER_CLASS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    source = RunDir(args.run)
    meta = source.read_meta()
    weights, state = source.load_checkpoint()
    last = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    args.out.mkdir(parents=True, exist_ok=True)
    target = RunDir(args.out)
    position = state["train"]["loop"]["position"]
    meta.metrics = {"val/acc": None, "note": f"last checkpoint of {args.run}, "
                    f"step {position}; not selected by validation"}
    target.save_model(last, meta)
    model, _ = load_model(target)
    task = load_task(Path(__file__).resolve().parent.parent / "tasks" / f"{meta.task}.yaml")
    images, base = load_split_images(task, "base", meta.image_size)
    target.save_prototypes(base_prototypes(model.encoder, images, base, Normalize(),
                                           torch.device("cpu"), PROTOTYPES_PER_CLASS))
    print(f"wrote {args.out} from {args.run}")


if __name__ == "__main__":
    main()
