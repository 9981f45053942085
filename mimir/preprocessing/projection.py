"""From fused water and fat volumes to the 3 x 256 x 256 ``mimir-v1`` image.

Spec: ``preprocessing-spec.md`` sections 7 and 8. Volumes are (left-right,
anterior-posterior, head-foot) with the head at the end of the last axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimir.preprocessing import accel
from mimir.preprocessing.fusion import TRIM_SLICES, PlacedStations
from mimir.preprocessing.imageops import (
    minmax_to_u8,
    otsu_threshold,
    resize_bilinear_u8,
)

#: Rows of the posterior side (axis 1) dropped to remove the scanner bed.
BED_ROWS = 22
#: Output image side, pixels.
IMAGE_SIZE = 256
#: Fat fraction encoded as 0..255 for 0..FF_RANGE per mille (0-50 %).
FF_RANGE = 500.0


@dataclass(frozen=True)
class BodyMask:
    """Signal sum and body mask of a fused subject.

    Attributes
    ----------
    signal:
        water + fat with zeros replaced by 1, float64, volume shape.
    mask:
        bool, volume shape: ``signal >= threshold``.
    threshold:
        Mean over coronal slices (axis 1) of the per-slice Otsu thresholds.
    """

    signal: np.ndarray
    mask: np.ndarray
    threshold: float


def body_mask(water: np.ndarray, fat: np.ndarray) -> BodyMask:
    """Body mask by the mean of per-coronal-slice Otsu thresholds (spec section 7)."""
    signal = water + fat
    signal[signal == 0] = 1
    thresholds = np.array([otsu_threshold(signal[:, i, :]) for i in range(signal.shape[1])])
    threshold = float(np.mean(thresholds))
    return BodyMask(signal=signal, mask=signal >= threshold, threshold=threshold)


def mass_slice_index(counts: np.ndarray, mass: float) -> int:
    """Smallest i such that ``counts[0:i].sum() >= mass``, or 0 if there is none.

    ``counts`` are the mask voxels per slice along one axis; i runs over
    0..len(counts)-1.
    """
    before = np.concatenate([[0], np.cumsum(counts)[:-1]])
    hits = np.flatnonzero(before >= mass)
    return int(hits[0]) if hits.size else 0


def fat_fraction_slice_indices(mask: np.ndarray) -> tuple[int, int]:
    """Coronal and sagittal fat-fraction slice indices from the bed-cropped mask.

    Coronal: the slice along axis 1 at half the body mass. Sagittal: the
    slice along axis 0 at half the mass of the first half of axis 0 (a
    quarter of the body from the side, through the liver).
    """
    return slice_indices_from_counts(mask.sum(axis=(0, 2)), mask.sum(axis=(1, 2)))


def slice_indices_from_counts(counts_ap: np.ndarray, counts_lr: np.ndarray) -> tuple[int, int]:
    """:func:`fat_fraction_slice_indices` from the mask voxels per AP slice and per LR slice."""
    mass = int(counts_ap.sum())
    mass_half = int(counts_lr[: len(counts_lr) // 2].sum())
    return mass_slice_index(counts_ap, mass / 2), mass_slice_index(counts_lr, mass_half / 2)


def _side_by_side(coronal: np.ndarray, sagittal: np.ndarray) -> np.ndarray:
    return resize_bilinear_u8(np.concatenate([coronal, sagittal], axis=1), IMAGE_SIZE, IMAGE_SIZE)


def projection_channel(volume: np.ndarray) -> np.ndarray:
    """Coronal and sagittal mean-intensity projections side by side, (256, 256) uint8.

    ``volume`` must already have the bed rows removed.
    """
    coronal = minmax_to_u8(np.rot90(np.sum(volume, axis=1), 1))
    sagittal = minmax_to_u8(np.rot90(np.sum(volume, axis=0), 1))
    return _side_by_side(coronal, sagittal)


def encode_fat_fraction(ff: np.ndarray) -> np.ndarray:
    """Fat fraction in per mille to uint8: 0..500 -> 0..255 (truncated), clipped."""
    return (np.clip(ff / FF_RANGE, 0, 1) * 255).astype(np.uint8)


def fat_fraction_channel(fat: np.ndarray, signal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Coronal and sagittal fat-fraction slices side by side, (256, 256) uint8.

    Arguments must already have the bed rows removed. The fat fraction
    ``1000 * fat / signal`` (per mille) is computed only on the two slices.
    """
    i_cor, i_sag = fat_fraction_slice_indices(mask)
    ff_cor = 1000 * fat[:, i_cor, :] / signal[:, i_cor, :]
    ff_sag = 1000 * fat[i_sag, :, :] / signal[i_sag, :, :]
    return _side_by_side(encode_fat_fraction(np.rot90(ff_cor, 1)), encode_fat_fraction(np.rot90(ff_sag, 1)))


