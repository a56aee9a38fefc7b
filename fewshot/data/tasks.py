"""Declarative tasks: dataset roots, image size, and the base/val/novel class splits.

A task file is YAML:

    name: blood-rare-rbc
    image_size: 64
    data_root: ../../shared/data     # relative to this file; FEWSHOT_DATA / --data-root win
    datasets:
      pbc: {path: pbc-blood-wbc}
      chula: {path: chula-rbc, group: '^(\\d+)_'}
      # exclude: packaged:sample      # leave out files that a shipped sample also holds
    splits:
      base:  [pbc/eosinophil, chula/00_normal, ...]
      val:   [pbc/basophil, ...]      # optional; at least 2 classes when present
      novel: [chula/01_macrocyte, ...]

Classes are named `<dataset>/<class folder>`, so two datasets may share folder names.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fewshot.data.files import packaged, sha256_file
from fewshot.data.folders import list_class_files
from fewshot.errors import DataError, UsageError

SPLITS = ("base", "val", "novel")


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    group: str | None = None
    """Regex over the file name whose first group names the patient/source, or a CSV path."""
    exclude: str | None = None
    """A folder in the same `<class>/<file>` layout (relative to the task file, or
    `packaged:sample` for the package's quickstart sample): files with the same class
    folder and file name are left out of this dataset, e.g. so that a model never trains
    on the images of a demo sample it ships beside."""


class SplitSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: list[str]
    val: list[str] = Field(default_factory=list)
    novel: list[str] = Field(default_factory=list)

    @field_validator("val")
    @classmethod
    def _val_size(cls, value: list[str]) -> list[str]:
        if len(value) == 1:
            raise ValueError("val needs at least 2 classes when present")
        return value


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    image_size: int = Field(ge=8)
    data_root: str | None = None
    datasets: dict[str, DatasetSpec]
    splits: SplitSpec
    description: str | None = None

    @field_validator("datasets", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"path": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


@dataclass
class SplitData:
    """The images of one split: paths, labels 0..C-1, class names and optional groups."""

    classes: list[str]
    paths: list[Path]
    labels: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Task:
    spec: TaskSpec
    source: Path
    roots: dict[str, Path] = field(default_factory=dict)
    excluded: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    """Per dataset, the (class folder, file name) pairs its `exclude` folder holds."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def classes(self, split: str) -> list[str]:
        return list(getattr(self.spec.splits, split))

    def class_dir(self, qualified: str) -> Path:
        dataset, _, folder = qualified.partition("/")
        return self.roots[dataset] / folder

    def split(self, split: str) -> SplitData:
        """Index the images of a split (sorted, so the same on every machine)."""
        classes = self.classes(split)
        if not classes:
            raise UsageError(f"task has no '{split}' classes", self.source, f"add splits.{split}")
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            images, _ = list_class_files(self.class_dir(name))
            dataset, _, folder = name.partition("/")
            if self.excluded.get(dataset):
                images = [p for p in images if (folder, p.name) not in self.excluded[dataset]]
            if not images:
                raise DataError(
                    "class folder has no images", self.class_dir(name), "add images or drop it"
                )
            paths.extend(images)
            labels.extend([label] * len(images))
        data = SplitData(classes, paths, np.asarray(labels, dtype=np.int64))
        data.groups = self.groups_for(data)
        return data

    def check_held_apart(self, by_content: bool = False) -> None:
        """No file of a training split (base, val) is also a novel file: exit 2 naming it.
        By real path (the same file linked under two class folders) always, which opens no
        file, so training never reads a novel image; with `by_content` also a byte-identical
        copy in val (sha256), which evaluate checks, since it reads the novel images anyway
        (val is small; hashing every base image would add seconds to each evaluation, and
        `fewshot data check` finds copies across a whole folder)."""
        novel_files = [p for name in self.classes("novel")
                       for p in list_class_files(self.class_dir(name))[0]]
        if not novel_files:
            return
        novel = {os.path.realpath(p): p for p in novel_files}
        training = [(split, path) for split in ("base", "val") for name in self.classes(split)
                    for path in list_class_files(self.class_dir(name))[0]]
        for split, path in training:
            if os.path.realpath(path) in novel:
                raise UsageError(f"a file is in both the '{split}' and 'novel' splits",
                                 f"{path} = {novel[os.path.realpath(path)]}",
                                 "novel images must never be trained on: remove "
                                 "the link or move the file")
        if not by_content:
            return
        val = [path for split, path in training if split == "val"]
        with ThreadPoolExecutor() as pool:
            digests = dict(zip(pool.map(sha256_file, novel_files), novel_files, strict=True))
            for path, digest in zip(val, pool.map(sha256_file, val), strict=True):
                if digest in digests:
                    raise UsageError("a file is in both the 'val' and 'novel' splits "
                                     "(the same bytes)", f"{path} = {digests[digest]}",
                                     "novel images must never be trained on: remove one "
                                     "of the copies")

    def groups_for(self, data: SplitData) -> np.ndarray | None:
        """Group ids per image from each dataset's `group` regex (None: no grouping)."""
        from fewshot.data.groups import group_ids  # local: groups are optional

        specs = {name: spec.group for name, spec in self.spec.datasets.items()}
        if not any(specs.values()):
            return None
        datasets = [name.partition("/")[0] for name in data.classes]
        keys = [
            (datasets[label], specs[datasets[label]])
            for label in data.labels.tolist()
        ]
        return group_ids(data.paths, keys, self.roots)


def excluded_files(folder: str, source: Path) -> set[tuple[str, str]]:
    """(class folder, file name) of every file under an `exclude` folder."""
    path = packaged(folder.removeprefix("packaged:")) if folder.startswith("packaged:") \
        else source.parent / folder
    if not path.is_dir():
        raise UsageError("exclude folder not found", f"{source}: {folder}",
                         "give a folder of class folders, relative to the task file, "
                         "or packaged:sample")
    return {(f.parent.name, f.name) for f in path.glob("*/*") if f.is_file()}


def resolve_task_path(task: str | Path, relative_to: Path | None = None) -> Path:
    """A task path relative to the config file's folder, else as given, else a task
    shipped in the package by name."""
    path = Path(task)
    candidates = [path]
    if relative_to is not None and not path.is_absolute():
        candidates.insert(0, relative_to / path)
    if path.suffix == "":
        candidates.append(packaged(f"tasks/{task}.yaml"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UsageError("task file not found", task, "pass a tasks/*.yaml file or 'quickstart'")


def load_task(task: str | Path, data_root: str | Path | None = None,
              relative_to: Path | None = None) -> Task:
    """Read, validate and check a task against the disk (exit 2 on any mismatch)."""
    source = resolve_task_path(task, relative_to)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        spec = TaskSpec.model_validate(raw)
    except yaml.YAMLError:
        raise UsageError("task file is not valid YAML", source, "fix its syntax") from None
    except (UnicodeDecodeError, OSError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise UsageError(f"cannot read task file ({reason})", source,
                         "save it as a UTF-8 YAML file") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"invalid task file {source}", key, err["msg"]) from None

    seen: dict[str, str] = {}
    for split in SPLITS:
        for name in getattr(spec.splits, split):
            if name in seen:
                raise UsageError(
                    f"class is in both '{seen[name]}' and '{split}' splits",
                    f"{source}: {name}", "splits must be disjoint",
                )
            seen[name] = split
            dataset = name.partition("/")[0]
            if "/" not in name or dataset not in spec.datasets:
                raise UsageError(
                    "class must be named <dataset>/<folder> with a dataset of the task",
                    f"{source}: {name}", f"datasets are {sorted(spec.datasets)}",
                )

    shipped = source.resolve().is_relative_to(packaged("tasks").resolve())
    # a task shipped in the package names its own sample: no data root applies to it
    root = None if shipped else (data_root or os.environ.get("FEWSHOT_DATA"))
    if root is None:
        root = (source.parent / spec.data_root) if spec.data_root else source.parent
    roots = {name: Path(root) / ds.path for name, ds in spec.datasets.items()}
    task = Task(spec=spec, source=source, roots=roots,
                excluded={name: excluded_files(ds.exclude, source) for name, ds
                          in spec.datasets.items() if ds.exclude})
    for name in seen:
        if not task.class_dir(name).is_dir():
            raise UsageError(
                "task names a class that is not on disk", task.class_dir(name),
                "set --data-root / FEWSHOT_DATA or fix the class name",
            )
    return task
