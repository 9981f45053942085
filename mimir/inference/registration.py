"""Bringing subjects' images into one anatomical frame (2-D registration with SimpleITK).

The ``mimir-v1`` image holds two views side by side: the coronal view in
columns ``[0, VIEW_SPLIT)`` and the sagittal view in ``[VIEW_SPLIT, 256)``
(UK Biobank's fused grid is 224 columns left-right and 174 - 22 rows
front-back, resized together to 256 columns: 224 / 376 x 256 = 152.5). Each
view of a subject is registered to the same view of a template on its water
and fat channels:

1. **affine**, initialised by the centres of mass, on the body signal
   (water + fat), mean squares, multi-resolution (4, 2, 1 px shrink);
2. **deformable**: fast symmetric-forces demons on the water channel and then
   on the fat channel, continuing from the water's field (the channels are
   min-max normalised projections, so the same tissue has the same
   intensity in every subject, which demons needs), Gaussian regularisation.

The result of a registration is a **sampling map** ``coords`` (2, 256, 256)
float64: for each template pixel, the (row, column) in the subject's image
it takes its value from (NaN where that falls outside the subject's view).
:func:`warp` applies it to any (256, 256) array in the subject's frame (an
image channel, a saliency map, an organ mask) by bilinear interpolation, so
maps travel with exactly the transform of the image.

Quality (:class:`RegistrationQuality`): the Dice of the template's and the
subject's body masks (Otsu threshold of water + fat) before and after, and
the mean absolute water and fat difference (0..255 units) before and after.
A registration whose body Dice after is below :data:`MIN_BODY_DICE` has
failed (:func:`register` says why and the caller leaves the subject out).

SimpleITK is an optional extra (``pip install 'ukb-mimir[register]'``);
:func:`require_simpleitk` raises a one-line :class:`~mimir.errors.UsageError`
when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mimir.errors import UsageError
from mimir.preprocessing.imageops import otsu_threshold
from mimir.utils.install import extra_hint

#: First column of the sagittal view in a 256-column image.
VIEW_SPLIT = 152
#: Image side, pixels.
SIZE = 256
#: Registration fails when the body masks' Dice after registration is below this.
MIN_BODY_DICE = 0.85


@dataclass(frozen=True)
class RegistrationOptions:
    """Parameters of :func:`register` (pixels; defaults measured on synthetic and phantom subjects)."""

    affine_iterations: int = 100
    demons_iterations: int = 40
    demons_sigma_px: float = 2.0
    deformable: bool = True


@dataclass
class RegistrationQuality:
    """How well a subject fits the template: body-mask Dice and mean |difference| of water and fat (0..255)."""

    body_dice_before: float
    body_dice_after: float
    residual_before: float
    residual_after: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


@dataclass
class Registration:
    """A subject registered to a template: the sampling map, its quality, and why it failed (or ``None``)."""

    coords: np.ndarray
    quality: RegistrationQuality
    error: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def require_simpleitk() -> Any:
    """The SimpleITK module, or a one-line UsageError saying how to install it."""
    try:
        import SimpleITK as sitk  # noqa: N813
    except ImportError:
        raise UsageError(
            "registration needs SimpleITK, which is not installed",
            hint=extra_hint("register"),
        ) from None
    return sitk


def view_slices() -> tuple[slice, slice]:
    """Column ranges of the coronal and the sagittal view."""
    return slice(0, VIEW_SPLIT), slice(VIEW_SPLIT, SIZE)


def body_mask(image: np.ndarray) -> np.ndarray:
    """(256, 256) bool: water + fat at or above their Otsu threshold, per view."""
    signal = np.asarray(image[0], np.float64) + np.asarray(image[1], np.float64)
    out = np.zeros(signal.shape, bool)
    for cols in view_slices():
        v = signal[:, cols]
        out[:, cols] = v >= otsu_threshold(v)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def identity_coords() -> np.ndarray:
    """The sampling map of the identity: (2, 256, 256) float64 (row, column) of every pixel."""
    rr, cc = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([rr, cc]).astype(np.float64)


def warp(array: np.ndarray, coords: np.ndarray, order: int = 1) -> np.ndarray:
    """``array`` (256, 256) in a subject's frame resampled into the template's frame: (256, 256) float64.

    Bilinear (``order=1``) or nearest (``order=0``); template pixels whose
    source lies outside the subject's view (``coords`` NaN) become 0.
    """
    from scipy.ndimage import map_coordinates

    valid = np.isfinite(coords).all(axis=0)
    safe = np.where(valid, coords, 0.0)
    out = map_coordinates(np.asarray(array, np.float64), safe, order=order, mode="constant", cval=0.0)
    out[~valid] = 0.0
    return out


def warp_image(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """A (3, 256, 256) uint8 image resampled into the template's frame (bilinear, rounded)."""
    return np.stack([np.clip(np.rint(warp(ch, coords)), 0, 255) for ch in image]).astype(np.uint8)


