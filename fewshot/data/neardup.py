"""Near-duplicate images: the same cell or lesion saved twice, re-encoded, shifted a little.

A perceptual hash is not enough on cell crops (thousands of unrelated round cells hash
alike, while a copy shifted by 6 px does not), so the search has two stages:

1. Candidates: each image's descriptor is the log-magnitude of the low spatial
   frequencies of its (Hann-windowed, grey) Fourier transform. The magnitude barely
   changes when the content moves by a few pixels, so the true copy is usually among an
   image's nearest neighbours by cosine similarity (a chunked matrix product).
2. Confirmation: for each candidate pair the centre of one image is compared with the
   other at every shift up to `max_shift` px (sums of squared differences for all shifts
   at once through the FFT); the pair is a near-duplicate when the smallest mean squared
   difference is a small fraction of the centre's own variance (re-encoding noise only).
   All candidates are screened at half resolution first, the survivors are scored at
   full resolution in grey, and the pairs that pass are checked in colour at the shift
   found (the same shape on another stain is not a copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ANALYSIS_SIZE = 64
"""Images are compared at this size (the decoded cache's size for `data check`)."""

LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class NearDuplicate:
    first: int
    second: int
    difference: float
    """Smallest mean squared difference over shifts / variance of the compared centre."""
    shift: tuple[int, int]
    """(dy, dx) with `second[y, x] ~ first[y + dy, x + dx]`: where second's crop sits."""


def grey(images: Tensor) -> Tensor:
    """uint8 `[B, C, H, W]` -> float `[B, H, W]` luma (one channel is used as is)."""
    x = images.float()
    if x.shape[1] == 1:
        return x[:, 0]
    return torch.einsum("bchw,c->bhw", x, torch.tensor(LUMA, dtype=x.dtype))


def descriptors(images: Tensor, frequencies: int = 12, chunk: int = 1024) -> Tensor:
    """Shift-tolerant descriptor per image, centred and L2-normalised `[N, D]`."""
    size = images.shape[-1]
    window = torch.hann_window(size, periodic=False)
    window = window[:, None] * window[None, :]
    k = frequencies
    parts = []
    for start in range(0, len(images), chunk):
        g = grey(images[start:start + chunk])
        g = (g - g.mean((1, 2), keepdim=True)) * window
        magnitude = torch.fft.rfft2(g).abs()
        low = torch.cat([magnitude[:, :k, :k], magnitude[:, -k + 1:, :k]], dim=1)
        parts.append(torch.log1p(low.flatten(1)))
    d = torch.cat(parts)
    return F.normalize(d - d.mean(1, keepdim=True), dim=1)


def candidate_pairs(desc: Tensor, neighbours: int = 10, chunk: int = 2048) -> np.ndarray:
    """Unique pairs `(i, j)`, i < j, where j is among i's nearest neighbours or vice versa."""
    n = len(desc)
    k = min(neighbours, n - 1)
    if k < 1:
        return np.zeros((0, 2), dtype=np.int64)
    found = []
    for start in range(0, n, chunk):
        sim = desc[start:start + chunk] @ desc.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -2.0  # never one's own neighbour
        top = sim.topk(k, dim=1).indices
        first = (rows + start)[:, None].expand_as(top)
        found.append(torch.stack([first.reshape(-1), top.reshape(-1)], 1))
    pairs = torch.cat(found).numpy()
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0)


