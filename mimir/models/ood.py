"""Out-of-distribution reference of a module: what its training images look like to its networks.

Every ensemble member ends in global average pooling: for an image it gives a
feature vector of ``d = 2048 * width / 64`` numbers (256 for the width-8 demo
module, 2048 for MIMIR's width-64 modules) just before the final layer. The K
members' vectors are concatenated (member 0 first) into one vector of K*d
numbers and cut into G groups of D = K*d/G: one group (the whole vector, so
that correlations between members count) when K*d <= :data:`MAX_JOINT`,
else one group per member. The reference holds, per group g, the mean
``mu_g`` (D,) over in-distribution images and the inverse ``P_g`` (D, D) of
the covariance, shrunk towards a multiple of the identity by the Ledoit-Wolf
rule (few images, many dimensions). The raw score of an image with grouped
features ``f_g`` is the mean over groups of the squared Mahalanobis distance
per dimension::

    raw = mean_g  (f_g - mu_g)^T P_g (f_g - mu_g) / D

and the reported score is ``raw / threshold``, where ``threshold`` is the
``quantile`` (default 0.995) of ``raw`` over held-out in-distribution images,
each scored by a reference that was fitted without it (cross-fitting, see
:func:`fit_reference`). So a score of 1 is the flag
line: about 1-2 % of in-distribution images score above 1 (the upper tail of
``raw`` is heavy, so a finite held-out set places the line with some
scatter), and an image scoring above 1 is flagged ``out_of_distribution:<module>``.

The arrays live in ``ood_reference.safetensors`` (tensors ``mean``: (G, D)
float32, ``precision``: (G, D, D) float32), named and hashed in
``module.json`` under ``ood_reference`` (:class:`OodSpec`), with the
precision of the features it was fitted on (``feature_precision``: ``fp32``,
or ``bf16`` for a reference fitted under ``--precision bf16``; a module.json
without the field was fitted in fp32, the only precision of earlier
versions). Pure NumPy except
:func:`pooled_features` and the file functions, which import torch /
safetensors lazily.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.errors import ModuleError
from mimir.utils.hashing import read_verified

if TYPE_CHECKING:  # pragma: no cover
    from mimir.models.resnet import ResNet50

#: File name of the reference inside a module folder.
REFERENCE_FILE = "ood_reference.safetensors"
#: Method name recorded in module.json.
METHOD = "mahalanobis-ledoit-wolf"
#: Default calibration quantile: the flag line. 0.99 let 2.8-3.3 % of 600 unseen in-distribution
#: demo images over (the tail is heavy); 0.995 lets 1.5 % over and flags every shifted set as before
#: (docs/ood.md).
DEFAULT_QUANTILE = 0.995
#: Fewest images accepted for the mean/covariance and for the calibration.
MIN_FIT = 20
MIN_CALIBRATION = 20
#: Precisions a reference's features may have been computed in (``mimir.utils.devices``).
FEATURE_PRECISIONS = ("fp32", "bf16")
#: Largest concatenated feature vector modelled with one joint covariance (4096: a 64 MiB precision).
MAX_JOINT = 4096


# --------------------------------------------------------------------------- numerics


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean (d,), shrunk covariance (d, d) and shrinkage (0..1) of samples ``x`` (n, d).

    The covariance is ``(1 - a) S + a (tr(S)/d) I`` with ``S`` the maximum
    likelihood covariance and ``a`` the Ledoit-Wolf (2004) estimate of the
    optimal shrinkage. Computed in float64.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need samples of shape (n >= 2, d), got {x.shape}")
    n, d = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    s = xc.T @ xc / n
    mu = float(np.trace(s)) / d
    # delta: squared distance of S from mu*I; beta: variance of the sample covariance estimate
    delta = float(np.sum((s - mu * np.eye(d)) ** 2)) / d
    x2 = xc**2
    beta = float(np.sum(x2.T @ x2) / n - np.sum(s**2)) / (d * n)
    beta = min(beta, delta)
    shrink = 0.0 if delta <= 0 else beta / delta
    cov = (1.0 - shrink) * s
    cov[np.diag_indices(d)] += shrink * mu
    return mean, cov, shrink


def precision_of(cov: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix (float64), symmetrised."""
    p = np.linalg.inv(np.asarray(cov, dtype=np.float64))
    return (p + p.T) / 2.0


