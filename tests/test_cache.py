from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from conftest import make_folder, write_image
from fewshot.data.cache import Normalize, as_tensor, cache_dir, cached_array, load_split_images
from fewshot.data.episodes import EpisodeSampler, TensorEpisodes
from fewshot.data.folders import load_image, load_tensor, scan_folder
from fewshot.data.tasks import load_task
from fewshot.errors import DataError


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npy"))


def test_cache_reused_across_calls_and_rebuilt_when_a_file_changes(folder, tmp_path):
    cache = tmp_path / "cache"
    paths = scan_folder(folder).paths
    first = cached_array(paths, 16, directory=cache, quiet=True)
    assert first.shape == (len(paths), 3, 16, 16) and first.dtype == np.uint8
    assert isinstance(first, np.memmap)
    [built] = cache_files(cache)
    stamp = built.stat().st_mtime_ns
    again = cached_array(paths, 16, directory=cache, quiet=True)
    assert cache_files(cache) == [built] and built.stat().st_mtime_ns == stamp
    assert np.array_equal(again, first)

    # another image size is another cache
    cached_array(paths, 8, directory=cache, quiet=True)
    assert len(cache_files(cache)) == 2

    # rewriting one file (new content, new mtime) rebuilds
    changed = paths[3]
    write_image(changed, np.random.default_rng(99), size=16)
    os.utime(changed, ns=(stamp + 10**9, stamp + 10**9))
    rebuilt = cached_array(paths, 16, directory=cache, quiet=True)
    assert len(cache_files(cache)) == 3
    assert np.array_equal(rebuilt[3], load_tensor(changed, 16))
    assert not np.array_equal(rebuilt[3], first[3])
    assert np.array_equal(rebuilt[4], first[4])
    assert not list(cache.glob(".*tmp*"))  # written atomically: no temporary left


def test_unreadable_image_fails_one_line_and_leaves_no_cache(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 3})
    bad = root / "a" / "img_001.png"
    bad.write_bytes(b"not a png")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="img_001.png"):
        cached_array(scan_folder(root).paths, 16, directory=cache, quiet=True)
    assert not list(cache.iterdir())


def test_cache_dir_follows_fewshot_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FEWSHOT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache_dir() == tmp_path / "xdg" / "fewshot"


def test_gather_and_normalise_equals_decoding_each_image(folder, tmp_path):
    task_file = tmp_path / "task.yaml"
    task_file.write_text(
        f"name: t\nimage_size: 12\ndata_root: {folder.parent}\n"
        f"datasets: {{d: {{path: {folder.name}}}}}\n"
        "splits: {base: [d/alpha, d/beta], novel: [d/gamma, d/delta]}\n")
    images, data = load_split_images(load_task(task_file), "novel",
                                     directory=tmp_path / "cache", quiet=True)
    assert images.dtype == torch.uint8 and images.shape == (50, 3, 12, 12)
    assert data.classes == ["d/gamma", "d/delta"] and len(data) == 50
    sampler = EpisodeSampler(data.labels, 2, 3, 4, episodes=3, seed=5)
    normalize = Normalize()
    for batch, index in zip(TensorEpisodes(images, sampler, transform=normalize),
                            range(3), strict=True):
        episode = sampler.episode(index)
        for got, sample in ((batch.support[0], episode.support), (batch.query[0], episode.query)):
            expected = torch.stack([
                TF.normalize(TF.to_tensor(load_image(data.paths[i], 12)),
                             list(normalize.mean), list(normalize.std)) for i in sample])
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert normalize.to_dict()["mean"] == [0.485, 0.456, 0.406]


RSS_PROBE = """
import json, sys, numpy as np, torch
from fewshot.data.cache import as_tensor, Normalize
from fewshot.data.episodes import EpisodeSampler, TensorEpisodes

def anon():
    # private memory of this process; a mapped file's pages are page cache, not counted
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

labels = np.repeat(np.arange(10), 1000)
sampler = EpisodeSampler(labels, 5, 1, 1, episodes=10)
warm = TensorEpisodes(torch.zeros(10000, 3, 4, 4, dtype=torch.uint8), sampler, Normalize())
for batch in warm:  # first use of each op allocates; not the cache's doing
    pass
before = anon()
images = as_tensor(np.load(sys.argv[1], mmap_mode="r"))
for batch in TensorEpisodes(images, sampler, Normalize()):
    pass
grown = anon() - before
copy = images.clone()  # control: reading everything into memory does show up
print(json.dumps({"grown": grown, "bytes": images.numel(), "copy": anon() - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_memory_mapped_cache_keeps_resident_memory_small(tmp_path):
    # a large cache file (as cached_array writes it): 10,000 images at 64 px = 123 MB
    path = tmp_path / "images-large.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(10000, 3, 64, 64))
    array[:] = (np.arange(10000) % 251).astype(np.uint8)[:, None, None, None]
    array.flush()
    del array
    result = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path)],
                            capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout)
    # gathering episodes from the mapped file copies no more than the episodes themselves
    assert measured["grown"] < 0.05 * measured["bytes"], measured
    assert measured["copy"] > 0.9 * measured["bytes"], measured  # the probe can see memory


def test_as_tensor_is_writable_copy_on_write(folder, tmp_path):
    array = cached_array(scan_folder(folder).paths, 8, directory=tmp_path / "c", quiet=True)
    tensor = as_tensor(array)
    tensor[0].zero_()  # private to this process: the file is unchanged
    assert np.load(array.filename, mmap_mode="r")[0].any()
