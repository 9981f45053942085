"""Inference: apply modules (ResNet50 mean-variance ensembles) to images.

:class:`Predictor` loads every requested module once (verifying each
member's sha256), puts it on the chosen device, and maps uint8 image batches
(B, 3, 256, 256) to calibrated predictions. It is the engine behind
``mimir predict`` and the inference side of ``mimir batch``:

>>> p = Predictor(["module_bodycomp"], device="auto")
>>> results = p.predict_files(["1000001_20201_2_0.zip"])      # list[SubjectResult]
>>> results = p.predict_images(images, names)                  # already decoded

The network sees the uint8 values as float32 0..255 (no normalisation). The
default is exact float32 on every device (on CUDA with TF32 off, see
:mod:`mimir.utils.devices`); ``precision="bf16"`` is the opt-in bf16 autocast
with channels_last. Everything runs under ``torch.inference_mode``.

A forward pass that runs out of (GPU) memory is retried once as it was, after
freeing the allocator's cache (same shape: the same bits); if it fails again,
the batch is run in halves, each padded to the half size, and every later
forward pass of this predictor has that size too (pieces, the last padded with
blank images; the numbers then equal
those of a run with that ``batch_size``; a warning says so and
:meth:`Predictor.describe_device` names the size). One image at a time that
still does not fit stops with :class:`OutOfMemory`.
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

_log = logging.getLogger("mimir")
#: (module name, reference precision, run precision) already warned about in this process
_warned_reference: set[tuple[str, str, str]] = set()


class OutOfMemory(MimirError):
    """Even one image per forward pass does not fit in the device's memory."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (torch's OOM, or cuDNN/cuBLAS failing to allocate)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "_ALLOC_FAILED" in text)


#: The one line shown when ``predict`` or ``batch`` find no module to apply by default.
NO_MODULE_HINT = (
    "The published MIMIR modules need a download in a browser: mimir fetch-weights --list says where to get "
    "each, then install the downloaded zip with mimir fetch-weights NAME --from FILE.zip; "
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
        ``auto`` and ``fp32``: exact float32 (TF32 off on CUDA); ``bf16``: the
        opt-in bf16 autocast (channels_last on CUDA), see docs/precision.md.
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
        #: images per forward pass after running out of memory (None: the whole batch at once)
        self.forward_size: int | None = None
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
            if reference is not None:
                _warn_reference_precision(spec.name, reference.feature_precision, self.precision)
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

        text = describe(self.device, self.precision)
        if self.forward_size is not None:
            text += f" [forward passes of {self.forward_size} images after running out of memory]"
        return text

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
        true or the module has an OOD reference. Out of memory: see the module
        docstring (retry as is, then halves padded to the half size).
        """
        if getattr(images, "ndim", 0) == 3:
            images = images[None]
        n = int(images.shape[0])
        retried = False
        while True:
            size = self.forward_size or n
            try:
                if self.forward_size is None:
                    return self._forward_once(images, features)
                return self._forward_pieces(images, size, features)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
            self._free_memory()
            if not retried:
                retried = True  # the same shape once more: fragmentation or another process's peak
                continue
            if size <= 1:
                raise OutOfMemory(
                    f"out of memory on {self.device} even with one image per forward pass",
                    hint="Close other programs using this device, apply fewer modules per run (-m), "
                    "or use --device cpu.",
                )
            self.forward_size = (size + 1) // 2
            _log.warning(
                "out of memory on %s with %d images per forward pass: going on with %d (the numbers from now on "
                "equal those of --batch-size %d; lower --batch-size to avoid this)",
                self.device, size, self.forward_size, self.forward_size,
            )

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _forward_pieces(self, images: np.ndarray | Any, size: int, features: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """:meth:`_forward_once` over pieces of ``size`` images, the last padded with blank images (dropped)."""
        n = int(images.shape[0])
        parts: list[list[tuple[np.ndarray, np.ndarray | None]]] = []
        for start in range(0, n, size):
            piece = images[start : start + size]
            m = int(piece.shape[0])
            if m < size:
                blank = np.zeros((size - m, *IMAGE_SHAPE), dtype=np.uint8)
                if isinstance(piece, np.ndarray):
                    piece = np.concatenate([piece, blank])
                else:
                    import torch

                    piece = torch.cat([piece, torch.from_numpy(blank).to(piece.device, piece.dtype)])
            parts.append([(raw[:, :m], None if f is None else f[:, :m]) for raw, f in self._forward_once(piece, features)])
        return [
            (np.concatenate([p[i][0] for p in parts], axis=1),
             None if parts[0][i][1] is None else np.concatenate([p[i][1] for p in parts], axis=1))  # type: ignore[misc]
            for i in range(len(self.loaded))
        ]

    def _forward_once(self, images: np.ndarray | Any, features: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """:meth:`_forward` of the whole batch in one pass per member."""
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

    def _padded(self, images: np.ndarray | Any) -> np.ndarray | Any:
        """``images`` (n <= batch_size, 3, 256, 256) followed by zero images up to ``batch_size``."""
        n = images.shape[0]
        if n == self.batch_size:
            return images
        if isinstance(images, np.ndarray):
            pad = np.zeros((self.batch_size - n, *images.shape[1:]), dtype=images.dtype)
            return np.concatenate([images, pad])
        import torch

        pad = torch.zeros((self.batch_size - n, *images.shape[1:]), dtype=images.dtype, device=images.device)
        return torch.cat([images, pad])

    def predict_images(
        self,
        images: np.ndarray | Any,
        subjects: Sequence[str | os.PathLike[str] | SubjectResult],
    ) -> list[SubjectResult]:
        """Results for a batch of uint8 images (B, 3, 256, 256), one subject each.

        ``subjects`` are input paths (names and eid/instance are parsed from
        them) or :class:`SubjectResult` records to fill in. Every forward pass
        has exactly ``batch_size`` images: more are cut into passes of that
        size, fewer are padded with blank images whose outputs are dropped.
        A subject's numbers therefore do not depend on how many or which
        other subjects were predicted with it: ``predict`` of one file, of
        many, and ``mimir batch`` give the same bits (same device, settings
        and ``batch_size``).
        """
        records = [s if isinstance(s, SubjectResult) else SubjectResult.for_input(s) for s in subjects]
        n = images.shape[0] if getattr(images, "ndim", 0) == 4 else 1
        if len(records) != n:
            raise ValueError(f"{n} images but {len(records)} subjects")
        if getattr(images, "ndim", 0) == 3:
            images = images[None]
        if n > self.batch_size:
            for start in range(0, n, self.batch_size):
                self.predict_images(images[start : start + self.batch_size], records[start : start + self.batch_size])
            return records
        forward = [(raw[:, :n], None if feats is None else feats[:, :n])
                   for raw, feats in self._forward(self._padded(images))]
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


def _warn_reference_precision(module: str, reference: str, precision: str) -> None:
    """Warn once per process when a module's OOD reference was fitted at another precision than the run's."""
    if reference == precision or (module, reference, precision) in _warned_reference:
        return
    _warned_reference.add((module, reference, precision))
    _log.warning(
        "the OOD reference of %s was fitted on %s features, this run computes %s features: its OOD scores shift "
        "(by up to a few percent, docs/precision.md); use --precision %s for scores on the reference's scale",
        module, reference, precision, reference,
    )


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