def grouped(features: np.ndarray, groups: int) -> np.ndarray:
    """Member features (K, B, d) -> concatenated per image and cut into ``groups``: (G, B, K*d/G)."""
    f = np.asarray(features)
    if f.ndim != 3:
        raise ValueError(f"features must have shape (members, images, dims), got {f.shape}")
    k, b, d = f.shape
    if (k * d) % groups:
        raise ValueError(f"{k} x {d} features cannot be cut into {groups} groups")
    return f.transpose(1, 0, 2).reshape(b, groups, k * d // groups).transpose(1, 0, 2)


def default_groups(members: int, dim: int) -> int:
    """One joint group when members * dim <= MAX_JOINT, else one group per member."""
    return 1 if members * dim <= MAX_JOINT else members


def raw_scores(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Raw scores (B,) of grouped features (G, B, D) against ``mean`` (G, D), ``precision`` (G, D, D).

    Mean over the G groups of the squared Mahalanobis distance divided by D.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 3 or f.shape[0] != mean.shape[0] or f.shape[2] != mean.shape[1]:
        raise ValueError(f"features {f.shape} do not fit a reference of {mean.shape[0]} x {mean.shape[1]}")
    diff = f - np.asarray(mean, dtype=np.float64)[:, None, :]
    d2 = np.einsum("kbi,kij,kbj->kb", diff, np.asarray(precision, dtype=np.float64), diff)
    return d2.mean(axis=0) / f.shape[2]


@dataclass
class OodReference:
    """The arrays of a reference and its flag line.

    ``mean`` (G, D) and ``precision`` (G, D, D) float64 (G groups of the
    members' concatenated features, see :func:`grouped`); ``threshold`` the
    raw score at ``quantile`` of the calibration images; ``feature_precision``
    the precision (``fp32`` or ``bf16``) of the features it was fitted on.
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float = DEFAULT_QUANTILE
    shrinkage: list[float] = field(default_factory=list)
    feature_precision: str = "fp32"

    @property
    def groups(self) -> int:
        return int(self.mean.shape[0])

    @property
    def size(self) -> int:
        """Length of the members' concatenated feature vector (K * d)."""
        return int(self.mean.shape[0] * self.mean.shape[1])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Calibrated scores (B,) of member features (K, B, d): 1.0 is the flag line."""
        f = np.asarray(features)
        if f.ndim != 3 or f.shape[0] * f.shape[2] != self.size:
            raise ValueError(f"features {f.shape} do not fit a reference of {self.size} numbers")
        return raw_scores(grouped(f, self.groups), self.mean, self.precision) / self.threshold


#: Default number of cross-fitting folds of :func:`fit_reference`.
DEFAULT_FOLDS = 5


def _fit_groups(features_g: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Mean (G, D), precision (G, D, D) as float32-rounded float64, and shrinkages of grouped features (G, N, D)."""
    means, precs, shrink = [], [], []
    for g in range(features_g.shape[0]):
        m, cov, a = ledoit_wolf(features_g[g])
        means.append(m)
        precs.append(precision_of(cov))
        shrink.append(a)
    # rounded as stored: score with the float32 arrays that will be written
    mean = np.stack(means).astype(np.float32).astype(np.float64)
    prec = np.stack(precs).astype(np.float32).astype(np.float64)
    return mean, prec, shrink


def fit_reference(
    fit_features: np.ndarray,
    calibration_features: np.ndarray,
    *,
    quantile: float = DEFAULT_QUANTILE,
    groups: int | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> OodReference:
    """Fit a reference on in-distribution features and set its flag line.

    ``fit_features`` (K, N, d) and ``calibration_features`` (K, M, d) are the
    members' features of two sets of in-distribution images; ``N`` may be 0.
    The calibration images must not be images the networks were trained on
    (the networks map their training images closer together than new ones).

    With ``folds`` >= 2 (cross-fitting, the default): the mean and covariance
    are fitted on all N + M images; the flag line is the ``quantile`` of the
    calibration images' raw scores, each computed with a reference fitted on
    the fit images and the other folds of the calibration images (so that
    every calibration score is that of an image the reference has not seen,
    while the final reference uses every image). With ``folds`` < 2: the mean
    and covariance come from the fit images only and the flag line from the
    calibration images as they are.

    ``groups``: see :func:`grouped`; default :func:`default_groups`.
    """
    fit_features = np.asarray(fit_features, dtype=np.float64)
    calibration_features = np.asarray(calibration_features, dtype=np.float64)
    if fit_features.ndim != 3 or calibration_features.ndim != 3:
        raise ValueError("features must have shape (members, images, dims)")
    n, m = fit_features.shape[1], calibration_features.shape[1]
    if m < MIN_CALIBRATION:
        raise ValueError(f"need at least {MIN_CALIBRATION} held-out images to calibrate a reference, got {m}")
    cross = folds >= 2
    if (n + m if cross else n) < MIN_FIT + (MIN_CALIBRATION if cross else 0):
        raise ValueError(
            f"need at least {MIN_FIT + (MIN_CALIBRATION if cross else 0)} images to fit a reference, "
            f"got {n + m if cross else n}"
        )
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    k, _, d = calibration_features.shape
    groups = default_groups(k, d) if groups is None else groups
    fit_g, cal_g = grouped(fit_features, groups), grouped(calibration_features, groups)
    if cross:
        order = np.random.default_rng(seed).permutation(m)
        fold_of = np.empty(m, dtype=np.int64)
        fold_of[order] = np.arange(m) % min(folds, m)
        raw = np.empty(m)
        for f in range(min(folds, m)):
            out = fold_of == f
            mean_f, prec_f, _ = _fit_groups(np.concatenate([fit_g, cal_g[:, ~out]], axis=1))
            raw[out] = raw_scores(cal_g[:, out], mean_f, prec_f)
        mean, prec, shrink = _fit_groups(np.concatenate([fit_g, cal_g], axis=1))
    else:
        mean, prec, shrink = _fit_groups(fit_g)
        raw = raw_scores(cal_g, mean, prec)
    threshold = float(np.quantile(raw, quantile))
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"calibration gave an unusable threshold {threshold}")
    return OodReference(mean=mean, precision=prec, threshold=threshold, quantile=quantile, shrinkage=shrink)


# --------------------------------------------------------------------------- module.json record


@dataclass
class OodSpec:
    """``module.json``'s ``ood_reference`` entry: the file, its sha256 and the flag line."""

    file: str
    sha256: str
    threshold: float
    quantile: float = DEFAULT_QUANTILE
    method: str = METHOD
    #: how the reference was fitted: images, counts, command (free-form, JSON-serialisable)
    fitted: dict[str, Any] = field(default_factory=dict)
    #: precision of the features it was fitted on; None: absent from module.json (an older reference,
    #: fitted in fp32), and kept absent so that the module.json digest of older modules stays as it was
    feature_precision: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "method": self.method,
            "threshold": self.threshold,
            "quantile": self.quantile,
            **({"feature_precision": self.feature_precision} if self.feature_precision is not None else {}),
            "fitted": self.fitted,
        }

    @classmethod
    def from_json(cls, d: Any, where: str) -> OodSpec:
        import re

        def bad(msg: str) -> ModuleError:
            return ModuleError(f"ood_reference: {msg}", path=where, hint="Refit it with mimir fit-reference.")

        if not isinstance(d, Mapping):
            raise bad("not an object")
        f, h = d.get("file"), d.get("sha256")
        if not (isinstance(f, str) and f.endswith(".safetensors") and "/" not in f and "\\" not in f
                and not f.startswith(".")):
            raise bad(f"invalid file {f!r}")
        if not (isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h)):
            raise bad("invalid sha256")
        if d.get("method", METHOD) != METHOD:
            raise bad(f"unknown method {d.get('method')!r}")
        try:
            thr, q = float(d["threshold"]), float(d.get("quantile", DEFAULT_QUANTILE))
        except (KeyError, TypeError, ValueError):
            raise bad("threshold missing or not a number") from None
        if not (math.isfinite(thr) and thr > 0 and 0 < q < 1):
            raise bad("threshold must be a positive number and quantile in (0, 1)")
        fp = d.get("feature_precision")
        if fp is not None and fp not in FEATURE_PRECISIONS:
            raise bad(f"feature_precision must be one of {', '.join(FEATURE_PRECISIONS)}, got {fp!r}")
        fitted = d.get("fitted") or {}
        return cls(file=f, sha256=h, threshold=thr, quantile=q, fitted=dict(fitted) if isinstance(fitted, Mapping) else {},
                   feature_precision=fp)


