"""Saliency maps for whole modules: every target of every requested module for one image.

:class:`Explainer` loads the modules once (through
:class:`~mimir.inference.predictor.Predictor`, in fp32) and, for a
(3, 256, 256) uint8 image, returns the prediction and the ensemble saliency
map of each requested target (:mod:`mimir.inference.saliency`):

>>> ex = Explainer(["phantom-demo"], targets=["liver_fat_percent"])
>>> for item in ex.explain(image):
...     item.module, item.target, item.mean, item.saliency.shape   # (256, 256), unit sum
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mimir.errors import UsageError
from mimir.inference.saliency import (
    METHOD_DESCRIPTIONS,
    METHODS,
    SaliencyOptions,
    ensemble_saliency,
    normalise,
)


@dataclass
class TargetSaliency:
    """The saliency map of one target of one module for one image.

    ``saliency``: (256, 256) float32, non-negative, unit sum (ensemble mean
    of unit-sum member maps). ``mean``/``sd``: the prediction, in ``unit``.
    """

    module: str
    module_version: str
    target: str
    unit: str
    mean: float
    sd: float
    saliency: np.ndarray


class Explainer:
    """Modules loaded once; saliency maps of their targets for one image at a time.

    Parameters
    ----------
    modules:
        Module names or folders (default: every installed module).
    targets:
        Target names to explain (default: every target of the modules). An
        unknown name is a :class:`UsageError` that lists the known ones.
    method:
        One of :data:`~mimir.inference.saliency.METHODS`.
    device, gpu:
        As for :class:`~mimir.inference.predictor.Predictor` (fp32 always).
    """

    def __init__(
        self,
        modules: Iterable[str | os.PathLike[str]] | None = None,
        *,
        targets: Sequence[str] | None = None,
        method: str = "gradcam",
        options: SaliencyOptions | None = None,
        device: str = "auto",
        gpu: int | None = None,
    ) -> None:
        from mimir.inference.predictor import Predictor

        if method not in METHODS:
            raise UsageError(f"unknown saliency method {method!r}", hint=f"Choose one of: {', '.join(METHODS)}.")
        self.method = method
        self.options = options or SaliencyOptions()
        self.predictor = Predictor(modules, device=device, gpu=gpu, precision="fp32", batch_size=1)
        known = [t.name for lm in self.predictor.loaded for t in lm.spec.targets]
        wanted = list(dict.fromkeys(targets)) if targets else known
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise UsageError(
                f"unknown target(s) {', '.join(unknown)} for module(s) "
                f"{', '.join(lm.spec.name for lm in self.predictor.loaded)}",
                hint=f"Known targets: {', '.join(known)}.",
            )
        self.targets = wanted

    @property
    def description(self) -> str:
        """What the maps are, e.g. "Grad-CAM on the last convolutional block (layer4), ensemble mean"."""
        return METHOD_DESCRIPTIONS[self.method]

    def identity(self) -> list[dict[str, object]]:
        """Provenance of the loaded modules (name, version, member hashes, digest) and their intended use."""
        return [{**ident, "intended_use": lm.spec.intended_use}
                for ident, lm in zip(self.predictor.identity(), self.predictor.loaded)]

    @property
    def synthetic_modules(self) -> list[str]:
        """Names of the loaded modules marked synthetic-demo (their maps explain a demonstration network)."""
        return [lm.spec.name for lm in self.predictor.loaded if lm.spec.synthetic]

    def explain(self, image: np.ndarray) -> list[TargetSaliency]:
        """Prediction and saliency map of each requested target for a (3, 256, 256) uint8 image."""
        image = np.asarray(image)
        per_module = self.predictor.predict_arrays(image[None])
        out: list[TargetSaliency] = []
        for lm, (mean, var) in zip(self.predictor.loaded, per_module):
            chosen = [j for j, t in enumerate(lm.spec.targets) if t.name in self.targets]
            if not chosen:
                continue
            maps = ensemble_saliency(
                lm.networks, image, [2 * j for j in chosen], self.method, self.options, str(self.predictor.device)
            )
            for k, j in enumerate(chosen):
                t = lm.spec.targets[j]
                out.append(TargetSaliency(
                    module=lm.spec.name, module_version=lm.spec.version, target=t.name, unit=t.unit,
                    mean=float(mean[0, j]), sd=float(np.sqrt(var[0, j])), saliency=maps[k],
                ))
        return out


class Aggregate:
    """Running mean of unit-sum maps (and of the images) per (module, target)."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str], np.ndarray] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.image_sum: np.ndarray | None = None
        self.images = 0

    def add(self, image: np.ndarray, items: Sequence[TargetSaliency]) -> None:
        img = np.asarray(image, dtype=np.float64)
        self.image_sum = img if self.image_sum is None else self.image_sum + img
        self.images += 1
        for it in items:
            key = (it.module, it.target)
            m = normalise(it.saliency)
            self.sums[key] = self.sums.get(key, 0) + m
            self.counts[key] = self.counts.get(key, 0) + 1

    def mean_image(self) -> np.ndarray:
        """The mean image (3, 256, 256) uint8 of the inputs added."""
        if self.image_sum is None:
            raise ValueError("no images")
        return np.clip(np.rint(self.image_sum / self.images), 0, 255).astype(np.uint8)

    def maps(self) -> dict[tuple[str, str], np.ndarray]:
        """Mean unit-sum map per (module, target), float32 (256, 256)."""
        return {k: (s / self.counts[k]).astype(np.float32) for k, s in self.sums.items()}
