"""Fit a module's out-of-distribution reference on a user's own images (``mimir fit-reference``).

Imported MIMIR modules come without their training images, so they carry no
reference and their OOD score is empty. :func:`fit_module_reference` fits one
on images the user supplies (subject zips or ``.npy`` images, no labels
needed): the module's networks give each image's pooled features; the mean
and shrunk covariance are fitted on all of them, and the flag line is the
99.5th percentile of the images' scores, each taken from a reference fitted on
the other four fifths (5-fold cross-fitting, see :mod:`mimir.models.ood`).

The trade-off: the reference then describes the user's data, not the
module's training data. It flags subjects unlike the bulk of the user's
release (artefacts, other protocols, unusual bodies), which is what a
screening step needs, but it cannot tell whether the release as a whole
differs from what the module was trained on; and whatever odd subjects the
fitting images contain become, in part, "normal". Fit on a few thousand
subjects of the release (2,000 is a good size: the covariance of 2048
features per member needs many images) drawn without a known problem.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mimir import __version__
from mimir.errors import MimirError, UsageError
from mimir.models.modules import ModuleSpec, set_reference
from mimir.models.ood import (
    DEFAULT_QUANTILE,
    MIN_CALIBRATION,
    MIN_FIT,
    OodReference,
    fit_reference,
)
from mimir.utils.discovery import expand


@dataclass
class FitResult:
    """What :func:`fit_module_reference` did."""

    spec: ModuleSpec
    reference: OodReference
    fit_images: int
    calibration_images: int
    failed: list[str]
    #: calibrated scores of the images with the final reference (fewer above 1.0 than the cross-fitted 1 %)
    calibration_scores: np.ndarray


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Files as given; a folder stands for its subject zips and ``.npy`` images, searched as
    ``mimir predict`` and ``batch`` search (:func:`mimir.utils.discovery.expand`).
    """
    for item in inputs:
        if not Path(item).expanduser().exists():
            raise UsageError("no such file or folder", path=os.fspath(item))
    return expand(inputs)


def fit_module_reference(
    module: str | os.PathLike[str] | ModuleSpec,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    quantile: float = DEFAULT_QUANTILE,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 16,
    cache: bool = True,
    allow_builtin: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> FitResult:
    """Fit and store the OOD reference of ``module`` on the images ``inputs``.

    ``inputs`` are subject zips, ``.npy`` images or folders of them. Images
    that cannot be read are skipped (listed in the result). The reference is
    written into the module folder and recorded, hashed, in its module.json
    (replacing any earlier one); the members are not touched. Built-in modules
    ship with their reference and are refused unless ``allow_builtin``.
    """
    from mimir.inference.predictor import Predictor, resolve_modules
    from mimir.preprocessing.pipeline import load_input

    (spec,) = resolve_modules([module])
    if spec.builtin and not allow_builtin:
        raise UsageError(
            "is built into mimir and ships with its reference",
            path=spec.name,
            hint="Fit a reference only for installed modules (mimir list-modules shows them).",
        )
    files = expand_inputs(inputs)
    if len(files) < MIN_FIT + MIN_CALIBRATION:
        raise UsageError(
            f"{len(files)} image(s) given; fitting a reference needs at least {MIN_FIT + MIN_CALIBRATION}",
            hint="Give a folder of subjects (a few thousand is best).",
        )
    bare = copy.copy(spec)
    bare.ood = None  # an earlier (even a damaged) reference must not stop the refit
    predictor = Predictor([bare], device=device, batch_size=batch_size)
    feats: list[np.ndarray] = []
    failed: list[str] = []
    for start in range(0, len(files), batch_size):
        chunk, images = files[start : start + batch_size], []
        for f in chunk:
            try:
                images.append(load_input(f, cache=cache))
            except MimirError as exc:
                failed.append(str(exc))
            except Exception as exc:  # noqa: BLE001  (one odd file must not stop the fit)
                failed.append(f"{f}: unexpected error while reading ({type(exc).__name__}: {exc})")
        if images:
            feats.append(predictor.features(np.stack(images))[0])
        if on_progress is not None:
            on_progress(len(chunk))
    n = sum(f.shape[1] for f in feats)
    if n < MIN_FIT + MIN_CALIBRATION:
        raise UsageError(
            f"only {n} of {len(files)} image(s) could be read; fitting a reference needs at least "
            f"{MIN_FIT + MIN_CALIBRATION}"
        )
    all_feats = np.concatenate(feats, axis=1)
    try:
        ref = fit_reference(all_feats[:, :0], all_feats, quantile=quantile, seed=seed)
    except ValueError as exc:
        raise UsageError(f"cannot fit a reference: {exc}", path=spec.name) from None
    ref.feature_precision = predictor.precision  # fp32 unless the caller opted into bf16
    fitted: dict[str, Any] = {
        "by": "mimir fit-reference",
        "images": "the user's images (not the module's training data)",
        "fit_images": int(n),
        "calibration_images": int(n),
        "split": f"all images, 5-fold cross-fitted flag line (seed {seed})",
        "mimir_version": __version__,
    }
    new_spec = set_reference(spec, ref, fitted=fitted)
    return FitResult(
        spec=new_spec,
        reference=ref,
        fit_images=int(n),
        calibration_images=int(n),
        failed=failed,
        calibration_scores=ref.scores(all_feats),
    )
