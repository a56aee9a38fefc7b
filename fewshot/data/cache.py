"""Decoded image cache: every image decoded once into a memory-mapped uint8 array.

Episodes are then gathered by indexing (no JPEG decoding per episode) and normalised
in one pass, on the GPU when the images live there. The array is `[N, C, H, W]`
(channel-first: gathering and normalising it is far faster than channel-last) and is
stored as a `.npy` file in the cache folder (`FEWSHOT_CACHE`, else the user's cache
directory). Its name is a hash of the image size and of every file's path, size and
modification time, so it is reused across runs and rebuilt when any file changes.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fewshot.data.folders import load_tensor
from fewshot.errors import UsageError

FORMAT_VERSION = 1
"""Bump when the decoding rule changes, so old caches are not reused."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cache_dir(override: str | Path | None = None) -> Path:
    """`override`, else `FEWSHOT_CACHE`, else the platform's user cache folder."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("FEWSHOT_CACHE"):
        return Path(os.environ["FEWSHOT_CACHE"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fewshot"


def cache_key(paths: Sequence[str | Path], size: int) -> str:
    """Hash of (format, size, and each file's absolute path, byte size and mtime)."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, size]).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\0{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def decode_into(array: np.ndarray, paths: Sequence[str | Path], size: int,
                 workers: int | None, quiet: bool) -> None:
    """Fill `array[i]` with image i; Pillow releases the GIL while decoding and resizing,
    so threads use every core without copying pixels between processes."""
    from fewshot.progress import track

    def work(index: int) -> None:
        array[index] = load_tensor(paths[index], size)

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in track(pool.map(work, range(len(paths))), total=len(paths),
                       description=f"decoding {len(paths)} images at {size} px", quiet=quiet):
            pass


def cached_array(paths: Sequence[str | Path], size: int, directory: str | Path | None = None,
                 workers: int | None = None, quiet: bool = False,
                 decoded: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The images as a read-only memory-mapped uint8 `[N, 3, size, size]` array.

    Built on first use (written to a temporary file, then renamed, so a crash or a
    concurrent run never leaves a half-written cache behind), from `decoded` (image i at
    this size, in `paths` order) when the caller has already decoded them.
    """
    folder = cache_dir(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the cache folder: {exc.strerror}", folder,
                         "set FEWSHOT_CACHE to a writable folder") from None
    target = folder / f"images-{cache_key(paths, size)}.npy"
    if not target.is_file():
        shape = (len(paths), 3, size, size)
        temp = folder / f".{target.stem}.{os.getpid()}.tmp.npy"
        try:
            array = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=shape)
            if decoded is not None:  # row by row: no second full copy in memory
                for index, image in enumerate(decoded):
                    array[index] = image
            else:
                decode_into(array, paths, size, workers, quiet)
            array.flush()
            del array
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
    return np.load(target, mmap_mode="r")


def as_tensor(array: np.ndarray) -> Tensor:
    """A tensor view of a memory-mapped array without reading it into memory.

    The `.npy` file is mapped again copy-on-write (torch gets a writable buffer, the file
    never changes) and marked for random access: episodes gather scattered rows, so the
    kernel should read only the pages they touch, not read ahead around them.
    """
    if not (isinstance(array, np.memmap) and array.filename is not None):
        return torch.from_numpy(np.ascontiguousarray(array))
    with open(array.filename, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, _, dtype = reader(handle)
        offset = handle.tell()
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    flat = np.frombuffer(mapped, dtype=dtype, count=int(np.prod(shape)), offset=offset)
    return torch.from_numpy(flat.reshape(shape))


def load_split_images(task, split: str, size: int | None = None,
                      directory: str | Path | None = None, workers: int | None = None,
                      quiet: bool = False):
    """(uint8 `[N, C, H, W]` memory-mapped tensor, SplitData) of one split of a task.

    Row i of the tensor is `data.paths[i]`, so `data.labels` and `data.groups` index it.
    """
    data = task.split(split)
    size = size or task.image_size
    images = as_tensor(cached_array(data.paths, size, directory, workers, quiet))
    return images, data


class Normalize:
    """uint8 images -> float `(x / 255 - mean) / std` in one pass, on `device` if given.

    The gathered episode is moved first (uint8 is 4x cheaper to copy), converted, then
    scaled in place: `x * 1/(255 std) - mean/std`.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype
        self._params: dict[tuple[torch.device, int], tuple[Tensor, Tensor]] = {}

    def params(self, device: torch.device, channels: int) -> tuple[Tensor, Tensor]:
        key = (device, channels)
        if key not in self._params:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            if channels != len(mean):
                mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
            scale = (1.0 / (255.0 * std)).to(self.dtype).view(channels, 1, 1).to(device)
            shift = (-mean / std).to(self.dtype).view(channels, 1, 1).to(device)
            self._params[key] = (scale, shift)
        return self._params[key]

    def __call__(self, images: Tensor) -> Tensor:
        if self.device is not None and images.device != self.device:
            images = images.to(self.device, non_blocking=True)
        scale, shift = self.params(images.device, images.shape[-3])
        return images.to(self.dtype).mul_(scale).add_(shift)

    def to_dict(self) -> dict[str, list[float]]:
        """For model.json: the normalisation a model was trained with."""
        return {"mean": list(self.mean), "std": list(self.std)}
