"""The two stages of a batch run, shared by the local and the Ray engine.

- :func:`preprocess_subject` (CPU): one input path -> its (3, 256, 256) uint8
  image, through the image cache, or the one-line reason it failed. Importing
  this module does not import torch, so preprocessing processes stay light.
- :class:`InferenceStage` (GPU or CPU): loads the modules once and turns
  lists of images into per-subject CSV rows and JSON objects exactly as
  ``predict`` writes them.

Every forward pass has the same shape (``batch_size`` images; a short last
batch is padded with blank images that are then dropped), so a subject's
numbers do not depend on which other subjects share its batch: a resumed run
reproduces an uninterrupted one bit for bit on the same device and settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mimir.batch.records import STAGE_INFERENCE
from mimir.errors import MimirError

#: Shape of one image: (channels, rows, columns).
IMAGE_SHAPE = (3, 256, 256)


class _Failed(MimirError):
    """A subject whose prediction failed (message already one line)."""


@dataclass
class Outcome:
    """What became of one subject: a prediction (``row`` and ``obj``) or an error (``stage``, ``message``)."""

    name: str
    source: str
    row: dict[str, Any] | None = None
    obj: dict[str, Any] | None = None
    stage: str | None = None
    message: str | None = None
    device: str | None = None

    @property
    def ok(self) -> bool:
        return self.stage is None


def one_line(exc: BaseException, path: str | None = None) -> str:
    """A one-line message for a failure, without repeating the path in front."""
    if isinstance(exc, MimirError):
        text = str(exc)
        if exc.path and text.startswith(f"{exc.path}: "):
            text = text[len(exc.path) + 2 :]
    else:
        from mimir.utils.limits import quote

        text = f"unexpected error ({type(exc).__name__}: {quote(str(exc))}); this is a bug in mimir, please report it"
    if path and text.startswith(f"{path}: "):
        text = text[len(path) + 2 :]
    return " ".join(text.split())


@dataclass
class Prepared:
    """A preprocessed input: the (3, 256, 256) uint8 ``image`` and its QC record as JSON
    (:meth:`mimir.preprocessing.qc.QCRecord.to_json`; None for a ``.npy`` input)."""

    image: np.ndarray
    qc: dict[str, Any] | None = None


def preprocess_subject(path: str, *, cache: bool = True) -> Prepared:
    """The image and QC record of one input: a subject zip (preprocessed) or a ``.npy``.

    Raises :class:`~mimir.errors.InputError` (or anything else for a bug) on failure.
    """
    # mimir.inference.predictor imports torch only inside Predictor, so this stays torch-free
    from mimir.preprocessing.pipeline import load_input_with_qc

    image, qc = load_input_with_qc(path, cache=cache)
    return Prepared(image, None if qc is None else qc.to_json())


def preprocess_or_error(name: str, path: str, *, cache: bool = True) -> tuple[Prepared | None, str | None]:
    """(image, None) on success, (None, one-line message) on any failure."""
    try:
        return preprocess_subject(path, cache=cache), None
    except MemoryError:
        return None, "out of memory while preprocessing"
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a release
        return None, one_line(exc, path)


class InferenceStage:
    """Every module of the run loaded once on one device, fed fixed-shape batches.

    Parameters are those of :class:`mimir.inference.predictor.Predictor`; ``threads``
    sets torch's CPU thread count (None: torch's default).
    """

    def __init__(
        self,
        modules: Sequence[str] | None,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 16,
        level: float = 0.95,
        threads: int | None = None,
    ) -> None:
        import torch

        from mimir.inference.predictor import Predictor

        if threads is not None:
            torch.set_num_threads(max(1, threads))
        self.predictor = Predictor(
            list(modules) if modules else None, device=device, precision=precision, batch_size=batch_size, level=level
        )
        self.batch_size = batch_size

    def identity(self) -> list[dict[str, Any]]:
        """Module identities (name, version, member sha256s, digest), in run order."""
        return self.predictor.identity()

    def describe(self) -> str:
        return self.predictor.describe_device()

    def predict(self, items: Sequence[tuple[str, str, np.ndarray | Prepared]]) -> list[Outcome]:
        """Outcomes for up to ``batch_size`` (name, source, image) items, in order.

        Images are (3, 256, 256) uint8, or :class:`Prepared` (image and QC
        record; the QC verdict and flags go into the row). The forward pass always sees
        ``batch_size`` images: the predictor fills missing places with zeros
        (:meth:`~mimir.inference.predictor.Predictor.predict_images`).
        """
        if not items:
            return []
        if len(items) > self.batch_size:
            out: list[Outcome] = []
            for start in range(0, len(items), self.batch_size):
                out.extend(self.predict(items[start : start + self.batch_size]))
            return out
        from mimir.inference.predictions import SubjectResult

        batch = np.zeros((len(items), *IMAGE_SHAPE), dtype=np.uint8)
        subjects = [SubjectResult.for_input(source) for _, source, _ in items]
        for i, (s, (name, _, image)) in enumerate(zip(subjects, items)):
            s.name = name
            if isinstance(image, Prepared):
                if image.qc is not None:
                    s.qc_status, s.qc_flags = image.qc["status"], list(image.qc["flags"])
                image = image.image
            batch[i] = image
        results = self.predictor.predict_images(batch, subjects)  # padded to batch_size by the predictor
        layout = self.predictor.layout
        device = self.describe()
        return [
            Outcome(name, source, row=r.to_row(layout), obj=r.to_json(), device=device)
            if r.ok
            else Outcome(name, source, stage=STAGE_INFERENCE, message=one_line(_Failed(r.error or ""), source),
                         device=device)
            for (name, source, _), r in zip(items, results)
        ]


def columns_for(modules: Iterable[Any]) -> list[str]:
    """The CSV header for module specs, without loading any weights."""
    from mimir.inference.predictions import csv_header
    from mimir.inference.predictor import layout_of_specs

    return csv_header(layout_of_specs(modules))


def usable_cpus() -> int:
    """CPUs this process may run on (respects cpusets, e.g. a SLURM allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
