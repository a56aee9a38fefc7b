"""Rewrite a run's prototypes.safetensors with this fewshot version's contents (the base
subset that `method.power` needs), from the run's own weights and task, exactly as the
end of pretrain or meta-train writes it.

    python experiments/refresh_prototypes.py experiments/runs/wbc-v1

`--stages`/`--dihedral` give the run another embedding (fewshot.models.embedding): they
are written into model.json and the base statistics are computed on those features.
`--out DIR` writes a copy (weights, model.json, new prototypes) and leaves the run as it
is; `--task` names the task when the folder has no config.yaml (a shipped model). How the
shipped blood-v1 got the embedding chosen on val (experiments/select_embedding.py):

    python experiments/refresh_prototypes.py fewshot/resources/models/blood-v1 \
        --task tasks/blood-rare-rbc-trainval.yaml --stages layer3 layer4 --dihedral

`--domain-only` adds just the out-of-domain statistics (fewshot.ood), fitted on the base
features the file already stores, and leaves every other tensor as it is; no image is
read:

    python experiments/refresh_prototypes.py --domain-only fewshot/resources/models/blood-v1
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

from fewshot.assembly import model_transform
from fewshot.data.cache import load_split_images
from fewshot.data.tasks import load_task
from fewshot.device import pick_device
from fewshot.models import build_backbone
from fewshot.models.embedding import EmbeddingSpec
from fewshot.ood import fit_domain
from fewshot.run import RunDir
from fewshot.schema import FORMAT_VERSION, Prototypes
from fewshot.train.loop import base_prototypes
from fewshot.train.meta_train import PROTOTYPE_IMAGES_PER_CLASS
from fewshot.train.pretrain import PROTOTYPES_PER_CLASS


def run_prototypes(run: RunDir, task_path: Path | None, spec: EmbeddingSpec,
                   quiet: bool = False) -> Prototypes:
    """Base statistics of the run's encoder read through `spec`, on its task's base split."""
    meta = run.read_meta()
    if task_path is None:
        config = yaml.safe_load((run.path / "config.yaml").read_text())
        task_path = Path(config["data"]["task"])
    task = load_task(task_path)
    images, data = load_split_images(task, "base", meta.image_size, quiet=quiet)
    encoder = build_backbone(meta.backbone, image_size=meta.image_size, **meta.backbone_args)
    weights = run.load_weights()
    encoder.load_state_dict({k.removeprefix("encoder."): v.float() for k, v in weights.items()
                             if k.startswith("encoder.")})
    per_class = PROTOTYPES_PER_CLASS if meta.kind == "pretrain" else PROTOTYPE_IMAGES_PER_CLASS
    return base_prototypes(encoder.eval(), images, data, model_transform(meta),
                           pick_device("auto"), per_class, spec)


def with_embedding(run: RunDir, out: Path | None, spec: EmbeddingSpec,
                   task_path: Path | None, quiet: bool = False) -> RunDir:
    """The run (or its copy in `out`) with `spec` in model.json and prototypes of it."""
    prototypes = run_prototypes(run, task_path, spec, quiet)
    meta = run.read_meta()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "config.yaml"):
            if (run.path / name).is_file():
                shutil.copy(run.path / name, out / name)
        run = RunDir(out)
    meta.embedding = spec
    meta.format_version = FORMAT_VERSION  # a field older versions do not know
    run.save_prototypes(prototypes)
    meta.write(run.path / "model.json")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--domain-only", action="store_true",
                        help="add the out-of-domain statistics from the stored base features")
    parser.add_argument("--task", type=Path, help="the run's task (default: its config.yaml)")
    parser.add_argument("--stages", nargs="*", help="encoder modules pooled and concatenated "
                        "(none: the encoder's output); default: the run's embedding")
    parser.add_argument("--dihedral", action=argparse.BooleanOptionalAction,
                        help="average over the 8 flips and rotations; default: the run's")
    parser.add_argument("--out", type=Path, help="write a copy here instead")
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
    current = run.read_meta().embedding
    spec = EmbeddingSpec(stages=current.stages if args.stages is None else args.stages,
                         dihedral=current.dihedral if args.dihedral is None else args.dihedral)
    done = with_embedding(run, args.out, spec, args.task)
    stored = done.load_prototypes()
    print(f"wrote {done.prototypes_path} (embedding: {spec.describe()}, "
          f"{stored.base_mean.shape[0]}-d, {len(stored.base_features)} base features)")


if __name__ == "__main__":
    main()
