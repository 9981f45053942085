"""``mimir demo``: the whole pipeline on one synthetic subject, with the built-in demo module.

One full-size synthetic subject is drawn (:mod:`mimir.synth`) and written as
a UK Biobank-style zip with its truth file; the zip goes through the real
pipeline (:func:`mimir.preprocessing.pipeline.preprocess`: DICOM reading, station fusion,
projection) and the real inference engine (:class:`mimir.inference.predictor.Predictor`)
with the built-in ``phantom-demo`` module. The predictions, with their
intervals, are returned next to the subject's true values, and written to
the output folder::

    <out>/<eid>_20201_2_0.zip        the synthetic subject
    <out>/<eid>.truth.json           its true values
    <out>/<eid>_20201_2_0.npy        the mimir-v1 image
    <out>/<eid>_20201_2_0.png        a preview of the image's three channels
    <out>/predictions.csv            what ``mimir predict -o`` writes
    <out>/comparison.csv             prediction, interval and truth per target

The demo module was trained on synthetic subjects only (seeds 10000-11999);
the default demo seed lies outside that range, as does every seed the
benchmark uses.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


#: The built-in demonstration module.
DEMO_MODULE = "phantom-demo"
#: Default seed of the demo subject (never used in training).
DEFAULT_SEED = 900_000
#: Default output folder.
DEFAULT_OUT = "mimir-demo"


@dataclass
class DemoRow:
    """One target: prediction, interval and truth."""

    name: str
    unit: str
    truth: float | None
    value: float
    low: float
    high: float
    level: float

    @property
    def inside(self) -> bool | None:
        if self.truth is None or not math.isfinite(self.truth):
            return None
        return self.low <= self.truth <= self.high

    @property
    def error(self) -> float | None:
        return None if self.truth is None else self.value - self.truth


@dataclass
class DemoResult:
    """What :func:`run_demo` made and where it went."""

    seed: int
    module: str
    module_version: str
    rows: list[DemoRow]
    files: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    intended_use: str = ""

    @property
    def covered(self) -> int:
        return sum(1 for r in self.rows if r.inside)


def run_demo(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    seed: int = DEFAULT_SEED,
    module: str = DEMO_MODULE,
    device: str = "auto",
    level: float = 0.95,
) -> DemoResult:
    """Generate one synthetic subject, run the pipeline and the module, compare with the truth.

    Raises :class:`UsageError` when the demo module is not available (a
    damaged installation) and :class:`~mimir.errors.MimirError` subclasses
    for anything else a user can cause.
    """
    import numpy as np

    from mimir.inference.predictions import SubjectResult
    from mimir.inference.predictor import Predictor
    from mimir.models.registry import get_module
    from mimir.outputs.preview import write_preview
    from mimir.outputs.writers import write_results
    from mimir.preprocessing.pipeline import preprocess_with_qc
    from mimir.synth import generate_subject
    from mimir.utils import atomic

    out = Path(out_dir)
    atomic.check_writable_dir(out)  # before any work
    spec = get_module(module)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    subject = generate_subject(out, seed)
    seconds["generate"] = time.perf_counter() - t

    t = time.perf_counter()
    image, qc = preprocess_with_qc(subject.zip_path, cache=False)
    seconds["preprocess"] = time.perf_counter() - t
    stem = subject.zip_path.name[: -len(".zip")]
    npy = out / f"{stem}.npy"
    with atomic.atomic_path(npy, suffix=".npy") as tmp:
        np.save(tmp, image, allow_pickle=False)
    png = out / f"{stem}.png"
    write_preview(png, image)

    t = time.perf_counter()
    predictor = Predictor([spec], device=device, level=level)
    seconds["load module"] = time.perf_counter() - t
    t = time.perf_counter()
    record = SubjectResult.for_input(subject.zip_path)
    record.qc_status, record.qc_flags = qc.status, list(qc.flags)  # before predicting: OOD flags add to them
    (record,) = predictor.predict_images(image[None], [record])
    seconds["predict"] = time.perf_counter() - t
    csv_path = out / "predictions.csv"
    write_results(csv_path, [record], predictor.layout)

    rows = []
    for p in record.predictions:
        low, high = p.ci
        truth = subject.truth.get(p.target.name)
        rows.append(
            DemoRow(
                name=p.target.name,
                unit=p.target.unit,
                truth=float(truth) if isinstance(truth, (int, float)) else None,
                value=p.value,
                low=low,
                high=high,
                level=level,
            )
        )
    comparison = out / "comparison.csv"
    lines = ["target,unit,true_value,predicted_value,ci_low,ci_high,inside_interval"]
    for r in rows:
        truth_text = "" if r.truth is None else repr(r.truth)
        inside = "" if r.inside is None else str(r.inside).lower()
        lines.append(f"{r.name},{r.unit},{truth_text},{r.value!r},{r.low!r},{r.high!r},{inside}")
    atomic.write_text(comparison, "\n".join(lines) + "\n")

    return DemoResult(
        seed=seed,
        module=spec.name,
        module_version=spec.version,
        rows=rows,
        files={
            "zip": subject.zip_path,
            "truth": subject.truth_path,
            "image": npy,
            "preview": png,
            "predictions": csv_path,
            "comparison": comparison,
        },
        seconds=seconds,
        device=predictor.describe_device(),
        intended_use=spec.intended_use,
    )


def result_json(result: DemoResult) -> dict[str, Any]:
    """The demo result as JSON-serialisable data."""
    return {
        "seed": result.seed,
        "module": result.module,
        "module_version": result.module_version,
        "targets": [
            {
                "name": r.name,
                "unit": r.unit,
                "true_value": r.truth,
                "predicted_value": r.value,
                "ci_low": r.low,
                "ci_high": r.high,
                "level": r.level,
                "inside_interval": r.inside,
            }
            for r in result.rows
        ],
        "files": {k: str(v) for k, v in result.files.items()},
        "seconds": result.seconds,
    }