def shifted_difference(a: Tensor, b: Tensor, max_shift: int) -> tuple[Tensor, Tensor]:
    """Best normalised difference between the centre of each `a` and `b` over all shifts.

    `a`, `b`: float `[P, H, W]`. The centre of `a` (a margin of `max_shift` removed) is
    compared with the same-sized window of `b` moved by (dy, dx), |dy|, |dx| <= max_shift.
    Returns (difference `[P]`, shift `[P, 2]`), shift (dy, dx) meaning
    `b[y, x] ~ a[y + dy, x + dx]`.
    """
    p, h, w = a.shape
    m = max_shift
    a = a - 128.0  # smaller magnitudes, smaller float32 rounding in the FFT
    b = b - 128.0
    template = torch.zeros_like(a)
    template[:, m:h - m, m:w - m] = a[:, m:h - m, m:w - m]
    corr = torch.fft.irfft2(torch.fft.rfft2(template).conj() * torch.fft.rfft2(b), s=(h, w))
    shifts = torch.arange(-m, m + 1)
    corr = corr[:, shifts % h][:, :, shifts % w]  # [P, S, S] for (dy, dx)
    integral = F.pad((b * b).cumsum(1).cumsum(2), (1, 0, 1, 0))
    top, left = m + shifts, m + shifts
    bottom, right = top + (h - 2 * m), left + (w - 2 * m)
    window_sq = (integral[:, bottom][:, :, right] - integral[:, top][:, :, right]
                 - integral[:, bottom][:, :, left] + integral[:, top][:, :, left])
    centre = a[:, m:h - m, m:w - m]
    area = centre[0].numel()
    ssd = (centre * centre).sum((1, 2))[:, None, None] - 2 * corr + window_sq
    best, index = (ssd.flatten(1) / area).min(1)
    variance = centre.var(dim=(1, 2)).clamp_min(1.0)
    size = 2 * m + 1
    shift = torch.stack([m - index // size, m - index % size], 1)  # window moved by -shift
    return best.clamp_min(0) / variance, shift


def colour_difference(a: Tensor, b: Tensor, shift: Tensor, max_shift: int) -> Tensor:
    """Normalised difference of uint8 colour images `[P, C, H, W]` at the given shifts
    (mean squared difference over all channels / variance of a's centre)."""
    m = max_shift
    h, w = a.shape[-2:]
    out = torch.empty(len(a))
    for row, (dy, dx) in enumerate(shift.tolist()):
        centre = a[row, :, m:h - m, m:w - m].float()
        window = b[row, :, m - dy:h - m - dy, m - dx:w - m - dx].float()
        out[row] = ((centre - window) ** 2).mean() / centre.var().clamp_min(1.0)
    return out


class ShiftIndex:
    """Per-image FFTs and window energies, so scoring a pair costs one product and one
    inverse FFT (the same sums as `shifted_difference`, computed once per image)."""

    def __init__(self, grey_images: Tensor, max_shift: int, chunk: int = 2048) -> None:
        n, h, w = grey_images.shape
        m = self.max_shift = max_shift
        self.size = (h, w)
        self.shifts = torch.arange(-m, m + 1)
        top = m + self.shifts
        bottom, right = top + (h - 2 * m), top + (w - 2 * m)
        templates, spectra, window_sq, energy, variance = [], [], [], [], []
        for start in range(0, n, chunk):
            x = grey_images[start:start + chunk] - 128.0
            template = torch.zeros_like(x)
            template[:, m:h - m, m:w - m] = x[:, m:h - m, m:w - m]
            templates.append(torch.fft.rfft2(template).conj())
            spectra.append(torch.fft.rfft2(x))
            integral = F.pad((x * x).cumsum(1).cumsum(2), (1, 0, 1, 0))
            window_sq.append(integral[:, bottom][:, :, right] - integral[:, top][:, :, right]
                             - integral[:, bottom][:, :, top] + integral[:, top][:, :, top])
            centre = x[:, m:h - m, m:w - m]
            energy.append((centre * centre).sum((1, 2)))
            variance.append(centre.var(dim=(1, 2)).clamp_min(1.0))
        self.templates, self.spectra = torch.cat(templates), torch.cat(spectra)
        self.window_sq, self.energy = torch.cat(window_sq), torch.cat(energy)
        self.variance = torch.cat(variance)
        self.area = (h - 2 * m) * (w - 2 * m)

    def difference(self, first: Tensor, second: Tensor) -> Tensor:
        """Best normalised difference of each pair (as `shifted_difference`)."""
        h, w = self.size
        corr = torch.fft.irfft2(self.templates[first] * self.spectra[second], s=(h, w))
        corr = corr[:, self.shifts % h][:, :, self.shifts % w]
        ssd = self.energy[first][:, None, None] - 2 * corr + self.window_sq[second]
        best = (ssd.flatten(1) / self.area).min(1).values
        return best.clamp_min(0) / self.variance[first]


def confirm(images: Tensor, pairs: np.ndarray, max_shift: int, threshold: float,
            coarse_threshold: float = 0.3, chunk: int = 4096,
            progress=None) -> list[NearDuplicate]:
    """The candidate pairs whose shift-tolerant difference is below `threshold`.

    All candidates are first scored at half resolution (half the shift range; a loose
    threshold, as half-pixel shifts and averaging blur the match); the few that pass
    are scored exactly at full resolution.
    """
    half = torch.cat([F.avg_pool2d(grey(images[start:start + 1024])[:, None], 2)[:, 0]
                      for start in range(0, len(images), 1024)])  # in chunks: bounded memory
    coarse = ShiftIndex(half, -(-max_shift // 2))
    found: list[NearDuplicate] = []
    for start in range(0, len(pairs), chunk):
        block = torch.from_numpy(pairs[start:start + chunk])
        keep = coarse.difference(block[:, 0], block[:, 1]) < coarse_threshold
        block = block[keep]
        if len(block):
            a, b = images[block[:, 0]], images[block[:, 1]]
            diff, shift = shifted_difference(grey(a), grey(b), max_shift)
            passed = torch.nonzero(diff < threshold).flatten()
            # grey hides colour: the same shape on another stain is not a copy
            diff[passed] = torch.maximum(diff[passed], colour_difference(
                a[passed], b[passed], shift[passed], max_shift))
            for row in torch.nonzero(diff < threshold).flatten().tolist():
                i, j = block[row].tolist()
                found.append(NearDuplicate(i, j, float(diff[row]), tuple(shift[row].tolist())))
        if progress is not None:
            progress(min(chunk, len(pairs) - start))
    return found


def find_near_duplicates(images: Tensor, max_shift: int = 8, neighbours: int = 10,
                         threshold: float = 0.05, quiet: bool = True) -> list[NearDuplicate]:
    """Near-duplicate pairs among uint8 images `[N, C, S, S]` (all the same size)."""
    from fewshot.progress import make_progress

    if images.shape[-1] < 2 * max_shift + 8:
        raise ValueError(f"images of {images.shape[-1]} px are too small for shifts of "
                         f"{max_shift} px")
    if len(images) < 2:
        return []
    pairs = candidate_pairs(descriptors(images), neighbours)
    with make_progress(quiet) as bar:
        task = bar.add_task("comparing near-duplicate candidates", total=len(pairs), status="")
        found = confirm(images, pairs, max_shift, threshold,
                        progress=lambda n: bar.advance(task, n))
    return found


def cross_near_duplicates(first: Tensor, second: Tensor, max_shift: int = 8,
                          neighbours: int = 5, threshold: float = 0.05,
                          chunk: int = 2048) -> list[NearDuplicate]:
    """Near-duplicates between two sets of uint8 images (same size): `first` indexes
    `first`, `second` indexes `second`. Each image's nearest neighbours in the other set
    are the candidates, in both directions, so the cost grows with len(first) x
    len(second) products, not with the pairs inside either set."""
    if not len(first) or not len(second):
        return []
    if first.shape[-1] < 2 * max_shift + 8:
        raise ValueError(f"images of {first.shape[-1]} px are too small for shifts of "
                         f"{max_shift} px")
    da, db = descriptors(first), descriptors(second)
    found = []
    for query, keys, swap in ((da, db, False), (db, da, True)):
        k = min(neighbours, len(keys))
        for start in range(0, len(query), chunk):
            top = (query[start:start + chunk] @ keys.T).topk(k, dim=1).indices
            rows = torch.arange(start, start + len(top))[:, None].expand_as(top)
            pair = torch.stack([top.reshape(-1), rows.reshape(-1)] if swap
                               else [rows.reshape(-1), top.reshape(-1)], 1)
            found.append(pair)
    pairs = np.unique(torch.cat(found).numpy(), axis=0)
    pairs[:, 1] += len(first)  # indices into the two sets stacked
    out = confirm(torch.cat([first, second]), pairs, max_shift, threshold)
    return [NearDuplicate(d.first, d.second - len(first), d.difference, d.shift) for d in out]
