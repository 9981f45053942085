"""OOD reference numerics and storage (mimir.models.ood), and target supports in module.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest_models import (  # noqa: F401
    make_original_module,
    no_builtin_modules,
    random_resnet_state,
    single_torch_thread,
)

from mimir.errors import ModuleError
from mimir.inference.predictions import OutputTarget, TargetPrediction, interval
from mimir.models.catalogue import catalogue_by_name
from mimir.models.modules import (
    TargetSpec,
    convert_original,
    parse_support,
    read_module,
    set_reference,
    spec_from_json,
    verify_module,
    write_module,
)
from mimir.models.ood import (
    OodReference,
    OodSpec,
    default_groups,
    feature_dim,
    fit_reference,
    grouped,
    ledoit_wolf,
    raw_scores,
)
from mimir.utils.hashing import file_sha256

pytestmark = pytest.mark.usefixtures("single_torch_thread", "no_builtin_modules")


# --------------------------------------------------------------------------- numerics


def test_ledoit_wolf_matches_its_definition_and_beats_the_sample_covariance() -> None:
    rng = np.random.default_rng(0)
    d, n = 40, 30
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    true_cov = a @ a.T + 0.5 * np.eye(d)
    x = rng.multivariate_normal(np.zeros(d), true_cov, size=n)
    mean, cov, shrink = ledoit_wolf(x)
    # the definition, written out with explicit sums over samples
    xc = x - x.mean(axis=0)
    s = sum(np.outer(r, r) for r in xc) / n
    mu = np.trace(s) / d
    delta = np.linalg.norm(s - mu * np.eye(d), "fro") ** 2 / d
    beta = sum(np.linalg.norm(np.outer(r, r) - s, "fro") ** 2 for r in xc) / n**2 / d
    expected = min(beta, delta) / delta
    assert shrink == pytest.approx(expected, rel=1e-9)
    assert 0 < shrink < 1
    np.testing.assert_allclose(mean, x.mean(axis=0))
    np.testing.assert_allclose(cov, (1 - shrink) * s + shrink * mu * np.eye(d), atol=1e-12)
    assert np.all(np.linalg.eigvalsh(cov) > 0)  # invertible although n < d
    assert np.linalg.norm(cov - true_cov) < np.linalg.norm(s - true_cov)


def test_raw_scores_are_mean_squared_mahalanobis_per_dimension() -> None:
    rng = np.random.default_rng(1)
    k, b, d = 3, 5, 7
    mean = rng.standard_normal((k, d))
    covs = []
    for _ in range(k):
        a = rng.standard_normal((d, d))
        covs.append(a @ a.T + np.eye(d))
    prec = np.stack([np.linalg.inv(c) for c in covs])
    f = rng.standard_normal((k, b, d))
    got = raw_scores(f, mean, prec)
    for j in range(b):
        d2 = [float((f[i, j] - mean[i]) @ np.linalg.solve(covs[i], f[i, j] - mean[i])) for i in range(k)]
        assert got[j] == pytest.approx(np.mean(d2) / d, rel=1e-10)
    with pytest.raises(ValueError):
        raw_scores(f[:, :, :3], mean, prec)


def test_fit_reference_flag_line_and_a_shifted_sample() -> None:
    rng = np.random.default_rng(2)
    k, d = 2, 16
    ind = lambda n: rng.standard_normal((k, n, d)) * np.linspace(0.5, 2, d)
    ref = fit_reference(ind(400), ind(400), quantile=0.95)
    assert ref.groups == 1 and ref.size == k * d and ref.quantile == 0.95
    fresh = ref.scores(ind(2000))
    assert 0.02 < float(np.mean(fresh > 1)) < 0.09  # about 5 % of new in-distribution samples
    shifted = ind(200) + 3.0  # every feature moved by 1.5-6 sd
    assert np.all(ref.scores(shifted) > 1)
    with pytest.raises(ValueError, match="at least"):
        fit_reference(ind(0), ind(30))
    with pytest.raises(ValueError, match="at least"):
        fit_reference(ind(10), ind(100), folds=0)
    with pytest.raises(ValueError, match="held-out"):
        fit_reference(ind(100), ind(5))


def test_grouping_joint_and_per_member() -> None:
    rng = np.random.default_rng(3)
    f = rng.standard_normal((3, 4, 5))  # 3 members, 4 images, 5 features each
    joint = grouped(f, 1)
    assert joint.shape == (1, 4, 15)
    np.testing.assert_array_equal(joint[0, 2], np.concatenate([f[0, 2], f[1, 2], f[2, 2]]))
    np.testing.assert_array_equal(grouped(f, 3), f)  # one group per member: the members themselves
    assert default_groups(4, 256) == 1 and default_groups(1, 2048) == 1 and default_groups(5, 2048) == 5
    per_member = fit_reference(rng.standard_normal((3, 60, 5)), rng.standard_normal((3, 30, 5)), groups=3)
    assert per_member.groups == 3 and per_member.size == 15 and per_member.scores(f).shape == (4,)
    with pytest.raises(ValueError, match="do not fit"):
        per_member.scores(f[:, :, :4])


def test_cross_fitting_scores_each_calibration_image_with_a_reference_that_did_not_see_it() -> None:
    rng = np.random.default_rng(4)
    fit, cal = rng.standard_normal((1, 30, 6)), rng.standard_normal((1, 25, 6))
    ref = fit_reference(fit, cal, folds=5, seed=7, quantile=0.9)
    # by hand: the same folds, each fold scored by a reference of the fit images and the other folds
    order = np.random.default_rng(7).permutation(25)
    fold_of = np.empty(25, int)
    fold_of[order] = np.arange(25) % 5
    raw = np.empty(25)
    for f in range(5):
        m, cov, _ = ledoit_wolf(np.concatenate([fit[0], cal[0, fold_of != f]]))
        p = np.linalg.inv(cov).astype(np.float32).astype(np.float64)
        raw[fold_of == f] = raw_scores(cal[:, fold_of == f], m.astype(np.float32)[None].astype(np.float64), p[None])
    assert ref.threshold == pytest.approx(float(np.quantile(raw, 0.9)), rel=1e-6)
    # the final reference is fitted on all 55 images
    m_all, _, _ = ledoit_wolf(np.concatenate([fit[0], cal[0]]))
    np.testing.assert_allclose(ref.mean[0], m_all, rtol=1e-6, atol=1e-6)
    # without cross-fitting: fit images only, the flag line on the calibration images as they are
    plain = fit_reference(fit, cal, folds=0, quantile=0.9)
    m_fit, _, _ = ledoit_wolf(fit[0])
    np.testing.assert_allclose(plain.mean[0], m_fit, rtol=1e-6, atol=1e-6)
    want = np.quantile(raw_scores(cal, plain.mean, plain.precision), 0.9)
    assert plain.threshold == pytest.approx(float(want), rel=1e-9)
    # no fit images at all: every image is cross-fitted (fit-reference on a user's images)
    only = fit_reference(np.zeros((1, 0, 6)), np.concatenate([fit, cal], axis=1))
    assert only.size == 6 and only.threshold > 0
    assert feature_dim(64) == 2048 and feature_dim(8) == 256


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"file": "../x.safetensors", "sha256": "0" * 64, "threshold": 1.0}, "invalid file"),
        ({"file": "r.safetensors", "sha256": "abc", "threshold": 1.0}, "sha256"),
        ({"file": "r.safetensors", "sha256": "0" * 64, "threshold": -1.0}, "positive"),
        ({"file": "r.safetensors", "sha256": "0" * 64}, "threshold"),
        ({"file": "r.safetensors", "sha256": "0" * 64, "threshold": 1.0, "method": "knn"}, "method"),
        ([], "not an object"),
    ],
)
def test_ood_spec_validation(entry: object, message: str) -> None:
    with pytest.raises(ModuleError, match=message):
        OodSpec.from_json(entry, "module.json")


# --------------------------------------------------------------------------- module.json


def _reference(k: int, d: int, seed: int = 0) -> OodReference:
    rng = np.random.default_rng(seed)
    return fit_reference(rng.standard_normal((k, 60, d)), rng.standard_normal((k, 30, d)))


def test_reference_round_trips_through_module_json_with_its_hash(tmp_path: Path) -> None:
    sds = [random_resnet_state(1, 8, seed=s) for s in (0, 1)]
    targets = [TargetSpec(name="fat", unit="%", mean=5.0, sd=3.0, support=(0.0, 100.0))]
    ref = _reference(2, feature_dim(8))
    spec = write_module(
        tmp_path / "m", name="m", version="1", targets=targets, state_dicts=sds,
        ood_reference=ref, ood_fitted={"fit_images": 60},
    )
    data = json.loads((tmp_path / "m" / "module.json").read_text())
    entry = data["ood_reference"]
    assert entry["file"] == "ood_reference.safetensors"
    assert entry["sha256"] == file_sha256(tmp_path / "m" / entry["file"])
    assert entry["threshold"] == ref.threshold and entry["quantile"] == 0.995  # the default flag line
    assert entry["fitted"] == {"fit_images": 60}
    assert data["targets"][0]["support"] == [0.0, 100.0]
    back = read_module(tmp_path / "m")
    assert back.ood == spec.ood and back.targets[0].support == (0.0, 100.0)
    assert back.digest == spec.digest
    loaded = back.load_reference()
    np.testing.assert_array_equal(loaded.mean, ref.mean)  # float32 values survive exactly
    np.testing.assert_array_equal(loaded.precision, ref.precision)
    assert loaded.threshold == ref.threshold
    verify_module(back)

    # a changed reference file is refused, by load and by verify
    path = tmp_path / "m" / entry["file"]
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ModuleError, match="fails verification"):
        back.load_reference()
    with pytest.raises(ModuleError, match="fails verification"):
        verify_module(back)

    # set_reference: new content-named file, recorded and hashed; the old one is gone, members untouched
    members_before = {m.file: file_sha256(tmp_path / "m" / m.file) for m in back.members}
    ref2 = _reference(2, feature_dim(8), seed=5)
    new = set_reference(back, ref2, fitted={"by": "test"})
    assert new.ood is not None and new.ood.file.startswith("ood_reference-") and not path.exists()
    again = read_module(tmp_path / "m")
    assert again.ood == new.ood and again.digest != spec.digest
    np.testing.assert_array_equal(again.load_reference().mean, ref2.mean)
    assert {m.file: file_sha256(tmp_path / "m" / m.file) for m in again.members} == members_before

    # shapes must fit the members
    with pytest.raises(ModuleError, match="features"):
        set_reference(again, _reference(3, feature_dim(8)))


def test_module_without_reference_has_no_key(tmp_path: Path) -> None:
    spec = write_module(
        tmp_path / "m", name="m", version="1", targets=[TargetSpec(name="w", unit="kg", mean=1.0, sd=1.0)],
        state_dicts=[random_resnet_state(1, 8, seed=0)],
    )
    data = json.loads((tmp_path / "m" / "module.json").read_text())
    assert "ood_reference" not in data and "support" not in data["targets"][0]
    assert spec.load_reference() is None


# --------------------------------------------------------------------------- support


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), ([0, None], (0.0, None)), ([None, 100], (None, 100.0)), ([0, 100], (0.0, 100.0))],
)
def test_parse_support(value: object, expected: object) -> None:
    assert parse_support(value) == expected


@pytest.mark.parametrize("value", [[1, 0], [0], "0,100", [0, float("nan")], [True, 2], [0, "x"]])
def test_bad_support_is_refused_in_module_json(value: object) -> None:
    data = {
        "format": "mimir-module", "format_version": 1, "name": "m", "version": "1",
        "architecture": {"name": "resnet50", "width": 8},
        "targets": [{"name": "t", "unit": "L", "standardization": {"mean": 0, "sd": 1}, "support": value}],
        "members": [{"file": "member_0.safetensors", "sha256": "0" * 64}],
    }
    with pytest.raises(ModuleError, match="support"):
        spec_from_json(data)


def test_intervals_are_cut_to_the_support_and_the_mean_is_kept() -> None:
    low, high = interval(np.array([1.0, 50.0, -6.1, 99.0]), np.array([4.0, 4.0, 1.0, 4.0]), 0.95, (0.0, 100.0))
    np.testing.assert_allclose(low, [0.0, 50 - 1.959964 * 2, 0.0, 99 - 1.959964 * 2], atol=1e-5)
    np.testing.assert_allclose(high, [1 + 1.959964 * 2, 50 + 1.959964 * 2, 0.0, 100.0], atol=1e-5)
    # one-sided support, and none
    assert interval(-1.0, 1.0, 0.95, (None, 0.0))[1] == 0.0
    assert interval(-1.0, 1.0, 0.95, None)[0] == pytest.approx(-1 - 1.959964, abs=1e-5)
    target = OutputTarget("fat", "fat", "%", None, "m", "1", support=(0.0, 100.0))
    p = TargetPrediction(target, value=-6.1, variance=4.0)
    assert p.ci == (0.0, 0.0) and p.value == -6.1  # the mean is not moved into the support
    assert p.to_json()["ci_low"] == 0.0 and p.to_json()["value"] == -6.1


def test_catalogue_and_converted_modules_carry_supports(tmp_path: Path) -> None:
    cat = catalogue_by_name()
    assert cat["liverFat"].support == (0.0, 100.0)
    assert cat["AtlasVatVolume"].support == (0.0, None)
    assert cat["DxaAndroidBoneMass"].support == (0.0, None)
    assert cat["sex"].support == (0.0, 1.0)
    assert all(e.support is not None for e in cat.values())
    assert all(e.support == (0.0, 100.0) for e in cat.values() if e.unit == "%")
    make_original_module(tmp_path / "orig", width=8)
    spec = convert_original(tmp_path / "orig", tmp_path / "out", name="orig")
    assert [t.support for t in spec.targets] == [(0.0, None), (0.0, None), (0.0, 100.0)]
    assert read_module(tmp_path / "out").targets[2].support == (0.0, 100.0)


def test_builtin_demo_module_ships_a_verified_reference_and_supports() -> None:
    import mimir

    # the packaged folder itself (the no_builtin_modules fixture hides it from the registry)
    folder = Path(mimir.__file__).parent / "data" / "modules" / "phantom-demo"
    spec = read_module(folder)
    assert spec.ood is not None
    verify_module(spec)  # members and reference hash as recorded
    ref = spec.load_reference()
    assert ref is not None and ref.size == len(spec.members) * feature_dim(spec.width) == 4 * 256
    supports = {t.name: t.support for t in spec.targets}
    assert supports["liver_fat_percent"] == (0.0, 100.0)
    assert all(supports[n] == (0.0, None) for n in supports if n != "liver_fat_percent")
