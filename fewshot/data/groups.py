"""Patient / source groups, so one source never feeds both support and query.

A dataset's group key is either a regex over the file name whose first capture group
(or whole match) names the group, e.g. Chula `^(\\d+)_` = the source smear image, or
a CSV file with columns `path,group` (paths relative to the dataset root).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from fewshot.errors import UsageError


def read_group_csv(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise UsageError("group CSV not found", path, "write it with `fewshot data check "
                         "--write-groups` or fix the task's group key")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle)
        if rows.fieldnames is None or not {"path", "group"} <= set(rows.fieldnames):
            raise UsageError("group CSV needs columns path,group", path, "fix its header")
        return {row["path"]: row["group"] for row in rows}


def group_of(path: Path, key: str | None, root: Path, table: dict[str, str] | None) -> str:
    if key is None:
        return f"file:{path}"  # every ungrouped image is its own group
    if table is not None:
        rel = path.relative_to(root).as_posix()
        return table.get(rel, f"file:{path}")
    match = re.search(key, path.name)
    if match is None:
        return f"file:{path}"
    return match.group(1) if match.groups() else match.group(0)


def group_ids(paths: list[Path], keys: list[tuple[str, str | None]],
              roots: dict[str, Path]) -> np.ndarray:
    """Integer group id per image; `keys[i]` is (dataset, group key) of image i."""
    tables: dict[str, dict[str, str]] = {}
    for dataset, key in set(keys):
        if key and key.endswith(".csv"):
            csv_path = Path(key) if Path(key).is_absolute() else roots[dataset] / key
            tables[dataset] = read_group_csv(csv_path)
    names = [
        f"{dataset}:{group_of(path, key, roots[dataset], tables.get(dataset))}"
        for path, (dataset, key) in zip(paths, keys, strict=True)
    ]
    _, ids = np.unique(np.asarray(names), return_inverse=True)
    return ids.astype(np.int64)


def merged_groups(paths: list[Path], root: Path, key: str | None,
                  pairs: list[tuple[int, int]]) -> list[str]:
    """Group name per image: its source group (`key` regex, else the file itself), with
    every group that shares a near-duplicate pair merged into one (union-find), so a
    duplicated source cannot leak between support and query either.

    A merged group is named by its source groups joined with `+`.
    """
    sources = [group_of(path, key, root, None) for path in paths]
    sources = [path.relative_to(root).as_posix() if source.startswith("file:") else source
               for path, source in zip(paths, sources, strict=True)]
    names = sorted(set(sources))
    index = {name: i for i, name in enumerate(names)}
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(index[sources[a]]), find(index[sources[b]])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[str]] = {}
    for name in names:
        members.setdefault(find(index[name]), []).append(name)
    label = {root_id: "+".join(group) for root_id, group in members.items()}
    return [label[find(index[s])] for s in sources]


def write_group_csv(path: Path, root: Path, paths: list[Path], groups: list[str]) -> None:
    """`path,group` rows (paths relative to `root`), the format a task's `group` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "group"])
        for image, group in zip(paths, groups, strict=True):
            writer.writerow([image.relative_to(root).as_posix(), group])
    temp.replace(path)


GROUP_PATTERNS = (r"^(\d+)[_-]", r"^([A-Za-z]+\d+)[_-]", r"^([^_\-.]+)[_-]")
"""Name prefixes that often name a source: `<smear>_<cell>.jpg`, `P012-...`, `slideA_...`."""


def suggest_group_key(paths: list[Path]) -> tuple[str, int] | None:
    """(pattern, groups) when most file names share prefixes that look like a source id
    (nine in ten names match, at most half as many groups as files, at least two). A
    prefix that never varies within a class folder (`BA_1.jpg` in `basophil/`) names the
    class, not a source, and is not suggested."""
    for pattern in GROUP_PATTERNS:
        matched = [(p.parent, m.group(1)) for p in paths if (m := re.match(pattern, p.name))]
        found = [prefix for _, prefix in matched]
        groups = len(set(found))
        per_folder: dict[Path, set[str]] = {}
        for folder, prefix in matched:
            per_folder.setdefault(folder, set()).add(prefix)
        names_class = len(per_folder) > 1 and all(len(v) == 1 for v in per_folder.values())
        if (paths and len(found) >= 0.9 * len(paths) and 2 <= groups <= len(found) / 2
                and not names_class):
            return pattern, groups
    return None
