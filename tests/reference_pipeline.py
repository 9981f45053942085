"""A literal, slow transcription of preprocessing-spec.md sections 4-8, for tests.

Written independently of mimir.preprocessing.fusion / mimir.preprocessing.projection: per-voxel trilinear
formula over a full index grid, loop-based overlap handling, brute-force
slice-of-mass search, and scikit-image / OpenCV where they are installed.
The fast pipeline must agree with it.
"""

from __future__ import annotations

import numpy as np

from mimir.preprocessing.imageops import otsu_threshold as _our_otsu
from mimir.preprocessing.imageops import resize_bilinear_u8 as _our_resize

try:  # the real reference libraries, when installed (pip install .[reference])
    from skimage.filters import threshold_otsu
except ImportError:  # pragma: no cover
    threshold_otsu = _our_otsu
try:
    import cv2

    def resize256(img):
        return cv2.resize(img, (256, 256))
except ImportError:  # pragma: no cover

    def resize256(img):
        return _our_resize(img)


OUT = np.array((2.23214293, 2.23214293, 3.0))


def grid(positions, spacings, shapes):
    P = np.array(positions, dtype=np.float64)
    R = np.zeros_like(P)
    for i in range(len(P)):
        R[i] = (P[i] - P[0]) / OUT
    R[:, 0] -= R[:, 0].min()
    R[:, 1] -= R[:, 1].min()
    R[:, 2] *= -1
    R[:, [0, 1]] = R[:, [1, 0]]
    R_end = R.copy()
    for i in range(len(P)):
        R_end[i] += np.array(shapes[i]) * np.array(spacings[i]) / OUT
    W = np.around(R).astype(int)
    W_end = np.around(R_end).astype(int)
    return R, R_end, W, W_end


def resample(v, R, R_end, W, W_size):
    N = np.array(v.shape)
    scale = (R_end - R) / N
    off = R - W
    x, y, z = np.meshgrid(*[np.arange(s) for s in W_size], indexing="ij")

    def axis(coord, k):
        a = (coord - off[k]) / scale[k]
        a0 = np.trunc(a)
        a1 = a0 + 1
        a = np.clip(a, 0, N[k] - 1)
        a0 = np.clip(a0, 0, N[k] - 1)
        a1 = np.clip(a1, 0, N[k] - 1)
        return a - a0, a0.astype(int), a1.astype(int)

    da, a0, a1 = axis(x, 0)
    db, b0, b1 = axis(y, 1)
    dc, c0, c1 = axis(z, 2)
    v = v.astype(np.float64)
    c00 = v[a0, b0, c0] * (1 - da) + v[a1, b0, c0] * da
    c10 = v[a0, b1, c0] * (1 - da) + v[a1, b1, c0] * da
    c01 = v[a0, b0, c1] * (1 - da) + v[a1, b0, c1] * da
    c11 = v[a0, b1, c1] * (1 - da) + v[a1, b1, c1] * da
    c0_ = c00 * (1 - db) + c10 * db
    c1_ = c01 * (1 - db) + c11 * db
    return c0_ * (1 - dc) + c1_ * dc


def fuse(channel, positions, spacings):
    """channel: list of (rows, cols, n) arrays, sorted head first."""
    shapes = [c.shape for c in channel]
    R, R_end, W, W_end = grid(positions, spacings, shapes)
    W_size = W_end - W
    data = []
    for i, v in enumerate(channel):
        corners = np.concatenate([R[i], R_end[i]])
        if np.abs(corners - np.around(corners)).max() > 0.01 or np.sum(W_size[i] - np.array(v.shape)) != 0:
            v = resample(v, R[i], R_end[i], W[i], W_size[i])
        data.append(np.array(v, dtype=np.float64))
    S = len(data)
    overlaps = [0] * S
    for i in range(S - 1):
        overlap = W_end[i, 2] - W[i + 1, 2]
        if overlap > 8:
            cut = (overlap - 8) / 2.0
            ca, cb = int(np.floor(cut)), int(np.ceil(cut))
            data[i] = data[i][:, :, : W_size[i, 2] - ca]
            data[i + 1] = data[i + 1][:, :, cb:]
            W_end[i, 2] -= ca
            W_size[i, 2] -= ca
            W[i + 1, 2] += cb
            W_size[i + 1, 2] -= cb
            overlap = 8
        overlaps[i] = overlap
    data = [d.astype(np.float32) for d in data]
    for i in range(S):
        if i < S - 1:
            for j in range(overlaps[i]):
                data[i][:, :, W_size[i, 2] - 1 - j] *= (j + 1) / (overlaps[i] + 1.0)
        if i > 0:
            for j in range(overlaps[i - 1]):
                data[i][:, :, j] *= (j + 1) / (overlaps[i - 1] + 1.0)
    for i in range(S - 1):
        o = overlaps[i]
        mean_a = np.float64(np.mean(data[i + 1][:, :, o])) if o > 0 else 0
        mean_b = np.float64(np.mean(data[i][:, :, W_size[i, 2] - 1 - o])) if o > 0 else 0
        for j in range(o):
            target = mean_b + (mean_a - mean_b) * (j + 1) / (o + 1.0)
            cur = np.float64(np.mean(data[i + 1][:, :, j])) + np.float64(np.mean(data[i][:, :, W_size[i, 2] - o + j]))
            data[i][:, :, W_size[i, 2] - o + j] *= target / cur
            data[i + 1][:, :, j] *= target / cur
    vol = np.zeros(W_end.max(axis=0))
    for i in range(S):
        vol[W[i, 0] : W_end[i, 0], W[i, 1] : W_end[i, 1], W[i, 2] : W_end[i, 2]] += data[i]
    vol = np.swapaxes(np.flip(vol, 2), 0, 1)
    return vol[:, :, 4 : vol.shape[2] - 4]


def slice_of_mass(mask, mass, axis):
    for i in range(mask.shape[axis]):
        index = [slice(None)] * 3
        index[axis] = slice(0, i)
        if np.count_nonzero(mask[tuple(index)]) >= mass:
            return i
    return 0


def norm_u8(img):
    img = img.astype(float)
    return ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)


def image(water, fat):
    """Return (image, (coronal index, sagittal index))."""
    s = water + fat
    s[s == 0] = 1
    ff = 1000 * fat / s
    t = np.mean([threshold_otsu(s[:, i, :]) for i in range(s.shape[1])])
    mask = s >= t
    n1 = water.shape[1] - 22
    chans = []
    for v in (water, fat):
        v = v[:, :n1, :]
        cor = norm_u8(np.rot90(np.sum(v, axis=1), 1))
        sag = norm_u8(np.rot90(np.sum(v, axis=0), 1))
        chans.append(resize256(np.concatenate([cor, sag], 1)))
    m = mask[:, :n1, :]
    f = ff[:, :n1, :]
    mass = np.count_nonzero(m)
    half = np.count_nonzero(m[: m.shape[0] // 2])
    ic = slice_of_mass(m, mass / 2, 1)
    isag = slice_of_mass(m, half / 2, 0)
    enc = lambda x: (np.clip(np.rot90(x, 1) / 500.0, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    chans.append(resize256(np.concatenate([enc(f[:, ic, :]), enc(f[isag, :, :])], 1)))
    return np.stack(chans), (ic, isag)
