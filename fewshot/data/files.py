"""File helpers shared by every layer: single images read leniently (the reason instead
of an exception), paths expanded to image files, content hashes, the files shipped inside
the package, and atomic writes (temporary file + rename, so a kill never leaves a torn
file; tensors only through safetensors, which never executes code on load)."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fewshot.data.folders import list_class_files, load_tensor
from fewshot.errors import DataError, FewShotError, UsageError
from fewshot.progress import track


def shipped_model(name: str | Path) -> Path | None:
    """The folder of a model shipped in the package (`blood-v1`), unless a real folder of
    that name exists here (it wins), or None."""
    if Path(name).is_dir() or "/" in str(name) or not str(name):
        return None
    folder = packaged("models") / str(name)
    return folder if (folder / "model.json").is_file() else None


def packaged(name: str) -> Path:
    """Path of a file shipped in `fewshot/resources` (quickstart config, task, sample)."""
    return Path(str(resources.files("fewshot") / "resources" / name))


def try_load(path: Path, size: int) -> np.ndarray | str:
    """uint8 `[C, H, W]` of one image, or the reason it cannot be read."""
    try:
        return load_tensor(path, size)
    except FewShotError as exc:
        return exc.what
    except Exception as exc:  # a decoder plug-in may raise anything on a damaged file
        return f"cannot read image: {type(exc).__name__}: {exc}"


def load_many(paths: list[Path], size: int, quiet: bool = True,
              description: str = "reading images") -> list[np.ndarray | str]:
    """`try_load` over many files in threads (Pillow releases the GIL), in order."""
    if not paths:
        return []
    with ThreadPoolExecutor() as pool:
        return list(track(pool.map(lambda p: try_load(p, size), paths), len(paths),
                          description, quiet))


def expand_paths(paths: list[str | Path], quiet: bool = True) -> list[Path]:
    """Files as given; folders read recursively for image files (sorted, hidden files
    left out). A path that does not exist stops the command (exit 2) before any work."""
    files: list[Path] = []
    ignored = 0
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images, others = list_class_files(path)
            files.extend(images)
            ignored += len(others)
        elif path.exists():
            files.append(path)
        else:
            raise UsageError("path not found", path, "pass image files or folders of images")
    if ignored and not quiet:
        print(f"note: {ignored} file(s) in the folders given are not images by extension "
              "and were not read", file=sys.stderr)
    return files


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide runs from other users
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # a writer may have made the file anew
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
                 ) -> None:
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


UNREADABLE = (RuntimeError, OSError, EOFError, ValueError, AttributeError, IndexError,
              KeyError, TypeError)
"""How `torch.load(weights_only=True)` fails on torn or foreign bytes (torch's restricted
unpickler raises any of these); a pickle holding other objects is UnpicklingError."""


def load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"cannot read weights: {exc}", path, "the file is damaged; "
                        "re-run the command that wrote it") from None
