"""Saliency maps: their numerics, and the sanity checks that make them trustworthy.

Sanity checks after Adebayo et al. (2018), "Sanity checks for saliency
maps": a map must change when the network's weights are randomised, and on
synthetic subjects with known anatomy the built-in phantom-demo module's
maps must sit on the anatomy that defines the target (``benchmarks/saliency.py``
prints the same figures for more subjects).
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch

from mimir.inference import saliency as S
from mimir.models.resnet import ResNet50


def _image(seed: int = 0) -> np.ndarray:
    """A body-like uint8 test image: a bright blob on a dark background, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    blob = np.exp(-(((yy - 120) / 70.0) ** 2 + ((xx - 70) / 35.0) ** 2))
    img = np.stack([blob * 200, blob * 120, blob * 60]) + rng.normal(0, 8, (3, 256, 256))
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _tiny_net(seed: int = 0) -> ResNet50:
    torch.manual_seed(seed)
    return ResNet50(num_outputs=4, width=4).eval()


@functools.lru_cache(maxsize=1)
def _demo() -> tuple[list[ResNet50], list[str]]:
    from mimir.models.modules import load_networks
    from mimir.models.registry import get_module

    spec = get_module("phantom-demo")
    return load_networks(spec), [t.name for t in spec.targets]


@functools.lru_cache(maxsize=1)
def _synthetic_subjects(n: int = 2, first_seed: int = 1000) -> list[tuple[np.ndarray, dict[str, tuple[float, float]]]]:
    """Full-size synthetic subjects not used in training, with the image rows of their anatomy."""
    import tempfile
    from pathlib import Path

    from mimir.preprocessing.pipeline import preprocess
    from mimir.synth import build_study, study_zip_bytes

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(first_seed, first_seed + n):
            study = build_study(seed)
            path = Path(tmp) / f"{study.eid}_20201_2_0.zip"
            path.write_bytes(study_zip_bytes(study))
            z = np.concatenate([s.z for s in study.series])
            rows = {k: S.row_of_z(v, float(z.max()), float(z.min())) for k, v in study.truth["landmarks_z_mm"].items()}
            out.append((preprocess(path, cache=False), S.anatomy_bands(rows)))
    return out


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("method", S.METHODS)
def test_maps_have_the_documented_shape_and_scale(method: str) -> None:
    net = _tiny_net()
    opts = S.SaliencyOptions(samples=3, steps=4)
    maps = S.ensemble_saliency([net, net], _image(), S.target_outputs(2), method, opts)
    assert maps.shape == (2, 256, 256) and maps.dtype == np.float32
    assert (maps >= 0).all()
    sums = maps.sum(axis=(1, 2))
    # unit sum; a (guided) Grad-CAM map may be all zero (no evidence raising the output), and then stays zero
    assert all(s == pytest.approx(1.0, rel=1e-4) or ("gradcam" in method and s == 0) for s in sums), sums
    assert max(sums) == pytest.approx(1.0, rel=1e-4)
    assert maps[int(np.argmax(sums))].std() > 0  # not constant
    assert S.normalise(np.zeros((4, 4))).sum() == 0


def test_gradcam_equals_the_class_activation_map() -> None:
    """With global average pooling then one linear layer, Grad-CAM is relu(sum_k w_k A_k), upsampled."""
    import torch.nn.functional as F

    net, img = _tiny_net(), _image(1)
    got = S.member_saliency(net, img, [2], "gradcam")[0]
    with torch.no_grad():
        feats = S._trunk(net, torch.from_numpy(img.astype(np.float32))[None])
        cam = F.relu(torch.einsum("k,bkhw->bhw", net.fc.weight[2], feats))[:, None]
        want = F.interpolate(cam, size=(256, 256), mode="bilinear", align_corners=False)[0, 0].numpy()
    # Grad-CAM's weights are the spatial mean of the gradient: w_k / (h * w)
    np.testing.assert_allclose(got, want / (feats.shape[2] * feats.shape[3]), rtol=1e-4, atol=1e-7)


