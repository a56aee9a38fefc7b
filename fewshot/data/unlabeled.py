"""Unlabeled images: folders in any layout (a flat folder, class folders, nested
folders), and the check that they share no image with the images a result is measured on.

An unlabeled image that is also a measured one (a query of an evaluated split, a held-out
image of an adapt folder, a val image that chooses the epoch) leaks the answer, so the
check runs three ways before any work: by real path, by file content (SHA-256) and by the
near-duplicate search of `fewshot data check` (the same cell saved twice, re-encoded or
shifted a few pixels, which a hash misses).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from fewshot.data.cache import as_tensor, cached_array
from fewshot.data.files import expand_paths, load_many, sha256_file
from fewshot.errors import DataError, UsageError

ANALYSIS_SIZE = 64
"""Images are compared at this size (that of the near-duplicate search)."""


@dataclass
class Unlabeled:
    """The readable images of the `--unlabeled` folders, in a fixed (sorted) order."""

    folders: list[Path]
    paths: list[Path]
    hashes: list[str]

    def records(self) -> list[dict[str, str]]:
        """`[{path, sha256}]`, as adapted.json and evaluate's JSON record them."""
        return [{"path": str(p), "sha256": h} for p, h in zip(self.paths, self.hashes,
                                                              strict=True)]

    def images(self, size: int, quiet: bool = True) -> Tensor:
        """uint8 `[N, 3, size, size]` through the decoded cache."""
        return as_tensor(cached_array(self.paths, size, quiet=quiet))


def find_unlabeled(folders: Sequence[str | Path], quiet: bool = True) -> Unlabeled:
    """Every image under the folders (recursively); unreadable files are left out with a
    warning, and a folder list with no readable image is an error."""
    import sys

    if not folders:
        raise UsageError("no unlabeled folder given", "--unlabeled", "pass --unlabeled DIR")
    for folder in folders:
        if not Path(folder).is_dir():
            raise UsageError("unlabeled folder not found", folder,
                             "pass a folder of images (any layout) to --unlabeled")
    paths = sorted(dict.fromkeys(expand_paths(list(folders), quiet=quiet)))
    readable, decoded = [], []
    for path, result in zip(paths, load_many(paths, ANALYSIS_SIZE, quiet=quiet), strict=True):
        if isinstance(result, str):
            print(f"warning: unlabeled image left out: {path}: {result}", file=sys.stderr)
        else:
            readable.append(path)
            decoded.append(result)
    if not readable:
        raise DataError("no readable images in the unlabeled folder(s)", folders[0],
                        "put image files (any layout) in the folder")
    # the near-duplicate check reads them at this size: the cache keeps this decoding
    cached_array(readable, ANALYSIS_SIZE, quiet=True, decoded=decoded)
    del decoded
    return Unlabeled([Path(f) for f in folders], readable,
                     [sha256_file(p) for p in readable])


def find_overlaps(unlabeled: Unlabeled, measured: Sequence[Path],
                  measured_images: Tensor | None = None, near_duplicates: bool = True,
                  quiet: bool = True) -> list[tuple[Path, Path, str]]:
    """`(unlabeled image, measured image, how)` for every unlabeled image that is one of
    `measured`: by real path ("is"), by content ("has the content of") or as a
    near-duplicate. `measured_images` (uint8 at ANALYSIS_SIZE, in `measured` order)
    saves decoding them again."""
    from fewshot.data.neardup import cross_near_duplicates

    found: dict[Path, tuple[Path, Path, str]] = {}
    real = {os.path.realpath(p): p for p in measured}
    for path in unlabeled.paths:
        if os.path.realpath(path) in real:
            found[path] = (path, real[os.path.realpath(path)], "is")
    by_hash: dict[str, Path] = {}
    for path in measured:
        by_hash.setdefault(sha256_file(path), path)
    for path, digest in zip(unlabeled.paths, unlabeled.hashes, strict=True):
        if digest in by_hash and path not in found:
            found[path] = (path, by_hash[digest], "has the content of")
    if near_duplicates and measured:
        if measured_images is None:
            measured_images = as_tensor(cached_array(list(measured), ANALYSIS_SIZE,
                                                     quiet=quiet))
        for dup in sorted(cross_near_duplicates(unlabeled.images(ANALYSIS_SIZE, quiet),
                                                measured_images),
                          key=lambda d: d.difference):
            path = unlabeled.paths[dup.first]
            if path not in found:
                found[path] = (path, measured[dup.second],
                               f"is a near-duplicate (shifted by {dup.shift} px) of")
    return [found[p] for p in unlabeled.paths if p in found]


def refuse_overlap(unlabeled: Unlabeled, measured: Sequence[Path], what: str,
                   measured_images: Tensor | None = None, near_duplicates: bool = True,
                   quiet: bool = True) -> None:
    """Exit 2 when an unlabeled image is one of `measured` (what they are: "the evaluated
    split"); every such image is listed on stderr first."""
    import sys

    overlaps = find_overlaps(unlabeled, measured, measured_images, near_duplicates, quiet)
    if not overlaps:
        return
    for path, other, how in overlaps:
        print(f"  {path} {how} {other}", file=sys.stderr)
    path, other, how = overlaps[0]
    raise overlap_error(path, other, how, what, len(overlaps))


def overlap_error(path: Path, other: Path, how: str, what: str, count: int = 1
                  ) -> UsageError:
    more = f" ({count} unlabeled images in all, listed above)" if count > 1 else ""
    said = f"is an image of {what}" if how == "is" else f"{how} {other}, an image of {what}"
    return UsageError(f"unlabeled image {said}{more}", path,
                      f"remove it from the unlabeled folder: images of {what} must not be "
                      "used unlabeled")
