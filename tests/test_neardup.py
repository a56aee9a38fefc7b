from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import run_cli
from fewshot.data.episodes import EpisodeSampler
from fewshot.data.groups import merged_groups
from fewshot.data.neardup import find_near_duplicates
from fewshot.data.tasks import load_task


def smear(seed: int, size: int = 160) -> np.ndarray:
    """A smooth random RGB texture standing in for a smear image."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def crop(image: np.ndarray, y: int, x: int, size: int = 64) -> Image.Image:
    return Image.fromarray(image[y:y + size, x:x + size])


def reencoded(image: Image.Image, quality: int = 70) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def as_batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i).transpose(2, 0, 1) for i in images]))


def test_finds_shifted_reencoded_copies_and_nothing_else():
    images, planted = [], set()
    for seed in range(12):  # 12 unrelated crops, and shifted JPEG copies of 4 of them
        source = smear(seed)
        images.append(crop(source, 40, 40))
        if seed % 3 == 0:
            dy, dx = [(2, 6), (-5, 3), (7, -7), (0, 1)][seed // 3]
            images.append(reencoded(crop(source, 40 + dy, 40 + dx)))
            planted.add((len(images) - 2, len(images) - 1, (dy, dx)))
    found = find_near_duplicates(as_batch(images), max_shift=8)
    assert {(d.first, d.second) for d in found} == {(a, b) for a, b, _ in planted}
    shifts = {(d.first, d.second): d.shift for d in found}
    for a, b, shift in planted:
        assert shifts[(a, b)] == shift
    assert all(d.difference < 0.05 for d in found)


def test_shift_beyond_the_limit_is_not_a_duplicate():
    source = smear(1)
    images = [crop(source, 40, 40), crop(source, 52, 40)]  # 12 px apart
    assert find_near_duplicates(as_batch(images), max_shift=8) == []
    assert len(find_near_duplicates(as_batch(images), max_shift=14)) == 1


def write_dataset(root: Path) -> None:
    """Files `<source>_<n>.png`: sources 1..6; a cell of source 2 is saved again in
    source 5 (same class) and a cell of source 3 in source 6 under another class."""
    for source in range(1, 7):
        for n in range(6):
            label = "a" if n % 2 == 0 else "b"
            path = root / label / f"{source}_{n:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            crop(smear(source * 10 + n), 40, 40).save(path)
    reencoded(crop(smear(20), 43, 38), 80).save(root / "a" / "5_90.jpg")
    reencoded(crop(smear(30), 38, 44), 80).save(root / "b" / "6_91.jpg")


def test_data_check_reports_near_duplicates_and_label_conflicts(tmp_path):
    root = tmp_path / "d"
    write_dataset(root)
    result = run_cli("data", "check", str(root), "--shots", "1", "--queries", "1",
                     env={"FEWSHOT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1, result.stdout + result.stderr
    findings = [line for line in result.stdout.splitlines() if ": " in line and "/" in line]
    near = [line for line in findings if line.startswith("near-duplicate:")]
    conflict = [line for line in findings if line.startswith("label-conflict:")]
    assert len(near) == 1 and "5_90.jpg" in near[0] and "2_00.png" in near[0]
    assert len(conflict) == 1 and "6_91.jpg" in conflict[0] and "3_00.png" in conflict[0]
    assert "class 'a'" in conflict[0]
    assert len(findings) == 2

    clean = run_cli("data", "check", str(root), "--shots", "1", "--queries", "1",
                    "--no-near-duplicates", env={"FEWSHOT_CACHE": str(tmp_path / "cache")})
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_write_groups_merges_sources_and_episodes_keep_them_apart(tmp_path):
    root = tmp_path / "d"
    write_dataset(root)
    groups_csv = root / "groups.csv"
    result = run_cli("data", "check", str(root), "--shots", "1", "--queries", "1",
                     "--write-groups", str(groups_csv), "--group-key", r"^(\d+)_",
                     env={"FEWSHOT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1  # the duplicates are still findings
    assert "wrote 4 groups for 38 images" in result.stdout
    rows = {r["path"]: r["group"] for r in csv.DictReader(groups_csv.open())}
    assert len(rows) == 38
    assert rows["a/2_00.png"] == rows["a/5_90.jpg"] == rows["b/5_01.png"] == "2+5"
    assert rows["a/3_00.png"] == rows["b/6_91.jpg"] == "3+6"
    assert rows["a/1_00.png"] == "1" and rows["b/4_03.png"] == "4"

    task = tmp_path / "task.yaml"
    task.write_text(f"name: t\nimage_size: 64\ndata_root: {tmp_path}\n"
                    "datasets: {d: {path: d, group: groups.csv}}\n"
                    "splits: {base: [d/a, d/b]}\n")
    data = load_task(task).split("base")
    by_name = {p.relative_to(root).as_posix(): g for p, g in zip(data.paths, data.groups,
                                                                   strict=True)}
    assert by_name["a/2_00.png"] == by_name["a/5_90.jpg"] == by_name["b/5_01.png"]
    sampler = EpisodeSampler(data.labels, 2, 3, 3, seed=0, groups=data.groups)
    for index in range(300):
        episode = sampler.episode(index)
        assert not set(data.groups[episode.support]) & set(data.groups[episode.query])


def test_merged_groups_without_key_merges_files(tmp_path):
    paths = [tmp_path / "a" / "x.png", tmp_path / "a" / "y.png", tmp_path / "b" / "z.png"]
    assert merged_groups(paths, tmp_path, None, [(0, 2)]) == ["a/x.png+b/z.png", "a/y.png",
                                                              "a/x.png+b/z.png"]
