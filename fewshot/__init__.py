"""fewshot: few-shot and meta-transfer learning for medical images.

    model = fewshot.load("runs/latest")              # a trained run directory
    adapted = model.adapt("new_disease/", shots=5)   # new classes from a few images each
    adapted.predict(["image.png", "folder/"])        # one record per image

Heavy modules (torch, the models) are imported on first use, so `import fewshot` is light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fewshot.version import __version__

if TYPE_CHECKING:
    from fewshot.adapt import BaseModel
    from fewshot.adapted import Adapted

__all__ = ["__version__", "load"]


def load(path: str | Path | None = None) -> BaseModel | Adapted:
    """A run directory or shipped model name such as `"blood-v1"` (to adapt), or an
    adapted model folder (to predict with).

    No path: `runs/latest`, else the shipped blood-v1 (the quickstart model is trained
    first only in a package that ships no model).
    """
    if path is not None and (Path(path) / "adapted.json").is_file():
        from fewshot.adapted import Adapted

        return Adapted.load(path)
    from fewshot.adapt import BaseModel

    if path is None:
        from fewshot.quickstart import quickstart_run

        return BaseModel(quickstart_run())
    return BaseModel(path)
