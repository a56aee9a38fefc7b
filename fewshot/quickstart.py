"""The model to adapt when none is named: `runs/latest`, else the shipped quickstart
model, trained first. Above both training and adapt, so neither starts the other."""

from __future__ import annotations

import sys

from fewshot.data.files import shipped_model
from fewshot.run import RUNS, RunDir, resolve_run

SHIPPED = "blood-v1"
"""The model shipped in the package, used when there is no `runs/latest`."""


def quickstart_run(quiet: bool = False) -> RunDir:
    """`runs/latest`, else the model shipped in the package, else the quickstart model,
    trained first (with a message)."""
    if (RUNS / "latest").exists():
        return resolve_run(None)
    if shipped_model(SHIPPED) is not None:
        return resolve_run(SHIPPED)
    from fewshot.config import load_config
    from fewshot.train.meta_train import meta_train

    print("no model at runs/latest: training the quickstart model first "
          "(fewshot meta-train, a few minutes on a CPU)", file=sys.stderr)
    return meta_train(load_config(), quiet=quiet)