def make_image(water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """The (3, 256, 256) uint8 image: water projection, fat projection, fat-fraction slices."""
    image = _make_image_compiled(water, fat)
    if image is None:
        body = body_mask(water, fat)
        keep = slice(0, water.shape[1] - BED_ROWS)
        image = np.stack(
            [
                projection_channel(water[:, keep, :]),
                projection_channel(fat[:, keep, :]),
                fat_fraction_channel(fat[:, keep, :], body.signal[:, keep, :], body.mask[:, keep, :]),
            ]
        )
    return image


def otsu_thresholds_from_histograms(hist: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Otsu thresholds of many images at once from their 256-bin histograms.

    Row ``i`` of ``hist`` (n, 256) is the histogram of an image over
    [``lows[i]``, ``highs[i]``]; the result equals :func:`otsu_threshold`
    of each image (the same operations, row-wise), and ``lows[i]`` where
    the image is constant.
    """
    thresholds = lows.astype(np.float64).copy()
    varied = np.flatnonzero(lows != highs)
    if varied.size == 0:
        return thresholds
    nbins = hist.shape[1]
    edges = np.stack([np.linspace(float(lows[i]), float(highs[i]), nbins + 1) for i in varied])
    centers = (edges[:, :-1] + edges[:, 1:]) / 2.0
    h = hist[varied].astype(np.float64)
    weight1 = np.cumsum(h, axis=1)
    weight2 = np.cumsum(h[:, ::-1], axis=1)[:, ::-1]
    mean1 = np.cumsum(h * centers, axis=1) / weight1
    mean2 = (np.cumsum((h * centers)[:, ::-1], axis=1) / weight2[:, ::-1])[:, ::-1]
    variance12 = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    best = np.argmax(variance12, axis=1)
    thresholds[varied] = centers[np.arange(len(varied)), best]
    return thresholds


def _make_image_compiled(water: np.ndarray, fat: np.ndarray) -> np.ndarray | None:
    """:func:`make_image` through the compiled kernels: two passes over the volumes.

    Returns None (the caller takes the NumPy path) when the kernels are
    off, the inputs are not two float64 volumes of one shape laid out with
    the head-foot axis innermost (other layouts make NumPy sum in another
    order), or a signal value is not finite.
    """
    kernels = accel.compiled()
    if kernels is None:
        return None
    if water.dtype != np.float64 or fat.dtype != np.float64 or water.ndim != 3 or water.shape != fat.shape:
        return None
    if min(water.shape) == 0 or water.shape[1] <= BED_ROWS:
        return None
    for v in (water, fat):
        if abs(v.strides[2]) > min(abs(v.strides[0]), abs(v.strides[1])):
            return None
    n_lr, n_ap, n_hf = water.shape
    keep = n_ap - BED_ROWS
    # (AP, LR, HF) views, HF in memory order; results are flipped back below.
    flip = water.strides[2] < 0
    w = np.swapaxes(water, 0, 1)
    f = np.swapaxes(fat, 0, 1)
    if flip:
        w, f = w[:, :, ::-1], f[:, :, ::-1]
    sums = _PassArrays(n_ap, n_lr, n_hf, keep)
    if not kernels.projection_pass(w, f, keep, *sums.outputs):
        return None
    kernels.mask_counts(w, f, keep, sums.threshold(), sums.counts_ap, sums.counts_lr)
    cor_w, cor_f, sag_w, sag_f = sums.cor_w, sums.cor_f, sums.sag_w, sums.sag_f
    if flip:
        cor_w, cor_f, sag_w, sag_f = (a[:, ::-1] for a in (cor_w, cor_f, sag_w, sag_f))
    i_cor, i_sag = sums.slice_indices()
    return _image_from_sums(
        cor_w, cor_f, sag_w, sag_f,
        (water[:, i_cor, :], fat[:, i_cor, :]), (water[i_sag, :keep, :], fat[i_sag, :keep, :]),
    )


class _PassArrays:
    """What the compiled projection and mask passes fill, for an (AP, LR, HF) volume with ``keep`` AP slices above the bed.

    ``outputs``: the coronal sums (LR, HF), the sagittal sums (keep, HF),
    the per-slice signal minimum and maximum (AP,) and 256-bin histograms
    (AP, 256); ``counts_ap`` (keep,) and ``counts_lr`` (LR,): body-mask voxels.
    """

    def __init__(self, n_ap: int, n_lr: int, n_hf: int, keep: int) -> None:
        self.cor_w, self.cor_f = np.zeros((n_lr, n_hf)), np.zeros((n_lr, n_hf))
        self.sag_w, self.sag_f = np.zeros((keep, n_hf)), np.zeros((keep, n_hf))
        self.lows, self.highs = np.empty(n_ap), np.empty(n_ap)
        self.hist = np.zeros((n_ap, 256), dtype=np.int64)
        self.counts_ap = np.zeros(keep, dtype=np.int64)
        self.counts_lr = np.zeros(n_lr, dtype=np.int64)

    @property
    def outputs(self) -> tuple[np.ndarray, ...]:
        return self.cor_w, self.cor_f, self.sag_w, self.sag_f, self.lows, self.highs, self.hist

    def threshold(self) -> float:
        """The body-mask threshold: the mean of the per-slice Otsu thresholds."""
        return float(np.mean(otsu_thresholds_from_histograms(self.hist, self.lows, self.highs)))

    def slice_indices(self) -> tuple[int, int]:
        """:func:`fat_fraction_slice_indices` from the mask counts."""
        return slice_indices_from_counts(self.counts_ap, self.counts_lr)


def _image_from_sums(
    cor_w: np.ndarray, cor_f: np.ndarray, sag_w: np.ndarray, sag_f: np.ndarray,
    coronal: tuple[np.ndarray, np.ndarray], sagittal: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """The image from the projection sums and the (water, fat) fat-fraction slices, (LR or AP, HF) float64."""
    ff = []
    for water_slice, fat_slice in (coronal, sagittal):
        signal = water_slice + fat_slice
        signal[signal == 0] = 1
        ff.append(encode_fat_fraction(np.rot90(1000 * fat_slice / signal, 1)))
    return np.stack(
        [
            _projection_from_sums(cor_w, sag_w),
            _projection_from_sums(cor_f, sag_f),
            _side_by_side(ff[0], ff[1]),
        ]
    )


def make_image_from_placed(placed: PlacedStations) -> np.ndarray:
    """:func:`make_image` of ``placed.volumes()``, without making the float64 volumes.

    Two passes of the compiled kernels over the placed float32 stations
    (each line added up into a scratch line and used at once): the
    projections with the per-slice histograms, then the mask counts; the
    two fat-fraction slices are added up on their own. The same values as
    :func:`make_image` on the volumes, bit for bit
    (``tests/preprocessing/test_kernels.py``); about half the memory traffic.
    """
    from mimir.preprocessing import kernels

    n_ap, n_lr, n_slices = placed.shape
    n_hf = n_slices - 2 * TRIM_SLICES
    keep = n_ap - BED_ROWS
    if min(n_lr, n_hf, keep) <= 0:
        volumes = placed.volumes()
        return make_image(volumes.water, volumes.fat)
    geometry = (*placed.placement, n_ap, n_lr, n_slices, TRIM_SLICES)
    sums = _PassArrays(n_ap, n_lr, n_hf, keep)
    if not kernels.placed_projection_pass(placed.water, placed.fat, *geometry, keep, *sums.outputs):
        volumes = placed.volumes()  # a value that is not finite: the NumPy path says which
        return make_image(volumes.water, volumes.fat)
    kernels.placed_mask_counts(
        placed.water, placed.fat, *geometry, keep, sums.threshold(), sums.counts_ap, sums.counts_lr
    )
    # The sums run along the slices in memory order, from the feet: flip them to the head-at-the-end order.
    cor_w, cor_f, sag_w, sag_f = (a[:, ::-1] for a in (sums.cor_w, sums.cor_f, sums.sag_w, sums.sag_f))
    i_cor, i_sag = sums.slice_indices()

    def lines(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for buf in (placed.water, placed.fat):
            line = np.empty((len(rows), n_slices))
            kernels.placed_lines(buf, *placed.placement, n_ap, n_lr, n_slices, rows, cols, line)
            out.append(line[:, ::-1][:, TRIM_SLICES : n_slices - TRIM_SLICES])
        return out[0], out[1]

    coronal = lines(np.full(n_lr, i_cor, dtype=np.int64), np.arange(n_lr, dtype=np.int64))
    sagittal = lines(np.arange(keep, dtype=np.int64), np.full(keep, i_sag, dtype=np.int64))
    return _image_from_sums(cor_w, cor_f, sag_w, sag_f, coronal, sagittal)


def _projection_from_sums(coronal_sum: np.ndarray, sagittal_sum: np.ndarray) -> np.ndarray:
    """:func:`projection_channel` from the sums over AP (LR, HF) and over LR (AP, HF)."""
    return _side_by_side(minmax_to_u8(np.rot90(coronal_sum, 1)), minmax_to_u8(np.rot90(sagittal_sum, 1)))
