"""Saliency maps: which pixels of the image drive a module's prediction of a target.

Three methods, all explaining the **standardised mean output** of a target
(the network output that becomes the prediction; its log variance is not
explained):

``gradcam`` (default)
    Grad-CAM (Selvaraju et al. 2017) on the output of the last convolutional
    block (``layer4``; an 8 x 8 grid for a 256 x 256 image): the activations
    weighted by the spatial mean of their gradients, summed over channels,
    kept where positive, and upsampled bilinearly to 256 x 256. For these
    networks (global average pooling, then one linear layer) it equals the
    class activation map of the target's row of ``fc``. For a regression
    target it shows the evidence that *raises* the prediction; a member whose
    evidence is negative everywhere gives an all-zero map (which counts as
    zero in the ensemble mean).
``guided-gradcam``
    Guided Grad-CAM (Selvaraju et al. 2017): the Grad-CAM map above,
    upsampled, times guided backpropagation (Springenberg et al. 2015), the
    input gradient computed with every ReLU passing back only positive
    gradients through positive activations; the map is the Grad-CAM map
    times the absolute guided gradient summed over the 3 channels. Pixel
    resolution inside the Grad-CAM cells that raise the prediction.
``smoothgrad``
    SmoothGrad (Smilkov et al. 2017): the gradient of the output with respect
    to the input pixels, averaged over ``samples`` copies of the image with
    Gaussian noise (``noise`` x the image's value range); the map is the
    absolute averaged gradient summed over the 3 channels.
``integrated-gradients``
    Integrated gradients (Sundararajan et al. 2017) from a black image: the
    input times the mean gradient along ``steps`` points of the straight path
    from black to the image (midpoint rule); the map is the absolute
    attribution summed over the 3 channels.

Every map is non-negative, float32, shaped (256, 256) like one image channel
(rows head to knee; columns: the coronal half, then the sagittal half). The
maps of an ensemble's members are each scaled to unit sum and then averaged,
so that every member counts equally; the result has unit sum (an all-zero
map stays zero). :func:`normalise` scales a map to unit sum for aggregation.

Pure functions of (networks, image); torch is imported inside them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Names accepted by ``method=``.
METHODS: tuple[str, ...] = ("gradcam", "guided-gradcam", "smoothgrad", "integrated-gradients")
#: What each method is, for outputs and help texts.
METHOD_DESCRIPTIONS: dict[str, str] = {
    "gradcam": "Grad-CAM on the last convolutional block (layer4), ensemble mean",
    "guided-gradcam": "guided Grad-CAM (Grad-CAM on layer4 x guided backpropagation), ensemble mean",
    "smoothgrad": "SmoothGrad (absolute input gradient, noisy copies averaged), ensemble mean",
    "integrated-gradients": "integrated gradients from a black image (absolute attribution), ensemble mean",
}
#: SmoothGrad defaults: noisy copies, and noise sd as a fraction of the 0..255 range.
SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_NOISE = 0.1
#: Integrated-gradients default number of path points.
IG_STEPS = 32
#: Side of the images (pixels).
SIZE = 256


@dataclass(frozen=True)
class SaliencyOptions:
    """Parameters of the pixel-level methods (ignored by Grad-CAM)."""

    samples: int = SMOOTHGRAD_SAMPLES
    noise: float = SMOOTHGRAD_NOISE
    steps: int = IG_STEPS
    seed: int = 0


def check_method(method: str) -> str:
    """``method`` if known, else ValueError naming the known ones."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose one of: {', '.join(METHODS)}")
    return method


def normalise(saliency: np.ndarray) -> np.ndarray:
    """``saliency`` (any shape, non-negative) scaled to unit sum, float64; zeros stay zeros."""
    s = np.asarray(saliency, dtype=np.float64)
    total = float(s.sum())
    return s / total if total > 0 else np.zeros_like(s)


