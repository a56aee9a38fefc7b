"""Rewrite a run's prototypes.safetensors with this fewshot version's contents (the base
subset that `method.power` needs), from the run's own weights and task, exactly as the
end of pretrain or meta-train writes it.

    python experiments/refresh_prototypes.py experiments/runs/wbc-v1

`--domain-only` adds just the out-of-domain statistics (fewshot.ood), fitted on the base
features the file already stores, and leaves every other tensor as it is; no image is
read (how the shipped blood-v1 got them):

    python experiments/refresh_prototypes.py --domain-only fewshot/resources/models/blood-v1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from fewshot.assembly import load_model, model_transform
from fewshot.data.cache import load_split_images
from fewshot.data.tasks import load_task
from fewshot.device import pick_device
from fewshot.ood import fit_domain
from fewshot.run import RunDir
from fewshot.train.loop import base_prototypes
from fewshot.train.meta_train import PROTOTYPE_IMAGES_PER_CLASS
from fewshot.train.pretrain import PROTOTYPES_PER_CLASS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--domain-only", action="store_true",
                        help="add the out-of-domain statistics from the stored base features")
    args = parser.parse_args()
    run = RunDir(args.run)
    if args.domain_only:
        stored = run.load_prototypes()
        if stored.base_features is None:
            raise SystemExit(f"{run.prototypes_path} stores no base features: refresh it whole")
        stored.domain = fit_domain(stored.base_features)
        run.save_prototypes(stored)
        print(f"wrote {run.prototypes_path}: domain statistics from "
              f"{len(stored.base_features)} base features, threshold "
              f"{float(stored.domain['domain_threshold']):.3f}")
        return
    meta = run.read_meta()
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    task = load_task(config["data"]["task"])
    images, data = load_split_images(task, "base", meta.image_size)
    head, _ = load_model(run)
    per_class = PROTOTYPES_PER_CLASS if meta.kind == "pretrain" else PROTOTYPE_IMAGES_PER_CLASS
    prototypes = base_prototypes(head.encoder, images, data, model_transform(meta),
                                 pick_device("auto"), per_class)
    run.save_prototypes(prototypes)
    print(f"wrote {run.prototypes_path} ({len(prototypes.base_features)} base features)")


if __name__ == "__main__":
    main()
