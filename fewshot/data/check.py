"""`fewshot data check`: what is in a folder of class sub-folders, and what is wrong.

Every file is fully decoded (truncated files fail only on a full decode) in parallel
threads; Pillow releases the GIL while decoding.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fewshot.data.folders import list_class_files, scan_folder

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

    @property
    def ok(self) -> bool:
        return not self.findings

    def kinds(self) -> Counter:
        return Counter(kind for kind, _, _ in self.findings)


def inspect_file(path: Path) -> tuple[str, tuple[int, int] | None, str | None, str | None]:
    """(sha256, size, mode, error) of one file, decoding it fully."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(path) as image:
            image.load()
            return digest, image.size, image.mode, None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a finding, not a crash
        reason = str(exc) or type(exc).__name__
        return digest, None, None, reason


def check_folder(root: str | Path, shots: int = 5, queries: int = 15,
                 workers: int | None = None) -> CheckReport:
    root = Path(root)
    folder = scan_folder(root)
    findings: list[Finding] = []
    stats = [ClassStats(name) for name in folder.classes]
    for other in folder.others:
        findings.append(("not-an-image", other, "not an image file by its extension; "
                         "move it out of the class folder"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(inspect_file, folder.paths))

    by_hash: dict[str, list[tuple[Path, int]]] = defaultdict(list)
    hashes: dict[Path, str] = {}
    for (path, label), (digest, size, mode, error) in zip(folder.samples, results, strict=True):
        hashes[path] = digest
        if error is not None:
            findings.append(("unreadable", path, f"cannot decode ({error}); replace or remove it"))
            continue
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

    for copies in by_hash.values():
        if len(copies) < 2:
            continue
        first, first_label = copies[0]
        for path, label in copies[1:]:
            if label != first_label:
                other = folder.classes[first_label]
                findings.append(("label-conflict", path, f"byte-identical to {first} in class "
                                 f"'{other}'; keep one copy in the right class"))
            else:
                findings.append(("duplicate", path, f"byte-identical to {first}; "
                                 "remove one copy"))
    return CheckReport(root=root, classes=stats, findings=findings, hashes=hashes)

