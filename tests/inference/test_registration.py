"""Registration of subjects' images to a template, and cohort maps averaged in the template's frame."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("SimpleITK", reason="the register extra (pip install 'ukb-mimir[register]') is needed")

from mimir.errors import UsageError  # noqa: E402
from mimir.inference import registration as R  # noqa: E402
from mimir.utils.install import extra_hint  # noqa: E402
from mimir.inference.cohort import (  # noqa: E402
    RegisteredAggregate,
    cohort_template,
    mean_image,
    register_all,
)


@functools.lru_cache(maxsize=4)
def _image(seed: int) -> np.ndarray:
    """The image of a small synthetic subject (3, 256, 256) uint8."""
    import tempfile

    from mimir.preprocessing.pipeline import preprocess
    from mimir.synth import build_study, study_zip_bytes

    study = build_study(seed, small=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{study.eid}_20201_2_0.zip"
        path.write_bytes(study_zip_bytes(study))
        return preprocess(path, cache=False)


def _known_deformation() -> tuple[np.ndarray, np.ndarray]:
    """(sampling map, its approximate inverse): rows move 4-7 px, columns up to 2 px, smoothly along the body."""
    rr, cc = R.identity_coords()
    u_r = 4.0 + 3.0 * np.sin(rr / 256 * np.pi)
    u_c = 2.0 * np.cos(rr / 256 * np.pi)
    return np.stack([rr + u_r, cc + u_c]), np.stack([rr - u_r, cc - u_c])


def test_a_subject_registered_to_itself_gets_the_identity() -> None:
    image = _image(1000)
    reg = R.register(image, image)
    assert reg.ok, reg.error
    body = R.body_mask(image)
    err = np.abs(reg.coords - R.identity_coords())[:, body]
    assert np.nanmax(err) < 0.05, np.nanmax(err)
    assert reg.quality.body_dice_after == pytest.approx(1.0)
    assert reg.quality.residual_after < 0.05


def test_a_known_deformation_is_recovered() -> None:
    """The subject is the template deformed by a known smooth field; registration finds that field."""
    template = _image(1000)
    known, inverse = _known_deformation()
    subject = np.stack([np.clip(np.rint(R.warp(ch, inverse)), 0, 255) for ch in template]).astype(np.uint8)
    reg = R.register(subject, template)
    assert reg.ok, reg.error
    body = R.body_mask(template)
    err = np.abs(reg.coords - known)[:, body]
    assert np.nanmedian(err) < 0.5 and np.nanpercentile(err, 90) < 1.0, (np.nanmedian(err), np.nanpercentile(err, 90))
    q = reg.quality
    assert q.body_dice_after > max(0.95, q.body_dice_before) and q.residual_after < q.residual_before / 3, q
    # without the deformable step the affine leaves more of it
    affine = R.register(subject, template, R.RegistrationOptions(deformable=False))
    assert np.nanmedian(np.abs(affine.coords - known)[:, body]) > np.nanmedian(err)


def test_two_subjects_bodies_overlap_better_after_registration() -> None:
    reg = R.register(_image(1001), _image(1000))
    assert reg.ok, reg.error
    assert reg.quality.body_dice_after > reg.quality.body_dice_before + 0.03, reg.quality
    assert reg.quality.residual_after < reg.quality.residual_before
    # each view samples only its own view of the subject
    cor, sag = R.view_slices()
    assert np.nanmax(reg.coords[1][:, cor]) < R.VIEW_SPLIT and np.nanmin(reg.coords[1][:, sag]) >= R.VIEW_SPLIT - 0.5


def test_warp_identity_and_outside_points() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((256, 256))
    ident = R.identity_coords()
    np.testing.assert_allclose(R.warp(a, ident), a, atol=1e-12)
    coords = ident.copy()
    coords[:, :10] = np.nan
    w = R.warp(a, coords)
    assert (w[:10] == 0).all() and np.allclose(w[10:], a[10:])
    shifted = ident.copy()
    shifted[0] += 1.0  # each template pixel samples the subject one row down
    np.testing.assert_allclose(R.warp(a, shifted)[:-1], a[1:], atol=1e-12)
    assert R.dice(np.ones(4, bool), np.zeros(4, bool)) == 0.0 and R.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


def test_failures_are_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    image = _image(1000)
    monkeypatch.setattr(R, "MIN_BODY_DICE", 1.01)
    reg = R.register(image, image)
    assert not reg.ok and "Dice" in (reg.error or "")

    def boom(*args: object) -> np.ndarray:
        raise RuntimeError("Exception thrown in SimpleITK ImageRegistrationMethod_Execute:\nAll samples map outside")

    monkeypatch.setattr(R, "_register_view", boom)
    reg = R.register(image, image)
    assert not reg.ok and reg.error == "registration failed: All samples map outside"
    np.testing.assert_array_equal(reg.coords, R.identity_coords())
    with pytest.raises(ValueError, match="failed registration"):
        RegisteredAggregate(image).add(reg, {("m", "t"): np.ones((256, 256))})


def test_missing_simpleitk_is_one_line_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(UsageError, match="SimpleITK") as info:
        R.require_simpleitk()
    assert str(info.value.hint) == extra_hint("register")


def test_registered_aggregate_warps_and_averages_unit_sum_maps() -> None:
    image = _image(1000)
    ident = R.Registration(coords=R.identity_coords(), quality=R.RegistrationQuality(1, 1, 0, 0))
    down = R.Registration(coords=R.identity_coords() + np.array([2.0, 0.0])[:, None, None], quality=ident.quality)
    m = np.zeros((256, 256))
    m[100, 50] = 3.0
    agg = RegisteredAggregate(image)
    agg.add(ident, {("mod", "t"): m})
    agg.add(down, {("mod", "t"): m})  # its row 100 lands on template row 98
    out = agg.maps()[("mod", "t")]
    assert out.dtype == np.float32 and out.sum() == pytest.approx(1.0)
    assert out[100, 50] == pytest.approx(0.5) and out[98, 50] == pytest.approx(0.5)


@pytest.mark.slow
def test_cohort_template_and_parallel_registration() -> None:
    images = [_image(s) for s in (1000, 1001, 1002)]
    template = cohort_template(images, iterations=1, workers=2)
    assert template.shape == (3, 256, 256) and template.dtype == np.uint8
    regs = register_all(images, template, workers=2)
    serial = register_all(images[:1], template)
    assert all(r.ok for r in regs)
    np.testing.assert_allclose(regs[0].coords, serial[0].coords, atol=1e-9, equal_nan=True)  # same in a worker
    # the refined template is sharper than the plain mean: the subjects fit it better
    to_mean = register_all(images, mean_image(images))
    assert np.mean([r.quality.residual_after for r in regs]) <= np.mean([r.quality.residual_after for r in to_mean]) + 1
