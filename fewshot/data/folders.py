"""Folder-per-class image sets (`root/<class>/<image>`) and the one rule for pixels.

Every image, whatever its file mode, becomes 3-channel 8-bit RGB by `to_rgb8`:
- 8-bit grayscale (L) is repeated into three channels;
- 16- and 32-bit integer or float images (I;16, I, F) are rescaled linearly from the
  image's own minimum..maximum to 0..255 (a constant image becomes 0), then repeated;
- palette (P) images are expanded through their palette;
- an alpha channel (RGBA, LA, PA) is composited over black, then dropped;
- CMYK, YCbCr and other colour modes are converted to RGB by Pillow.

DICOM files (`.dcm`, read with pydicom: `pip install 'fewshot[dicom]'`) first get their
modality LUT (rescale slope/intercept) and their own VOI LUT or window (pydicom's
`apply_voi_lut`), MONOCHROME1 is inverted so that bright means dense as in
MONOCHROME2, and the result follows the rule above (8-bit as is, deeper images
rescaled from their own min..max). Multi-frame files are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewshot.errors import DataError, UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
DICOM_EXTENSIONS = frozenset({".dcm"})


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in {"Thumbs.db", "desktop.ini", "__MACOSX"}


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class ImageFolder:
    """The files of one dataset root: class names (sorted) and (path, class index) pairs."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    others: list[Path] = field(default_factory=list)
    """Visible entries not read as images: other extensions, dangling links, FIFOs
    (`why_not_used` says which; reported by `data check` and adapt)."""

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((label for _, label in self.samples), dtype=np.int64, count=len(self))

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return dict(zip(self.classes, counts.tolist(), strict=True))


def list_class_files(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """Images (recursively, sorted) and other visible files under one class folder.

    Linked folders are followed once each, by their real path: a link loop (`ln -s .
    loop`) or a second link to a folder already read adds nothing. A file reached twice
    (two links to one file) counts once; FIFOs, sockets and devices are never listed, so
    nothing blocks opening them.
    """
    images: list[Path] = []
    others: list[Path] = []
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d)
                             and os.path.realpath(os.path.join(dirpath, d)) not in seen_dirs)
        for name in sorted(filenames):
            if is_hidden(name):
                continue
            path = Path(dirpath) / name
            target = os.path.realpath(path)
            if target in seen_files:
                continue  # a second link to a file already listed
            seen_files.add(target)
            regular = os.path.isfile(target)  # not a dangling link, a FIFO or a device
            (images if regular and is_image_file(path) else others).append(path)
    return images, others


def why_not_used(path: Path) -> str:
    """Why a file in `list_class_files`'s second list is not read as an image."""
    if not path.exists():
        return "a link to nothing (dangling symlink)"
    if not path.is_file():
        return "not a regular file (a FIFO, socket or device)"
    return "not an image file (by extension)"


