"""Recall and false pairs of the near-duplicate search on the Chula RBC crops.

The data README lists the 22 byte-identical smear-image pairs of the source dataset
(e.g. 296/298). Crops cut from the two images of a pair at the same cell are the same
pixels shifted by the difference of the two annotated points. Ground truth: for every
listed image pair, all crops of one image against all crops of the other are compared
exhaustively (no candidate stage) at shifts up to 16 px; the pixel differences are
bimodal (re-encoding noise vs. different content), and pairs below the gap are the
same cell. The detector (`find_near_duplicates`, as `fewshot data check` runs it) is
then run on all crops, and its pairs are scored against that list.

    python experiments/neardup_chula.py [--root ../shared/data/chula-rbc] [--max-shift 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.data.cache import as_tensor, cached_array
from fewshot.data.folders import scan_folder
from fewshot.data.neardup import ANALYSIS_SIZE, find_near_duplicates, grey, shifted_difference

PAIRS = ("52/54 248/249 296/298 297/299 560/607 561/608 562/609 563/610 564/611 565/612 "
         "566/613 567/614 568/615 569/616 570/617 571/618 572/619 573/620 574/584 575/621 "
         "576/622 577/623")
GT_SHIFT = 16
GT_THRESHOLD = 0.05
KNOWN_CONFLICT = ("05_stomatocyte/298_008.jpg", "04_target_cell/296_043.jpg")
RESULTS = Path(__file__).resolve().parent / "results"


def ground_truth(images: torch.Tensor, ids: np.ndarray) -> tuple[dict, np.ndarray]:
    """{(i, j): (difference, shift)} for same-cell crop pairs, and every exhaustive score."""
    truth: dict[tuple[int, int], tuple[float, tuple[int, int]]] = {}
    scores = []
    for pair in PAIRS.split():
        a, b = (int(x) for x in pair.split("/"))
        ia, ib = np.flatnonzero(ids == a), np.flatnonzero(ids == b)
        if not len(ia) or not len(ib):
            continue
        first, second = (m.ravel() for m in np.meshgrid(ia, ib, indexing="ij"))
        for start in range(0, len(first), 1024):
            i, j = first[start:start + 1024], second[start:start + 1024]
            diff, shift = shifted_difference(grey(images[torch.from_numpy(i)]),
                                             grey(images[torch.from_numpy(j)]), GT_SHIFT)
            scores.append(diff.numpy())
            for row in np.flatnonzero(diff.numpy() < GT_THRESHOLD):
                key = (min(i[row], j[row]), max(i[row], j[row]))
                truth[key] = (float(diff[row]), tuple(shift[row].tolist()))
    return truth, np.concatenate(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "chula-rbc"
    parser.add_argument("--root", type=Path, default=default)
    parser.add_argument("--max-shift", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)

    folder = scan_folder(args.root)
    rel = [p.relative_to(args.root).as_posix() for p in folder.paths]
    ids = np.array([int(p.name.split("_")[0]) for p in folder.paths])
    t0 = time.perf_counter()
    images = as_tensor(cached_array(folder.paths, ANALYSIS_SIZE, quiet=True))
    t_cache = time.perf_counter() - t0

    truth, scores = ground_truth(images, ids)
    gap_low = float(scores[scores < GT_THRESHOLD].max())
    gap_high = float(scores[scores >= GT_THRESHOLD].min())
    tier = {key: max(abs(s[0]), abs(s[1])) for key, (_, s) in truth.items()}

    t0 = time.perf_counter()
    found = find_near_duplicates(images, max_shift=args.max_shift)
    t_search = time.perf_counter() - t0
    detected = {(d.first, d.second): d for d in found}

    rows = {}
    for limit in (8, 16):
        wanted = {k for k, d in tier.items() if d <= limit}
        hit = wanted & set(detected)
        rows[f"shift<={limit}"] = {"true pairs": len(wanted), "found": len(hit),
                                   "recall": round(len(hit) / max(len(wanted), 1), 4)}
    listed = {tuple(sorted(int(x) for x in p.split("/"))) for p in PAIRS.split()}
    false = [k for k in detected if k not in truth]
    kinds = {"same smear image": 0, "listed image pair": 0, "other images": 0}
    for i, j in false:
        if ids[i] == ids[j]:
            kinds["same smear image"] += 1
        elif tuple(sorted((ids[i], ids[j]))) in listed:
            kinds["listed image pair"] += 1
        else:
            kinds["other images"] += 1
    conflict = tuple(rel.index(name) for name in KNOWN_CONFLICT)
    conflict_key = (min(conflict), max(conflict))
    labels = folder.labels
    cross = sum(1 for i, j in detected if labels[i] != labels[j])
    result = {
        "images": len(folder), "max_shift": args.max_shift, "threads": 2,
        "cache_seconds": round(t_cache, 1), "search_seconds": round(t_search, 1),
        "ground_truth": {"shift_limit": GT_SHIFT, "threshold": GT_THRESHOLD,
                         "pairs": len(truth), "largest_below": round(gap_low, 4),
                         "smallest_above": round(gap_high, 4),
                         "exhaustive_comparisons": len(scores)},
        "recall": rows, "detected_pairs": len(detected), "cross_class_pairs": cross,
        "false_pairs": len(false), "false_pairs_by_kind": kinds,
        "known_conflict_found": conflict_key in detected,
        "known_conflict_shift": detected[conflict_key].shift if conflict_key in detected else None,
        "false_pair_examples": [
            (rel[i], rel[j], round(detected[(i, j)].difference, 4)) for i, j in false[:20]],
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"neardup_chula_shift{args.max_shift}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    lines = [
        f"# Near-duplicate search on the Chula RBC crops (max shift {args.max_shift} px)", "",
        f"{len(folder)} crops; search {t_search:.1f} s on 2 threads (shared machine; decoded "
        f"cache {t_cache:.1f} s, reused when present).", "",
        f"Ground truth: {len(truth)} same-cell crop pairs in the 22 listed smear-image pairs "
        f"(exhaustive, shifts up to {GT_SHIFT} px; largest difference below the threshold "
        f"{gap_low:.3f}, smallest above {gap_high:.3f}).", "",
        "| true pairs with shift | true pairs | found | recall |", "|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {v['true pairs']} | {v['found']} | {v['recall']:.3f} |"
              for k, v in rows.items()]
    lines += ["", f"Detected pairs: {len(detected)} ({cross} across classes). False pairs "
              f"(not in the ground truth): {len(false)} — " +
              ", ".join(f"{k}: {v}" for k, v in kinds.items()) + ".", "",
              f"Known conflict {KNOWN_CONFLICT[0]} vs {KNOWN_CONFLICT[1]}: "
              f"{'found' if result['known_conflict_found'] else 'NOT found'}"
              f" (shift {result['known_conflict_shift']}).", ""]
    if false:
        lines += ["False pair examples:", ""]
        lines += [f"- {a} / {b} (difference {d})" for a, b, d in result["false_pair_examples"]]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
