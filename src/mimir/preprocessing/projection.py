"""From fused water and fat volumes to the 3 x 256 x 256 ``mimir-v1`` image.

Spec: ``preprocessing-spec.md`` sections 7 and 8. Volumes are (left-right,
anterior-posterior, head-foot) with the head at the end of the last axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    counts_ap = mask.sum(axis=(0, 2))
    counts_lr = mask.sum(axis=(1, 2))
    mass = int(counts_ap.sum())
    mass_half = int(counts_lr[: mask.shape[0] // 2].sum())
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
    body = body_mask(water, fat)
    keep = slice(0, water.shape[1] - BED_ROWS)
    return np.stack(
        [
            projection_channel(water[:, keep, :]),
            projection_channel(fat[:, keep, :]),
            fat_fraction_channel(fat[:, keep, :], body.signal[:, keep, :], body.mask[:, keep, :]),
        ]
    )
