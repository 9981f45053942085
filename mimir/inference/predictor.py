"""Inference: apply modules (ResNet50 mean-variance ensembles) to images.

:class:`Predictor` loads every requested module once (verifying each
member's sha256), puts it on the chosen device, and maps uint8 image batches
(B, 3, 256, 256) to calibrated predictions. It is the engine behind
``mimir predict`` and the inference side of ``mimir batch``:

>>> p = Predictor(["module_bodycomp"], device="auto")
>>> results = p.predict_files(["1000001_20201_2_0.zip"])      # list[SubjectResult]
>>> results = p.predict_images(images, names)                  # already decoded

The network sees the uint8 values as float32 0..255 (no normalisation). On a
CUDA GPU the default is bf16 autocast and channels_last (``precision="fp32"``
turns both off). Everything runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir.errors import MimirError, ModuleError, UsageError
from mimir.inference.predictions import (
    DEFAULT_LEVEL,
    OutputTarget,
    SubjectResult,
    TargetPrediction,
    convert_output,
    csv_header,
    layout_for,
    mixture,
    recalibrate,
    set_ood_score,
    z_value,
)
from mimir.models.modules import ModuleSpec, load_networks

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mimir.preprocessing.prefetch import Loader
    from mimir.preprocessing.qc import QCRecord

IMAGE_SHAPE = (3, 256, 256)
DEFAULT_BATCH = 16


#: The one line shown when ``predict`` or ``batch`` find no module to apply by default.
NO_MODULE_HINT = (
    "Install the published MIMIR modules with mimir fetch-weights (mimir fetch-weights --list shows them); "
    "to see the pipeline work on synthetic data, run mimir demo or pass -m phantom-demo."
)


def default_modules() -> list[ModuleSpec]:
    """The modules applied when none are named: every installed module that is not a synthetic demo.

    In name order (the registry's). Raises :class:`UsageError` with
    :data:`NO_MODULE_HINT` when there is none, and when two of them predict a
    target of the same name: which of them would get the plain column name
    would then depend on what happens to be installed, so the user names the
    modules (``-m``) and thereby the order.
    """
    from mimir.models.registry import scan_modules

    from mimir.models.modules import check_members, verify_module

    scan = scan_modules()
    usable = []
    for spec in scan.modules:
        try:
            check_members(spec)  # headers only: a module that cannot run is skipped, not fatal
        except ModuleError as exc:
            problem = exc
            try:
                verify_module(spec)  # a damaged member file: say so (and how to reinstall)
            except ModuleError as damaged:
                problem = damaged
            scan.problems.append(str(problem))
            continue
        usable.append(spec)
    scan.modules = usable
    research = [s for s in scan.modules if not s.synthetic]
    if research:  # otherwise the error below names the first problem
        for problem in scan.problems:
            logging.getLogger("mimir").warning("skipping a broken module folder: %s", problem)
    if not research:
        demos = [s.name for s in scan.modules if s.synthetic]
        have = f" (installed: only the synthetic demo module {', '.join(demos)})" if demos else ""
        extra = f" ({len(scan.problems)} broken module folder(s): {scan.problems[0]})" if scan.problems else ""
        raise UsageError(f"no research module is installed{have}{extra}", hint=NO_MODULE_HINT)
    owner: dict[str, str] = {}
    for spec in research:  # without -m, a shared target would make columns depend on install order
        for target in spec.targets:
            first = owner.setdefault(target.name, spec.name)
            if first != spec.name:
                raise UsageError(
                    f"installed modules {first} and {spec.name} both predict {target.name}",
                    hint=f"Name the modules with -m (for example -m {first} -m {spec.name}): the first named "
                    "keeps the plain column names, the others' shared targets are prefixed with their module name.",
                )
    return research


def resolve_modules(modules: Iterable[str | os.PathLike[str] | ModuleSpec] | None = None) -> list[ModuleSpec]:
    """Module specs for names/paths/specs, in the order given (duplicates dropped).

    ``None`` or empty means :func:`default_modules`: every installed module
    that is not a synthetic demo (a demo module runs only when named).
    """
    from mimir.models.registry import get_module

    if not modules:
        return default_modules()
    out: list[ModuleSpec] = []
    for m in modules:
        spec = m if isinstance(m, ModuleSpec) else get_module(m)
        if any(s.name == spec.name for s in out):
            continue
        out.append(spec)
    return out


def layout_of_specs(specs: Iterable[ModuleSpec]) -> list[OutputTarget]:
    """The output targets (columns) of a run with these modules, in order; no weights are loaded."""
    return layout_for(
        (s.name, s.version, [(t.name, t.unit, t.field, t.support) for t in s.targets], s.intended_use)
        for s in specs
    )


@dataclass
class LoadedModule:
    """A module on a device, ready to run."""

    spec: ModuleSpec
    networks: list[Any]
    targets: list[OutputTarget]
    #: the module's out-of-distribution reference (mimir.models.ood.OodReference), or None
    reference: Any = None


class Predictor:
    """Every requested module loaded once, on one device.

    Parameters
    ----------
    modules:
        Module names, module folders or :class:`ModuleSpec` objects; ``None``
        applies every installed module that is not a synthetic demo.
    device, gpu:
        ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``gpu=N`` is ``cuda:N``.
    precision:
        ``auto`` (bf16 + channels_last on CUDA, fp32 elsewhere), ``fp32``, ``bf16``.
    batch_size:
        Images per forward pass in :meth:`predict_files`.
    level:
        Confidence level of the intervals in the results.
    verify:
        Check every member's sha256 against module.json when loading (default).
    """

    def __init__(
        self,
        modules: Iterable[str | os.PathLike[str] | ModuleSpec] | None = None,
        *,
        device: str = "auto",
        gpu: int | None = None,
        precision: str = "auto",
        batch_size: int = DEFAULT_BATCH,
        level: float = DEFAULT_LEVEL,
        verify: bool = True,
    ) -> None:
        import torch

        from mimir.utils.devices import resolve_device, resolve_precision

        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        try:
            z_value(level)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.level = level
        self.batch_size = batch_size
        self.device = resolve_device(device, gpu)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = self.device.type == "cuda" and self.precision != "fp32"
        specs = resolve_modules(modules)
        self.layout: list[OutputTarget] = layout_of_specs(specs)
        self.loaded: list[LoadedModule] = []
        offset = 0
        for spec in specs:
            nets = []
            for net in load_networks(spec, verify=verify):
                net = net.to(self.device)
                if self.channels_last:
                    net = net.to(memory_format=torch.channels_last)
                nets.append(net.eval())
            n = spec.num_targets
            reference = spec.load_reference(verify=verify)
            self.loaded.append(LoadedModule(spec, nets, self.layout[offset : offset + n], reference))
            offset += n

    # ------------------------------------------------------------------ identity

    @property
    def modules(self) -> list[ModuleSpec]:
        return [m.spec for m in self.loaded]

    def identity(self) -> list[dict[str, Any]]:
        """Provenance of every module: name, version, member sha256s, module.json digest."""
        return [m.spec.identity() for m in self.loaded]

    def columns(self) -> list[str]:
        """The CSV header of this run (the same for ``predict`` and ``batch``)."""
        return csv_header(self.layout)

    def describe_device(self) -> str:
        from mimir.utils.devices import describe

        return describe(self.device, self.precision)

    # ------------------------------------------------------------------ numerics

    def _to_input(self, images: np.ndarray | Any) -> torch.Tensor:
        import torch

        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
                raise ValueError(f"expected images of shape (B, 3, 256, 256), got {images.shape}")
            x = torch.from_numpy(np.ascontiguousarray(images))
        else:
            x = images
            if x.ndim == 3:
                x = x[None]
        # uint8 travels to the device (4x less than float), then becomes float32 0..255
        x = x.to(self.device, non_blocking=True).to(torch.float32)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _forward(self, images: np.ndarray | Any, *, features: bool = False) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per module, (raw outputs (K, B, 2T) float64, pooled features (K, B, d) float32 or None).

        Features are returned (from the same forward pass) when ``features`` is
        true or the module has an OOD reference.
        """
        import torch

        x = self._to_input(images)
        out = []
        with torch.inference_mode():
            for lm in self.loaded:
                keep = features or lm.reference is not None
                members, feat_list = [], []
                for net in lm.networks:
                    # the backbone under autocast; the small final layer always in fp32,
                    # so that means and log variances keep their precision
                    with self._autocast():
                        feats = net.features(x)
                    feats = feats.float()
                    members.append(net.fc(feats).cpu().numpy().astype(np.float64))
                    if keep:
                        feat_list.append(feats.cpu().numpy())
                out.append((np.stack(members), np.stack(feat_list) if keep else None))
        return out

    def raw_outputs(self, images: np.ndarray | Any) -> list[np.ndarray]:
        """Per module, the raw network outputs as float64 of shape (K, B, 2T)."""
        return [raw for raw, _ in self._forward(images)]

    def features(self, images: np.ndarray | Any) -> list[np.ndarray]:
        """Per module, the members' pooled penultimate features (K, B, d) float32."""
        return [f for _, f in self._forward(images, features=True)]  # type: ignore[misc]

    @staticmethod
    def _combine(lm: LoadedModule, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, sd, cal, div = lm.spec.arrays()
        converted = [convert_output(r, mu, sd, cal, div) for r in raw]
        means = np.stack([c[0] for c in converted])
        variances = np.stack([c[1] for c in converted])
        mean, variance = mixture(means, variances)
        refit = lm.spec.recalibration_arrays()
        return (mean, variance) if refit is None else recalibrate(mean, variance, *refit)

    def predict_arrays(self, images: np.ndarray | Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per module, (mean, variance) of shape (B, T) in display units, ensemble combined."""
        return [self._combine(lm, raw) for lm, raw in zip(self.loaded, self.raw_outputs(images))]

    def predict_images(
        self,
        images: np.ndarray | Any,
        subjects: Sequence[str | os.PathLike[str] | SubjectResult],
    ) -> list[SubjectResult]:
        """Results for a batch of uint8 images (B, 3, 256, 256), one subject each.

        ``subjects`` are input paths (names and eid/instance are parsed from
        them) or :class:`SubjectResult` records to fill in.
        """
        records = [s if isinstance(s, SubjectResult) else SubjectResult.for_input(s) for s in subjects]
        n = images.shape[0] if getattr(images, "ndim", 0) == 4 else 1
        if len(records) != n:
            raise ValueError(f"{n} images but {len(records)} subjects")
        forward = self._forward(images)
        per_module = [self._combine(lm, raw) for lm, (raw, _) in zip(self.loaded, forward)]
        ood = [
            None if lm.reference is None or feats is None else lm.reference.scores(feats)
            for lm, (_, feats) in zip(self.loaded, forward)
        ]
        for i, rec in enumerate(records):
            preds: list[TargetPrediction] = []
            bad: list[str] = []
            for lm, (mean, var) in zip(self.loaded, per_module):
                for j, target in enumerate(lm.targets):
                    m, v = float(mean[i, j]), float(var[i, j])
                    if not (np.isfinite(m) and np.isfinite(v) and v >= 0):
                        bad.append(f"{lm.spec.name}/{lm.spec.targets[j].name} (mean {m:g}, variance {v:g})")
                    preds.append(TargetPrediction(target, m, v, self.level))
            if bad:
                # never written as inf/null: the subject fails, naming the module and target
                rec.predictions = []
                rec.error = (
                    f"{rec.source}: prediction is not finite for {', '.join(bad[:5])}"
                    f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}; "
                    "the module's statistics or the input are broken"
                )
                continue
            rec.predictions = preds
            rec.error = None
            for lm, scores in zip(self.loaded, ood):
                set_ood_score(rec, lm.spec.name, None if scores is None else float(scores[i]))
        return records

    # ------------------------------------------------------------------ files

    def predict_files(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        cache: bool = True,
        on_error: Callable[[SubjectResult], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        load: Loader | None = None,
    ) -> list[SubjectResult]:
        """Results for input files (subject zips or ``.npy`` images), in input order.

        Each image is decoded once and fed to every module. A file that cannot
        be read gets a record with ``error`` set (and ``on_error`` is called);
        the others are predicted. ``on_progress(n)`` is called after each
        batch with the number of files done in it. ``load(path)`` makes an
        input's image and QC record (default:
        :func:`~mimir.preprocessing.pipeline.load_input_with_qc` with ``cache``;
        see :func:`~mimir.preprocessing.prefetch.first_input_prefetched`).
        """
        if load is None:
            from mimir.preprocessing.pipeline import load_input_with_qc

            def load(path: str) -> tuple[np.ndarray, QCRecord | None]:
                return load_input_with_qc(path, cache=cache)

        records = [SubjectResult.for_input(p) for p in paths]
        for start in range(0, len(records), self.batch_size):
            chunk = records[start : start + self.batch_size]
            images, good = [], []
            for rec in chunk:
                try:
                    image, qc = load(rec.source)
                    images.append(image)
                    good.append(rec)
                    if qc is not None:
                        rec.qc_status, rec.qc_flags = qc.status, list(qc.flags)
                except MimirError as exc:
                    rec.error = str(exc)
                except MemoryError:
                    rec.error = f"{rec.source}: out of memory while reading this input"
                except Exception as exc:  # a bug: never let one odd file stop the run
                    from mimir.utils.limits import quote

                    rec.error = (
                        f"{rec.source}: unexpected error while reading ({type(exc).__name__}: {quote(str(exc))}); "
                        "this is a bug in mimir, please report it"
                    )
                if rec.error is not None and on_error is not None:
                    on_error(rec)
            if good:
                self.predict_images(np.stack(images), good)
                for rec in good:
                    if rec.error is not None and on_error is not None:
                        on_error(rec)
            if on_progress is not None:
                on_progress(len(chunk))
        return records


def predict(
    inputs: Sequence[str | os.PathLike[str]],
    modules: Iterable[str | os.PathLike[str] | ModuleSpec] | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    ci: float = DEFAULT_LEVEL,
    batch_size: int = DEFAULT_BATCH,
    cache: bool = True,
) -> list[SubjectResult]:
    """Predict every target of ``modules`` (default: all installed) for each input file.

    Returns one :class:`SubjectResult` per input, in order; unreadable inputs
    have ``error`` set instead of predictions.
    """
    predictor = Predictor(modules, device=device, precision=precision, batch_size=batch_size, level=ci)
    return predictor.predict_files(list(inputs), cache=cache)