# --------------------------------------------------------------------------- files


def reference_bytes(ref: OodReference) -> bytes:
    """The safetensors file of a reference (float32 arrays)."""
    import torch
    from safetensors.torch import save

    tensors = {
        "mean": torch.from_numpy(np.ascontiguousarray(ref.mean, dtype=np.float32)),
        "precision": torch.from_numpy(np.ascontiguousarray(ref.precision, dtype=np.float32)),
    }
    return save(tensors, metadata={"format": "mimir-ood-reference", "method": METHOD})


def load_reference(folder: Path, spec: OodSpec, *, module: str, size: int | None = None,
                   verify: bool = True) -> OodReference:
    """Read a module's reference file, checking its sha256 and shapes."""
    from safetensors.numpy import load as st_load

    hint = f"Refit it with: mimir fit-reference -m {module} IMAGES..."
    data = read_verified(Path(folder) / spec.file, spec.sha256, label=f"OOD reference {spec.file}", module=module,
                         hint=hint, verify=verify)
    try:
        arrays = st_load(data)
        mean, prec = arrays["mean"].astype(np.float64), arrays["precision"].astype(np.float64)
    except Exception as exc:  # noqa: BLE001  (safetensors raises several kinds on a damaged file)
        raise ModuleError(f"OOD reference {spec.file} is unreadable ({exc})", path=module, hint=hint) from None
    g = mean.shape[0] if mean.ndim == 2 else -1
    if mean.ndim != 2 or prec.shape != (g, mean.shape[1], mean.shape[1]) or (
        size is not None and g * mean.shape[1] != size
    ):
        raise ModuleError(
            f"OOD reference {spec.file} has shapes {mean.shape}/{prec.shape}"
            + (f", the module's members give {size} features" if size is not None else ""),
            path=module,
            hint=hint,
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(prec))):
        raise ModuleError(f"OOD reference {spec.file} holds non-finite values", path=module, hint=hint)
    return OodReference(mean=mean, precision=prec, threshold=spec.threshold, quantile=spec.quantile,
                        feature_precision=spec.feature_precision or "fp32")


def feature_dim(width: int) -> int:
    """Pooled feature size of a ResNet50 of ``width`` (2048 at width 64)."""
    return 2048 * width // 64


# --------------------------------------------------------------------------- features


def pooled_features(networks: Sequence[ResNet50], images: np.ndarray, *, batch_size: int = 32,
                    device: Any = "cpu") -> np.ndarray:
    """Pooled penultimate features (K, N, d) float32 of uint8 images (N, 3, 256, 256), fp32."""
    import torch

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (3, 256, 256):
        raise ValueError(f"expected images of shape (N, 3, 256, 256), got {images.shape}")
    out: list[list[np.ndarray]] = [[] for _ in networks]
    with torch.inference_mode():
        for s in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size])).to(device).float()
            for k, net in enumerate(networks):
                out[k].append(net.features(x).float().cpu().numpy())
    return np.stack([np.concatenate(o) for o in out])
