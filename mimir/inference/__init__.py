"""Inference: preprocessed images through module ensembles to calibrated predictions.

- :mod:`~mimir.inference.predictor`: :class:`Predictor` (modules loaded once, batched, any device);
- :mod:`~mimir.inference.predictions`: network output to values in real units, the ensemble
  mixture, intervals, and the per-subject :class:`SubjectResult` that every writer serialises;
- :mod:`~mimir.inference.saliency`: saliency maps (Grad-CAM, SmoothGrad, integrated gradients);
- :mod:`~mimir.inference.explain`: :class:`Explainer`, the maps of every target of whole modules.

>>> from mimir.inference import Predictor
>>> results = Predictor(["module_bodycomp"]).predict_files(["1000001_20201_2_0.zip"])
"""

from __future__ import annotations

from mimir.utils.lazy import lazy_getattr

_EXPORTS = {
    "Predictor": "mimir.inference.predictor",
    "predict": "mimir.inference.predictor",
    "resolve_modules": "mimir.inference.predictor",
    "SubjectResult": "mimir.inference.predictions",
    "TargetPrediction": "mimir.inference.predictions",
    "Explainer": "mimir.inference.explain",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