def test_smoothgrad_without_noise_is_the_absolute_gradient() -> None:
    net, img = _tiny_net(), _image(2)
    got = S.member_saliency(net, img, [0], "smoothgrad", S.SaliencyOptions(samples=2, noise=0.0))[0]
    x = torch.from_numpy(img.astype(np.float32))[None].requires_grad_(True)
    net(x)[0, 0].backward()
    want = x.grad[0].abs().sum(0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * want.max())  # float32 convolutions


def test_guided_backprop_passes_only_positive_gradients_through_positive_activations() -> None:
    """For x -> W2 relu(W1 x): guided gradient = W1^T [relu(W2^T) * (W1 x > 0)], the plain one W1^T [W2^T * (W1 x > 0)]."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 20), torch.nn.ReLU(), torch.nn.Linear(20, 2))
    x = torch.randn(1, 3, 2, 2)
    w1, w2 = net[1].weight.detach(), net[3].weight.detach()
    active = ((w1 @ x.flatten() + net[1].bias.detach()) > 0).float()
    (guided,) = S._guided_gradients(net, x, [1])
    np.testing.assert_allclose(guided.ravel(), (w1.T @ (w2[1].clamp(min=0) * active)).numpy(), rtol=1e-5, atol=1e-7)
    (plain,) = S._input_gradients(net, x, [1])  # the ReLUs are plain again afterwards
    np.testing.assert_allclose(plain[0].ravel(), (w1.T @ (w2[1] * active)).numpy(), rtol=1e-5, atol=1e-7)
    assert "forward" not in vars(net[2])


def test_guided_gradcam_is_gradcam_times_the_guided_gradient() -> None:
    net, img = _tiny_net(), _image(4)
    got = S.member_saliency(net, img, [0, 2], "guided-gradcam")
    cams = S.member_saliency(net, img, [0, 2], "gradcam")
    x = torch.from_numpy(img.astype(np.float32))[None]
    guided = S._guided_gradients(net, x, [0, 2])
    for k in range(2):
        np.testing.assert_allclose(got[k], cams[k] * np.abs(guided[k]).sum(axis=0), rtol=1e-5, atol=1e-12)
    assert ((got > 0) <= (cams > 0)).all()  # only inside the Grad-CAM evidence


def test_integrated_gradients_attribute_the_output_change_to_the_pixels() -> None:
    """Completeness: the signed attributions sum to f(x) - f(black) (up to the path discretisation)."""
    net, img = _tiny_net(), _image(3)
    x = torch.from_numpy(img.astype(np.float32))[None]
    steps = 32
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    (grad,) = S._input_gradients(net, alphas[:, None, None, None] * x, [1])
    signed = (img.astype(np.float64) * grad.mean(axis=0)).sum()
    with torch.no_grad():
        change = float(net(x)[0, 1] - net(torch.zeros_like(x))[0, 1])
    assert signed == pytest.approx(change, rel=0.05, abs=1e-3)
    absolute = S.member_saliency(net, img, [1], "integrated-gradients", S.SaliencyOptions(steps=steps))[0]
    assert absolute.sum() >= abs(signed) * 0.999


def test_band_mass_counts_fractional_rows_and_sums_to_one() -> None:
    m = np.zeros((256, 256))
    m[10:20] = 1.0
    assert S.band_mass(m, 10, 20) == pytest.approx(1.0)
    assert S.band_mass(m, 15, 17.5) == pytest.approx(0.25)
    bands = S.anatomy_bands({"chin": 0.0, "liver_top": 50.0, "femoral_head_top": 150.0, "knee": 256.0})
    assert bands["upper_abdomen"] == (50.0, 100.0) and bands["lower_abdomen_pelvis"] == (100.0, 150.0)
    masses = S.band_masses(np.ones((256, 256)), bands)
    assert sum(masses.values()) == pytest.approx(1.0)
    assert masses["thighs"] == pytest.approx(106 / 256)
    assert S.row_of_z(-100.0, 0.0, -1000.0) == pytest.approx(25.6)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="gradcam"):
        S.member_saliency(_tiny_net(), _image(), [0], "lime")


# --------------------------------------------------------------------------- sanity checks


def _randomised(net: ResNet50, seed: int = 1) -> ResNet50:
    """The network with every layer re-initialised (Adebayo et al.'s cascading randomisation, to the end)."""
    net = copy.deepcopy(net)
    torch.manual_seed(seed)
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return net.eval()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "guided-gradcam", "smoothgrad"])
def test_maps_change_when_the_weights_are_randomised(method: str) -> None:
    """Trained vs randomised maps correlate little, much less than two halves of the trained ensemble.

    Spearman rank correlation (Adebayo et al.'s measure), averaged over two
    synthetic subjects and the targets liver_fat_percent and
    thigh_muscle_volume_l. The control: the maps of members 0-1 against those
    of members 2-3 (networks trained alike from other seeds).
    """
    nets, names = _demo()
    outs = S.target_outputs(len(names), [names.index("liver_fat_percent"), names.index("thigh_muscle_volume_l")])
    opts = S.SaliencyOptions(samples=8)
    randomised = [_randomised(n, seed=1 + i) for i, n in enumerate(nets)]
    r_random, r_halves = [], []
    for image, _ in _synthetic_subjects():
        first = S.ensemble_saliency(nets[:2], image, outs, method, opts)
        second = S.ensemble_saliency(nets[2:], image, outs, method, opts)
        np.testing.assert_array_equal(first, S.ensemble_saliency(nets[:2], image, outs, method, opts))  # deterministic
        trained = (first + second) / 2  # the whole ensemble's map
        random = S.ensemble_saliency(randomised, image, outs, method, opts)
        for k in range(len(outs)):
            r_random.append(S.rank_correlation(trained[k], random[k]))
            r_halves.append(S.rank_correlation(first[k], second[k]))
    assert np.mean(r_random) < 0.4, r_random
    assert np.mean(r_random) < np.mean(r_halves) - 0.15, (r_random, r_halves)


