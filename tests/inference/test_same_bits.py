"""A subject's numbers do not depend on how it was run: predict one = predict many = batch, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mimir.batch.stages import InferenceStage
from mimir.cli import app
from mimir.inference.predictor import Predictor


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("bits")
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:256, 0:256]
    paths = []
    for k in range(3):
        blob = np.exp(-(((yy - 128) / (70.0 + 5 * k)) ** 2 + ((xx - 64) / 30.0) ** 2))
        image = np.clip(np.stack([blob * 200, blob * 90, blob * 40]) + rng.normal(0, 5, (3, 256, 256)), 0, 255)
        path = root / f"100000{k}_20201_2_0.npy"
        np.save(path, image.astype(np.uint8))
        paths.append(str(path))
    return paths


def _numbers(obj: dict) -> list[float]:  # type: ignore[type-arg]
    return [v for t in obj["targets"].values() for v in (t["value"], t["variance"])] + list(obj["ood_scores"].values())


def test_predict_one_many_and_the_batch_stage_give_the_same_bits(images: list[str]) -> None:
    predictor = Predictor(["phantom-demo"], device="cpu", batch_size=4)
    one = predictor.predict_files(images[:1])[0].to_json()
    many = predictor.predict_files(images)[0].to_json()
    stage = InferenceStage(["phantom-demo"], device="cpu", batch_size=4)
    batch = stage.predict([("1000000_20201_2_0", images[0], np.load(images[0]))])[0].obj
    assert batch is not None
    assert _numbers(one) == _numbers(many) == _numbers(batch)  # exact float equality, not approx
    # more inputs than a batch: passes of exactly batch_size images, the same bits again
    small = Predictor(["phantom-demo"], device="cpu", batch_size=4)
    assert _numbers(small.predict_files(images * 2)[3].to_json()) == _numbers(one)


def test_every_forward_pass_has_batch_size_images(images: list[str]) -> None:
    """The forward pass always has batch_size images, whatever was asked."""
    predictor = Predictor(["phantom-demo"], device="cpu", batch_size=4)
    shapes: list[tuple[int, ...]] = []
    real = predictor._forward

    def spy(x, **kw):  # noqa: ANN001, ANN003, ANN202
        shapes.append(tuple(x.shape))
        return real(x, **kw)

    predictor._forward = spy  # type: ignore[method-assign]
    predictor.predict_files(images[:1])
    predictor.predict_files(images * 2)  # 6 images: 4 + 2 (padded to 4)
    assert shapes == [(4, 3, 256, 256)] * 3


@pytest.mark.slow
def test_cli_predict_one_many_and_batch_same_bits(images: list[str], tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["-m", "phantom-demo", "--device", "cpu"]
    assert runner.invoke(app, ["predict", images[0], *args, "-o", str(tmp_path / "one.json")]).exit_code == 0
    assert runner.invoke(app, ["predict", *images, *args, "-o", str(tmp_path / "many.json")]).exit_code == 0
    folder = Path(images[0]).parent
    r = runner.invoke(app, ["batch", str(folder), *args, "--workers", "1", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    one = json.loads((tmp_path / "one.json").read_text())[0]
    many = json.loads((tmp_path / "many.json").read_text())[0]
    batch = json.loads((tmp_path / "out" / "predictions.json").read_text())[0]
    assert one["name"] == many["name"] == batch["name"] == "1000000_20201_2_0"
    assert _numbers(one) == _numbers(many) == _numbers(batch)
