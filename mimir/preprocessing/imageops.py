"""Small image operations whose exact arithmetic is part of the image contract.

The published MIMIR modules were trained on images resized with OpenCV's
``cv2.resize(..., INTER_LINEAR)`` and masked with scikit-image's
``threshold_otsu``. Neither library is a dependency of mimir; these functions
reproduce their results bit for bit (the test suite checks this against the
real libraries where they are installed).
"""

from __future__ import annotations

import numpy as np

#: OpenCV's fixed-point precision for 8-bit linear resizing (INTER_RESIZE_COEF_BITS).
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _linear_taps(
    src_size: int, dst_size: int, clamp_weights: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights of OpenCV's linear resize along one axis.

    Returns ``(i0, i1, weights)``: two (dst_size,) int64 source indices and
    (dst_size, 2) int64 weights, each row summing to 2048. Pixel centres sit
    at +0.5. Outside the image OpenCV treats the axes differently: along x it
    moves the tap to the edge with weights (2048, 0) (``clamp_weights``);
    along y it keeps the fractional weights and clamps only the row indices.
    """
    # OpenCV: inv_scale = dst/src (double), scale = 1/inv_scale (double),
    # f = float((d + 0.5) * scale - 0.5), s = floor(f), f -= s (float32).
    scale = 1.0 / (float(dst_size) / float(src_size))
    d = np.arange(dst_size, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        low = s < 0
        f[low] = 0.0
        s[low] = 0
        high = s >= src_size - 1
        f[high] = 0.0
        s[high] = src_size - 1
    one = np.float32(1.0)
    # saturate_cast<short>(float) rounds half to even, like np.rint.
    w0 = np.rint((one - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    i0 = np.clip(s, 0, src_size - 1)
    i1 = np.clip(s + 1, 0, src_size - 1)
    return i0, i1, np.stack([w0, w1], axis=1)


def resize_bilinear_u8(image: np.ndarray, height: int = 256, width: int = 256) -> np.ndarray:
    """Resize a 2-D uint8 image exactly as ``cv2.resize(image, (width, height))``.

    OpenCV's default ``INTER_LINEAR`` for 8-bit images works in fixed point:
    the horizontal pass keeps ``src * w`` exactly (weights scaled by 2048),
    the vertical pass combines two rows with its SIMD formula
    ``((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16)``, rounded by ``(x + 2) >> 2``.

    Parameters
    ----------
    image:
        (rows, columns) uint8.
    height, width:
        Output size in pixels.

    Returns
    -------
    (height, width) uint8.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    src = image.astype(np.int64)
    xi0, xi1, xw = _linear_taps(src.shape[1], width, clamp_weights=True)
    yi0, yi1, yw = _linear_taps(src.shape[0], height, clamp_weights=False)
    # Horizontal pass: exact integers (up to 255 * 2048).
    rows = src[:, xi0] * xw[:, 0] + src[:, xi1] * xw[:, 1]  # (src_rows, width)
    # Vertical pass, OpenCV's vectorised fixed-point arithmetic.
    s0 = rows[yi0] >> 4
    s1 = rows[yi1] >> 4
    acc = ((s0 * yw[:, :1]) >> 16) + ((s1 * yw[:, 1:]) >> 16)
    return np.clip((acc + 2) >> 2, 0, 255).astype(np.uint8)


def resize_bilinear_float(image: np.ndarray, height: int = 256, width: int = 256) -> np.ndarray:
    """Resize a 2-D float image on the sampling grid of :func:`resize_bilinear_u8`, in float64.

    The same source taps and weights as OpenCV's 8-bit linear resize (so a map
    resized here lies exactly on the image it belongs to), without the
    fixed-point rounding: for maps and masks in the image's frame.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    src = np.asarray(image, dtype=np.float64)
    xi0, xi1, xw = _linear_taps(src.shape[1], width, clamp_weights=True)
    yi0, yi1, yw = _linear_taps(src.shape[0], height, clamp_weights=False)
    xw, yw = xw / _COEF_SCALE, yw / _COEF_SCALE
    rows = src[:, xi0] * xw[:, 0] + src[:, xi1] * xw[:, 1]
    return rows[yi0] * yw[:, :1] + rows[yi1] * yw[:, 1:]


def otsu_threshold(image: np.ndarray, nbins: int = 256) -> float:
    """Otsu threshold of one image, as ``skimage.filters.threshold_otsu``.

    The histogram has ``nbins`` bins over the image's own [min, max] range
    (NumPy's uniform-bin rule, bit for bit); the threshold is the centre of
    the bin that maximises the between-class variance. An image with a
    single value has that value as its threshold.

    Parameters
    ----------
    image:
        Any-dimensional float array (a 2-D slice in the pipeline).
    """
    lo = float(image.min())
    hi = float(image.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(image, bins=nbins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2.0
    hist = hist.astype(np.float64)
    weight1 = np.cumsum(hist)
    weight2 = np.cumsum(hist[::-1])[::-1]
    mean1 = np.cumsum(hist * centers) / weight1
    mean2 = (np.cumsum((hist * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[int(np.argmax(variance12))])


def minmax_to_u8(image: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1], scale by 255 and truncate to uint8.

    A constant image (max == min) becomes all zeros instead of NaN.
    """
    image = image.astype(np.float64, copy=False)
    lo = image.min()
    span = image.max() - lo
    if span == 0:
        return np.zeros(image.shape, dtype=np.uint8)
    return ((image - lo) / span * 255).astype(np.uint8)