@pytest.mark.slow
def test_demo_module_reads_liver_fat_from_the_upper_abdomen_and_thigh_muscle_from_the_thighs() -> None:
    """On synthetic subjects with known anatomy (2 unseen seeds, full size; the benchmark uses more).

    SmoothGrad: the largest share of the liver-fat map lies in the upper
    abdomen (liver dome to halfway down to the femoral heads), at least twice
    that band's share of the rows; most of the thigh-muscle map lies in the
    thighs (femoral heads to knees). Grad-CAM (8 x 8 cells, coarse, and blank
    where no evidence raises the prediction): each map puts more mass on its
    own anatomy than the other target's map does.
    """
    nets, names = _demo()
    lf, tm = names.index("liver_fat_percent"), names.index("thigh_muscle_volume_l")
    subjects = _synthetic_subjects()
    for method in ("smoothgrad", "gradcam"):
        masses = {lf: [], tm: []}
        row_share = []
        for image, bands in subjects:
            maps = S.ensemble_saliency(nets, image, S.target_outputs(len(names), [lf, tm]), method)
            masses[lf].append(S.band_masses(maps[0], bands))
            masses[tm].append(S.band_masses(maps[1], bands))
            row_share.append({b: (hi - lo) / 256 for b, (lo, hi) in bands.items()})
        mean = {t: {b: float(np.mean([m[b] for m in ms])) for b in ms[0]} for t, ms in masses.items()}
        rows = {b: float(np.mean([r[b] for r in row_share])) for b in row_share[0]}
        assert mean[lf]["upper_abdomen"] > mean[tm]["upper_abdomen"], (method, mean)
        assert mean[tm]["thighs"] > mean[lf]["thighs"], (method, mean)
        if method == "smoothgrad":
            assert max(mean[lf], key=mean[lf].get) == "upper_abdomen", mean[lf]
            assert mean[lf]["upper_abdomen"] > 2 * rows["upper_abdomen"], (mean[lf], rows)
            assert mean[tm]["thighs"] > 0.5, mean[tm]
