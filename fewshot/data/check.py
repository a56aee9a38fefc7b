"""`fewshot data check`: what is in a folder of class sub-folders, and what is wrong.

Every file is fully decoded (truncated files fail only on a full decode) in parallel
threads; Pillow releases the GIL while decoding. The readable images then go through
the decoded cache at 64 px and the near-duplicate search (fewshot/data/neardup.py):
re-encoded or slightly shifted copies are reported, across classes as label conflicts.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fewshot.data.folders import (
    is_dicom,
    list_class_files,
    load_image,
    scan_folder,
    why_not_used,
)
from fewshot.errors import DataError

Finding = tuple[str, Path, str]
"""(kind, path, reason)."""


@dataclass
class ClassStats:
    name: str
    images: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)
    modes: Counter = field(default_factory=Counter)

    def min_size(self) -> str:
        if not self.sizes:
            return "-"
        width, height = min(self.sizes, key=lambda wh: wh[0] * wh[1])
        return f"{width}x{height}"

    def median_size(self) -> str:
        if not self.sizes:
            return "-"
        width = statistics.median(w for w, _ in self.sizes)
        height = statistics.median(h for _, h in self.sizes)
        return f"{width:g}x{height:g}"


@dataclass
class CheckReport:
    root: Path
    classes: list[ClassStats]
    findings: list[Finding]
    hashes: dict[Path, str] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)
    """Every image file found, in scan order."""
    duplicate_pairs: list[tuple[int, int]] = field(default_factory=list)
    """Index pairs into `paths`: byte-identical and near-duplicate images."""

    @property
    def ok(self) -> bool:
        return not self.findings

    def kinds(self) -> Counter:
        return Counter(kind for kind, _, _ in self.findings)


def inspect_file(path: Path) -> tuple[str, tuple[int, int] | None, str | None, str | None]:
    """(sha256, size, mode, error) of one file, decoding it fully."""
    try:
        data = path.read_bytes()
    except OSError as exc:  # permission denied, a file gone since the scan
        return "", None, None, f"cannot open: {exc.strerror or exc}"
    digest = hashlib.sha256(data).hexdigest()
    if is_dicom(path):
        try:
            image = load_image(path)
        except DataError as exc:
            return digest, None, None, exc.what
        return digest, image.size, "DICOM", None
    try:
        with Image.open(path) as image:  # the header only: size and mode as stored
            size, mode = image.size, image.mode
        load_image(path)  # decodes within the pixel limit (fewshot.data.folders)
        return digest, size, mode, None
    except DataError as exc:
        return digest, None, None, exc.what.removeprefix("cannot read image: ")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return digest, None, None, reason


def check_folder(root: str | Path, shots: int = 5, queries: int = 15,
                 workers: int | None = None, near_duplicates: bool = True,
                 max_shift: int = 8, quiet: bool = True) -> CheckReport:
    root = Path(root)
    folder = scan_folder(root)
    findings: list[Finding] = []
    stats = [ClassStats(name) for name in folder.classes]
    for other in folder.others:
        findings.append(("not-an-image", other, f"{why_not_used(other)}; "
                         "move it out of the class folder"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(inspect_file, folder.paths))

    by_hash: dict[str, list[tuple[Path, int]]] = defaultdict(list)
    hashes: dict[Path, str] = {}
    readable: list[int] = []
    for index, ((path, label), (digest, size, mode, error)) in enumerate(
            zip(folder.samples, results, strict=True)):
        hashes[path] = digest
        if error is not None:
            findings.append(("unreadable", path, f"cannot decode ({error}); replace or remove it"))
            continue
        readable.append(index)
        stat = stats[label]
        stat.images += 1
        stat.sizes.append(size)
        stat.modes[mode] += 1
        by_hash[digest].append((path, label))

    need = shots + queries
    for stat in stats:
        class_dir = root / stat.name
        if stat.images == 0:
            images, _ = list_class_files(class_dir)
            reason = "class folder has no readable images" if images else "class folder is empty"
            findings.append(("empty-class", class_dir, f"{reason}; add images or remove it"))
        elif stat.images < need:
            findings.append(("too-few", class_dir, f"{stat.images} images, fewer than shots + "
                             f"queries = {need}; add images or lower --shots/--queries"))

    position = {path: i for i, path in enumerate(folder.paths)}
    pairs: list[tuple[int, int]] = []
    for copies in by_hash.values():
        if len(copies) < 2:
            continue
        first, first_label = copies[0]
        for path, label in copies[1:]:
            pairs.append((position[first], position[path]))
            if label != first_label:
                other = folder.classes[first_label]
                findings.append(("label-conflict", path, f"byte-identical to {first} in class "
                                 f"'{other}'; keep one copy in the right class"))
            else:
                findings.append(("duplicate", path, f"byte-identical to {first}; "
                                 "remove one copy"))
    if near_duplicates and len(readable) > 1:
        found = near_duplicate_findings(folder, readable, hashes, max_shift, workers, quiet)
        for (a, b), finding in found:
            pairs.append((a, b))
            findings.append(finding)
    return CheckReport(root=root, classes=stats, findings=findings, hashes=hashes,
                       paths=folder.paths, duplicate_pairs=pairs)


def near_duplicate_findings(folder, readable: list[int], hashes: dict[Path, str],
                            max_shift: int, workers: int | None,
                            quiet: bool) -> list[tuple[tuple[int, int], Finding]]:
    """Near-duplicate pairs (index pairs into `folder.paths`) that are not byte-identical."""
    from fewshot.data.cache import as_tensor, cached_array
    from fewshot.data.neardup import ANALYSIS_SIZE, find_near_duplicates

    paths = [folder.paths[i] for i in readable]
    labels = folder.labels
    images = as_tensor(cached_array(paths, ANALYSIS_SIZE, workers=workers, quiet=quiet))
    out: list[tuple[tuple[int, int], Finding]] = []
    for dup in find_near_duplicates(images, max_shift=max_shift, quiet=quiet):
        a, b = readable[dup.first], readable[dup.second]
        first, second = folder.paths[a], folder.paths[b]
        if hashes[first] == hashes[second]:
            continue  # already reported as byte-identical
        how = (f"shifted by {dup.shift} px, difference {dup.difference:.3f}")
        if labels[a] != labels[b]:
            finding = ("label-conflict", second,
                       f"near-duplicate of {first} in class '{folder.classes[labels[a]]}' "
                       f"({how}); keep one copy in the right class")
        else:
            finding = ("near-duplicate", second,
                       f"near-duplicate of {first} ({how}); remove one copy or keep both "
                       "in one group (--write-groups)")
        out.append(((a, b), finding))
    return out



def write_groups_for(report: CheckReport, path: Path, key: str | None) -> int:
    """Write the report's images with source groups merged over duplicates; the count."""
    from fewshot.data.groups import merged_groups, write_group_csv

    groups = merged_groups(report.paths, report.root, key, report.duplicate_pairs)
    write_group_csv(Path(path), report.root, report.paths, groups)
    return len(set(groups))
