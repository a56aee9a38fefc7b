"""The quickstart sample shipped in the package (PBC white-cell crops, CC BY 4.0).

`fewshot data sample DIR` writes its novel classes as a plain folder, the input of
`fewshot adapt`, so the README's main job runs on a fresh machine without any download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fewshot.data.folders import list_class_files
from fewshot.data.tasks import load_task
from fewshot.errors import UsageError

QUICKSTART_TASK = "quickstart"


def write_sample(folder: str | Path, force: bool = False) -> dict[str, int]:
    """Copy the quickstart task's novel classes to `folder/<class>/`; images per class."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError("not a folder", folder, "pass a new or empty folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise UsageError("folder is not empty", folder,
                         "pass a new or empty folder, or --force to write into it")
    task = load_task(QUICKSTART_TASK, data_root=_sample_root())
    written: dict[str, int] = {}
    for qualified in task.classes("novel"):
        name = qualified.partition("/")[2]
        images, _ = list_class_files(task.class_dir(qualified))
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copyfile(image, target / image.name)
        written[name] = len(images)
    return written


def _sample_root() -> Path:
    """The packaged sample (the quickstart task's own data root), whatever FEWSHOT_DATA says."""
    from fewshot.data.files import packaged

    return packaged("sample")