def scan_folder(root: str | Path, classes: list[str] | None = None) -> ImageFolder:
    """Index `root/<class>/...`; `classes` restricts (and orders) the classes read."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError("folder not found", root, "pass a folder laid out as <class>/<images>")
    on_disk = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p.name))
    if classes is None:
        classes = on_disk
    else:
        missing = [c for c in classes if c not in on_disk]
        if missing:
            raise UsageError(
                "class not found on disk", root / missing[0], "fix the class name or the data root"
            )
    samples: list[tuple[Path, int]] = []
    others: list[Path] = []
    for label, name in enumerate(classes):
        images, extra = list_class_files(root / name)
        samples.extend((path, label) for path in images)
        others.extend(extra)
    if not classes:
        raise DataError(
            "no class folders found", root, "put images in one sub-folder per class"
        )
    return ImageFolder(root=root, classes=list(classes), samples=samples, others=others)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Apply the module's documented rule; returns an RGB image."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        gray = Image.fromarray(to_uint8(np.asarray(image)), mode="L")
        return gray.convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_EXTENSIONS


def read_dicom(path: Path) -> Image.Image:
    """One DICOM image as RGB by the module's rule (pydicom does LUTs and windowing)."""
    try:
        import pydicom
    except ImportError:
        raise UsageError("reading DICOM files needs pydicom", path,
                         "pip install 'fewshot[dicom]'") from None
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    try:
        ds = pydicom.dcmread(path)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames > 1:
            raise DataError(f"multi-frame DICOM ({frames} frames)", path,
                            "save the frame to classify as its own file")
        pixels = ds.pixel_array
        photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
        if int(getattr(ds, "SamplesPerPixel", 1)) == 1:
            pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
            if pixels.dtype == np.uint8:
                gray = 255 - pixels if photometric == "MONOCHROME1" else pixels
                return Image.fromarray(gray, mode="L").convert("RGB")
            values = pixels.astype(np.float32)
            if photometric == "MONOCHROME1":
                values = -values
            return to_rgb8(Image.fromarray(values, mode="F"))
        if pixels.dtype != np.uint8:  # deeper colour: the same min..max rule
            pixels = to_uint8(pixels)
        return Image.fromarray(pixels, mode="RGB")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise DataError(f"cannot read DICOM: {str(exc) or type(exc).__name__}", path,
                        "replace or remove the file") from None


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Linear rescale from the array's own min..max to 0..255 (a constant array -> 0)."""
    values = np.asarray(array, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0.0
    return np.round(scaled).astype(np.uint8)


DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image decoded in full (about 120 MB as RGB); `FEWSHOT_MAX_PIXELS` raises it."""
Image.MAX_IMAGE_PIXELS = None  # our own limit, checked from the header, replaces Pillow's


def max_pixels() -> int:
    raw = os.environ.get("FEWSHOT_MAX_PIXELS", "")
    try:
        return int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        raise UsageError("FEWSHOT_MAX_PIXELS must be a whole number", raw,
                         f"e.g. FEWSHOT_MAX_PIXELS={DEFAULT_MAX_PIXELS}") from None


def load_image(path: str | Path, size: int | None = None) -> Image.Image:
    """Decode fully (so truncated files fail here), convert by the rule, resize square.

    Only regular files are opened (a FIFO would block). The header is read first: a JPEG
    larger than `FEWSHOT_MAX_PIXELS` is decoded reduced (`draft`, a power-of-two scale,
    enough for any training size); any other image above it is refused, before its
    pixels take memory."""
    path = Path(path)
    if not path.is_file():
        raise DataError("not a regular file", path, "replace it with an image file")
    if is_dicom(path):
        rgb = read_dicom(path)
    else:
        limit = max_pixels()
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > limit and image.format == "JPEG":
                    # draft() scales by powers of two to at least the size asked, so ask
                    # for half the side that fits: the result is within the limit
                    ratio = (limit / (width * height)) ** 0.5 / 2
                    image.draft("RGB", (max(1, int(width * ratio)), max(1, int(height * ratio))))
                    width, height = image.size
                if width * height > limit:
                    raise DataError(f"image of {width}x{height} pixels is above the limit of "
                                    f"{limit:,}", path, "downscale it, or raise "
                                    "FEWSHOT_MAX_PIXELS")
                image.load()
                rgb = to_rgb8(image)
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
            if isinstance(exc, UnidentifiedImageError):  # its message repeats the path
                if not is_image_file(path):
                    raise DataError(why_not_used(path), path, "pass image files "
                                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})") from None
                first = "no image decoder recognises it (damaged, or not an image)"
            else:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"cannot read image: {first}", path, "replace or remove the file"
            ) from None
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return rgb


def load_tensor(path: str | Path, size: int | None = None) -> np.ndarray:
    """uint8 `[C, H, W]` array of an image, channel-first as the cache stores it."""
    return np.ascontiguousarray(np.asarray(load_image(path, size)).transpose(2, 0, 1))