def _trunk(net: Any, x: torch.Tensor) -> torch.Tensor:
    """Activations of the last convolutional block, (B, C, h, w)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def _head(net: Any, feats: torch.Tensor) -> torch.Tensor:
    import torch

    return net.fc(torch.flatten(net.avgpool(feats), 1))


def _gradcam(net: Any, x: torch.Tensor, outputs: Sequence[int]) -> np.ndarray:
    """(T, 256, 256) Grad-CAM maps of one network for one image x (1, 3, H, W)."""
    import torch
    import torch.nn.functional as F

    feats = _trunk(net, x)
    out = _head(net, feats)
    maps = []
    for k, o in enumerate(outputs):
        (grad,) = torch.autograd.grad(out[0, o], feats, retain_graph=k < len(outputs) - 1)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * feats).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        maps.append(cam[0, 0].detach().cpu().numpy())
    return np.stack(maps)


@functools.lru_cache(maxsize=1)
def _guided_relu() -> Any:
    """A ReLU autograd function whose backward pass lets only positive gradients through positive inputs."""
    import torch

    class GuidedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, inp: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(inp)
            return inp.clamp(min=0)

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            (inp,) = ctx.saved_tensors
            return grad.clamp(min=0) * (inp > 0).to(grad.dtype)

    return GuidedReLU


def _guided_gradients(net: Any, x: torch.Tensor, outputs: Sequence[int]) -> list[np.ndarray]:
    """Guided-backpropagation input gradients of one image x (1, 3, H, W): (3, H, W) per output.

    Every ``torch.nn.ReLU`` of the network (torchvision's layout: one per
    block, applied three times, and the stem's) runs as :func:`_guided_relu`
    for this call only (guided backpropagation); the network is left as it was.
    """
    import torch

    relus = [m for m in net.modules() if isinstance(m, torch.nn.ReLU)]
    for m in relus:
        m.forward = _guided_relu().apply  # instance attribute: shadows nn.ReLU.forward
    try:
        return [g[0] for g in _input_gradients(net, x, outputs)]
    finally:
        for m in relus:
            del m.forward


def _guided_gradcam(net: Any, x: torch.Tensor, outputs: Sequence[int]) -> np.ndarray:
    cams = _gradcam(net, x, outputs)
    guided = _guided_gradients(net, x, outputs)
    return np.stack([cam * np.abs(g).sum(axis=0) for cam, g in zip(cams, guided)])


def _input_gradients(net: Any, batch: torch.Tensor, outputs: Sequence[int]) -> list[np.ndarray]:
    """Per output, the gradient of that output w.r.t. each input of ``batch``: (N, 3, H, W) each.

    The images of a batch do not interact (BatchNorm in eval mode), so the
    gradient of the batch sum is the per-image gradient.
    """
    import torch

    batch = batch.detach().requires_grad_(True)
    out = net(batch)
    grads = []
    for k, o in enumerate(outputs):
        (g,) = torch.autograd.grad(out[:, o].sum(), batch, retain_graph=k < len(outputs) - 1)
        grads.append(g.detach().cpu().numpy().astype(np.float64))
    return grads


def _smoothgrad(net: Any, x: torch.Tensor, outputs: Sequence[int], opts: SaliencyOptions) -> np.ndarray:
    import torch

    gen = torch.Generator(device="cpu").manual_seed(opts.seed)
    noise = torch.randn((opts.samples, *x.shape[1:]), generator=gen) * (opts.noise * 255.0)
    batch = x.repeat(opts.samples, 1, 1, 1) + noise.to(x.device)
    grads = _input_gradients(net, batch, outputs)
    return np.stack([np.abs(g.mean(axis=0)).sum(axis=0) for g in grads])


def _integrated_gradients(net: Any, x: torch.Tensor, outputs: Sequence[int], opts: SaliencyOptions) -> np.ndarray:
    import torch

    alphas = (torch.arange(opts.steps, dtype=torch.float32) + 0.5) / opts.steps
    batch = alphas.to(x.device)[:, None, None, None] * x
    grads = _input_gradients(net, batch, outputs)
    image = x[0].detach().cpu().numpy().astype(np.float64)
    return np.stack([np.abs(image * g.mean(axis=0)).sum(axis=0) for g in grads])


def member_saliency(
    net: Any,
    image: np.ndarray,
    outputs: Sequence[int],
    method: str = "gradcam",
    options: SaliencyOptions | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Saliency maps of one network: (T, 256, 256) float64, non-negative, not normalised.

    ``image``: (3, 256, 256) uint8 (or float 0..255). ``outputs``: indices
    of the network outputs to explain (for target t of a mean-variance
    network, ``2 * t``). The network is put in eval mode; its parameters are
    not changed.
    """
    import torch

    check_method(method)
    opts = options or SaliencyOptions()
    if image.shape != (3, SIZE, SIZE):
        raise ValueError(f"expected an image of shape (3, {SIZE}, {SIZE}), got {image.shape}")
    net = net.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    with torch.enable_grad():
        if method == "gradcam":
            maps = _gradcam(net, x, outputs)
        elif method == "guided-gradcam":
            maps = _guided_gradcam(net, x, outputs)
        elif method == "smoothgrad":
            maps = _smoothgrad(net, x, outputs, opts)
        else:
            maps = _integrated_gradients(net, x, outputs, opts)
    return np.maximum(np.asarray(maps, dtype=np.float64), 0.0)


def ensemble_saliency(
    networks: Sequence[Any],
    image: np.ndarray,
    outputs: Sequence[int],
    method: str = "gradcam",
    options: SaliencyOptions | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Mean over members of each member's unit-sum map: (T, 256, 256) float32, unit sum per target."""
    if not networks:
        raise ValueError("no networks to explain")
    total = np.zeros((len(outputs), SIZE, SIZE))
    for net in networks:
        maps = member_saliency(net, image, outputs, method, options, device)
        total += np.stack([normalise(m) for m in maps])
    return (total / len(networks)).astype(np.float32)


def target_outputs(num_targets: int, targets: Sequence[int] | None = None) -> list[int]:
    """Output indices of the standardised means of ``targets`` (default: all) of a mean-variance network."""
    chosen = range(num_targets) if targets is None else targets
    return [2 * t for t in chosen]


# --------------------------------------------------------------------------- anatomy


def row_of_z(z_mm: float, z_top_mm: float, z_bottom_mm: float, rows: int = SIZE) -> float:
    """Image row (0 = top of the image, the head end) of patient height ``z_mm``.

    The image rows span the fused volume from ``z_top_mm`` (its most superior
    slice) to ``z_bottom_mm`` (its most inferior) evenly; a fractional row.
    """
    extent = z_top_mm - z_bottom_mm
    if extent <= 0:
        raise ValueError("z_top_mm must lie above z_bottom_mm")
    return (z_top_mm - z_mm) / extent * rows


def band_mass(saliency: np.ndarray, row_from: float, row_to: float) -> float:
    """Share of a non-negative (H, W) map's mass in rows ``[row_from, row_to)`` (fractional ends count in part)."""
    s = normalise(saliency).sum(axis=1)  # mass per row
    edges = np.arange(s.size)
    lo, hi = sorted((row_from, row_to))
    weight = np.clip(np.minimum(edges + 1, hi) - np.maximum(edges, lo), 0.0, 1.0)
    return float((s * weight).sum())


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape (Adebayo et al.'s similarity measure)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if a.shape != b.shape:
        raise ValueError("maps differ in shape")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


#: Anatomical bands of the image rows, between landmarks of ``mimir synth``'s truth
#: (``landmarks_z_mm``): name -> (upper landmark, lower landmark, fraction of the way
#: from upper to lower where the band ends).
BANDS: dict[str, tuple[str, str, float, float]] = {
    "neck_thorax": ("chin", "liver_top", 0.0, 1.0),
    "upper_abdomen": ("liver_top", "femoral_head_top", 0.0, 0.5),
    "lower_abdomen_pelvis": ("liver_top", "femoral_head_top", 0.5, 1.0),
    "thighs": ("femoral_head_top", "knee", 0.0, 1.0),
}


def anatomy_bands(landmark_rows: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Row ranges [from, to) of :data:`BANDS` given the image rows of the landmarks.

    The upper abdomen is the upper half of the span from the liver dome to the
    top of the femoral heads (the liver and the upper abdominal organs), the
    lower half is the lower abdomen and pelvis.
    """
    out = {}
    for name, (a, b, f0, f1) in BANDS.items():
        ra, rb = landmark_rows[a], landmark_rows[b]
        out[name] = (ra + f0 * (rb - ra), ra + f1 * (rb - ra))
    return out


def band_masses(saliency: np.ndarray, bands: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Share of the map's mass in each band, and ``"rest"`` (above the chin, below the knee)."""
    masses = {name: band_mass(saliency, lo, hi) for name, (lo, hi) in bands.items()}
    masses["rest"] = max(0.0, 1.0 - sum(masses.values())) if float(np.sum(saliency)) > 0 else 0.0
    return masses
