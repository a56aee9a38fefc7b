"""Build the quickstart sample shipped in the package: fewshot/resources/sample/.

From the PBC white-cell crops only (CC BY 4.0; the Chula images carry no stated image
license, so they are not redistributed): 60 images per class, chosen with a fixed
seed (byte-identical copies skipped), resized to 64 px by the library's own rule and
saved as JPEG, with ATTRIBUTION.md beside them.

    python experiments/build_sample.py [--source ../shared/data/pbc-blood-wbc]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np

from fewshot.data.folders import load_image, scan_folder

PER_CLASS = 60
SIZE = 64
QUALITY = 90
SEED = 0
TARGET = Path(__file__).resolve().parents[1] / "fewshot" / "resources" / "sample"

ATTRIBUTION = """# Quickstart sample: attribution

The images in this folder are {count} of the 17,092 images of the PBC dataset
({per_class} per class, chosen at random with seed {seed}), downscaled to {size}x{size} px
and re-encoded as JPEG (quality {quality}) by `experiments/build_sample.py`. They are
used here under the Creative Commons Attribution 4.0 International license
(CC BY 4.0, https://creativecommons.org/licenses/by/4.0/); changes: resized and
re-encoded.

Source dataset: PBC, "A dataset for microscopic peripheral blood cell images for
development of automatic recognition systems". Normal peripheral blood cells imaged
with a CellaVision DM96 in the Core Laboratory of the Hospital Clinic of Barcelona,
labelled by clinical pathologists.

- Data: Acevedo A, Merino A, Alférez S, Molina Á, Boldú L, Rodellar J (2020).
  Mendeley Data, V1. doi:10.17632/snkd93bnjr.1
- Article: Acevedo A, Merino A, Alférez S, Molina Á, Boldú L, Rodellar J. A dataset
  of microscopic peripheral blood cell images for development of automatic
  recognition systems. Data in Brief 30 (2020) 105474. doi:10.1016/j.dib.2020.105474

File names and class folders are those of the original release.
"""


def build(source: Path, target: Path = TARGET) -> int:
    folder = scan_folder(source)
    if target.exists():
        shutil.rmtree(target)
    rng = np.random.default_rng(SEED)
    total = 0
    for label, name in enumerate(folder.classes):
        paths = [p for p, y in folder.samples if y == label]
        seen: set[str] = set()
        chosen = 0
        for i in rng.permutation(len(paths)):
            digest = hashlib.sha256(paths[i].read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            out = target / name / paths[i].name
            out.parent.mkdir(parents=True, exist_ok=True)
            load_image(paths[i], SIZE).save(out, quality=QUALITY)
            chosen += 1
            if chosen == PER_CLASS:
                break
        total += chosen
    (target / "ATTRIBUTION.md").write_text(
        ATTRIBUTION.format(count=total, per_class=PER_CLASS, seed=SEED, size=SIZE,
                           quality=QUALITY), encoding="utf-8")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc-blood-wbc"
    parser.add_argument("--source", type=Path, default=default)
    args = parser.parse_args()
    count = build(args.source)
    size = sum(p.stat().st_size for p in TARGET.rglob("*") if p.is_file())
    print(f"wrote {count} images ({size / 1e6:.2f} MB) to {TARGET}")


if __name__ == "__main__":
    main()