def _sitk_image(sitk: Any, array: np.ndarray) -> Any:
    return sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))


def _register_view(sitk: Any, fixed: np.ndarray, moving: np.ndarray, opts: RegistrationOptions) -> np.ndarray:
    """Sampling map of one view: (2, rows, cols) (row, column) in the moving view, float64.

    ``fixed`` and ``moving``: (2, rows, cols) water and fat of the view.
    """
    f_sig, m_sig = _sitk_image(sitk, fixed.sum(axis=0)), _sitk_image(sitk, moving.sum(axis=0))
    affine = sitk.CenteredTransformInitializer(f_sig, m_sig, sitk.AffineTransform(2),
                                               sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                 numberOfIterations=opts.affine_iterations,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SetInitialTransform(affine, inPlace=True)
    reg.Execute(f_sig, m_sig)
    rows, cols = fixed.shape[1:]
    total = sitk.CompositeTransform(2)
    total.AddTransform(affine)
    if opts.deformable:
        field = sitk.Image([cols, rows], sitk.sitkVectorFloat64, 2)
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(opts.demons_iterations)
        demons.SetStandardDeviations(opts.demons_sigma_px)
        for ch in (0, 1):  # water, then fat from the water's field
            f_img = _sitk_image(sitk, fixed[ch])
            m_img = sitk.Resample(_sitk_image(sitk, moving[ch]), f_img, affine, sitk.sitkLinear, 0.0)
            field = demons.Execute(f_img, m_img, field)
        # the displacement acts on template points first, then the affine: p -> A(p + d(p))
        total.AddTransform(sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64)))
    disp = sitk.TransformToDisplacementField(total, sitk.sitkVectorFloat64, [cols, rows])
    d = sitk.GetArrayFromImage(disp)  # (rows, cols, 2): (dx = column, dy = row)
    rr, cc = np.mgrid[0:rows, 0:cols].astype(np.float64)
    return np.stack([rr + d[..., 1], cc + d[..., 0]])


def register(image: np.ndarray, template: np.ndarray, options: RegistrationOptions | None = None) -> Registration:
    """Register a subject's (3, 256, 256) image to a template image of the same shape.

    Each view is registered on its own (affine, then demons on water and
    fat); see the module docstring. Never raises for a bad fit: a failed
    registration comes back with ``error`` set (the body masks' Dice after,
    or SimpleITK's message) and the identity map.
    """
    import time

    sitk = require_simpleitk()
    opts = options or RegistrationOptions()
    started = time.perf_counter()
    image, template = np.asarray(image, np.float64), np.asarray(template, np.float64)
    for name, a in (("image", image), ("template", template)):
        if a.shape != (3, SIZE, SIZE):
            raise ValueError(f"{name}: expected shape (3, {SIZE}, {SIZE}), got {a.shape}")
    coords = np.full((2, SIZE, SIZE), np.nan)
    error = None
    try:
        for cols in view_slices():
            c = _register_view(sitk, template[:2, :, cols], image[:2, :, cols], opts)
            c[1] += cols.start
            outside = (c[1] < cols.start - 0.5) | (c[1] > cols.stop - 0.5) | (c[0] < -0.5) | (c[0] > SIZE - 0.5)
            c[:, outside] = np.nan
            coords[:, :, cols] = c
    except RuntimeError as exc:  # SimpleITK reports a failed optimisation as RuntimeError
        error = f"registration failed: {str(exc).strip().splitlines()[-1][:200]}"
        coords = identity_coords()
    quality = _quality(image, template, coords)
    if error is None and quality.body_dice_after < MIN_BODY_DICE:
        error = f"body masks overlap too little after registration (Dice {quality.body_dice_after:.2f} < {MIN_BODY_DICE})"
    return Registration(coords=coords, quality=quality, error=error, seconds=time.perf_counter() - started)


def _quality(image: np.ndarray, template: np.ndarray, coords: np.ndarray) -> RegistrationQuality:
    fixed_mask = body_mask(template)
    warped = np.stack([warp(image[0], coords), warp(image[1], coords)])
    return RegistrationQuality(
        body_dice_before=dice(fixed_mask, body_mask(image)),
        body_dice_after=dice(fixed_mask, body_mask(warped)),
        residual_before=float(np.abs(image[:2] - template[:2]).mean()),
        residual_after=float(np.abs(warped - template[:2]).mean()),
    )
