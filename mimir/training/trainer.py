"""Train, calibrate and write a mean-variance ResNet50 ensemble module.

The method (that of the published MIMIR modules, as an ensemble):

- targets standardised with the training subjects' mean and sd (ddof=1);
- the network maps the uint8 image, as float32 0..255, to (B, T, 2):
  standardised mean and log variance per target;
- loss :func:`mimir.training.loss.mean_variance_loss` over present targets;
- Adam, ``lr`` for the first four fifths of the iterations, ``lr / 10`` after;
- augmentation: random integer translation of up to ``max_shift`` pixels,
  nearest-edge fill;
- K members that differ only by seed (initialisation, batches, shifts);
- calibration: one variance scale factor per target fitted on held-out
  predictions (a validation split, or out-of-fold predictions with
  ``folds``), see :mod:`mimir.training.calibration`.

Work is split into *jobs*, one network each: with a validation split the K
members; with ``folds=F`` the F x K fold networks (for out-of-fold
predictions) and then the K final members trained on every subject. A work
folder keeps a checkpoint of the running job every ``checkpoint_every``
iterations and the result of every finished job, so an interrupted run that
is started again with the same data and settings continues where it
stopped, with the same result as an uninterrupted run (on the CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mimir import __version__
from mimir.errors import ModuleError, UsageError
from mimir.training.calibration import OBJECTIVES, calibrate, ensemble_variance
from mimir.training.data import (
    BatchSampler,
    Dataset,
    TargetInfo,
    fold_split,
    holdout_split,
    random_shifts,
    shift_images,
    standardisation,
)
from mimir.training.metrics import agreement
from mimir.training.stopping import StopFlag
from mimir.utils.atomic import atomic_path, write_text

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mimir.models.modules import ModuleSpec

ARCHITECTURES = ("resnet50",)
STATE_FILE = "state.json"


@dataclass
class TrainConfig:
    """Settings of a training run (everything but ``name``..``intended_use`` shapes the weights)."""

    name: str = "module"
    version: str = "1.0"
    description: str = ""
    #: "research" or "synthetic-demo" (module.json; a synthetic-demo module runs only when named)
    intended_use: str = "research"
    #: free text for humans: what the module is for
    intended_use_note: str = ""
    arch: str = "resnet50"
    width: int = 64
    members: int = 5
    iterations: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    #: fraction of the iterations after which the learning rate drops by 10
    lr_drop_at: float = 0.8
    val_fraction: float = 0.2
    folds: int | None = None
    max_shift: int = 16
    seed: int = 0
    init: str | None = None
    checkpoint_every: int = 100
    eval_batch_size: int = 32
    #: calibration objective (see :mod:`mimir.training.calibration`): auce, ci95 or nll
    calibration: str = "auce"

    def validate(self) -> None:
        """Raise :class:`UsageError` for settings that cannot work."""
        if self.arch not in ARCHITECTURES:
            raise UsageError(f"unknown architecture {self.arch!r}", hint=f"Choose one of: {', '.join(ARCHITECTURES)}.")
        for label, v in (
            ("--width", self.width),
            ("--members", self.members),
            ("--iterations", self.iterations),
            ("--batch-size", self.batch_size),
            ("checkpoint interval", self.checkpoint_every),
        ):
            if v < 1:
                raise UsageError(f"{label} must be at least 1, got {v}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.folds is not None and self.folds < 2:
            raise UsageError(f"--folds must be at least 2, got {self.folds}")
        if self.max_shift < 0:
            raise UsageError(f"--max-shift must be >= 0, got {self.max_shift}")
        if self.calibration not in OBJECTIVES:
            raise UsageError(
                f"unknown calibration objective {self.calibration!r}", hint=f"Choose one of: {', '.join(OBJECTIVES)}."
            )

    def weights_key(self) -> dict[str, Any]:
        """The settings that determine the weights (checkpoints are only reused when they match)."""
        d = asdict(self)
        # members is left out: jobs are stored per member, so K can grow or shrink between runs
        for k in (
            "name", "version", "description", "intended_use", "intended_use_note", "checkpoint_every", "eval_batch_size", "members",
            "calibration",
        ):
            d.pop(k)
        if self.init is not None:
            d["init"] = _sha256_of_file(self.init)
        return d


@dataclass
class Job:
    """One network to train: ``group`` is ``holdout``, ``fold`` or ``final``."""

    index: int
    group: str
    member: int
    fold: int | None
    train: np.ndarray
    heldout: np.ndarray

    @property
    def key(self) -> str:
        """File stem of this job's results: independent of the ensemble size, so that a run
        with more or fewer members reuses the members it shares with an earlier one."""
        where = f"fold{self.fold}" if self.group == "fold" else self.group
        return f"{where}_m{self.member}"

    @property
    def stream(self) -> int:
        """Seed stream of this job: members (and folds) differ by it."""
        base = {"holdout": 0, "final": 1_000_000}.get(self.group, 1_000 * (1 + (self.fold or 0)))
        return base + self.member

    def label(self, n_members: int) -> str:
        if self.group == "fold":
            return f"fold {self.fold + 1} member {self.member + 1}/{n_members}"  # type: ignore[operator]
        return f"member {self.member + 1}/{n_members}"


def plan_jobs(n: int, config: TrainConfig) -> list[Job]:
    """The jobs of a run over n subjects."""
    jobs: list[Job] = []
    all_idx = np.arange(n)
    empty = np.zeros(0, dtype=np.int64)
    if config.folds:
        folds = fold_split(n, config.folds, config.seed)
        for f, val in enumerate(folds):
            train = np.setdiff1d(all_idx, val)
            for k in range(config.members):
                jobs.append(Job(len(jobs), "fold", k, f, train, val))
        for k in range(config.members):
            jobs.append(Job(len(jobs), "final", k, None, all_idx, empty))
    else:
        train, val = holdout_split(n, config.val_fraction, config.seed)
        for k in range(config.members):
            jobs.append(Job(len(jobs), "holdout", k, None, train, val))
    return jobs


#: Fewer held-out subjects than this make the calibration factors (and so the interval widths) uncertain.
MIN_CALIBRATION_SUBJECTS = 50


def calibration_size(jobs: Sequence[Job]) -> int:
    """How many subjects the variance scales are fitted on: the held-out (or out-of-fold) subjects."""
    held: set[int] = set()
    for j in jobs:
        if j.group in ("holdout", "fold"):
            held.update(int(i) for i in j.heldout)
    return len(held)


def warn_small_calibration(jobs: Sequence[Job]) -> int:
    """Log a warning when fewer than :data:`MIN_CALIBRATION_SUBJECTS` subjects calibrate the module; return the count."""
    n = calibration_size(jobs)
    if 0 < n < MIN_CALIBRATION_SUBJECTS:
        logging.getLogger("mimir").warning(
            "the intervals will be calibrated on only %d held-out subject(s) (fewer than %d): each target's variance "
            "scale, and so every interval width, is itself uncertain and may cover far more or less than its level; "
            "train on more subjects, raise --val-fraction, or use --folds",
            n, MIN_CALIBRATION_SUBJECTS,
        )
    return n


class TrainProgress:
    """Receives progress events; the default does nothing (the CLI draws bars)."""

    def run_started(self, jobs: Sequence[Job], iterations: int, done_iterations: int) -> None:
        """Called once; ``done_iterations`` were done before (finished jobs and a checkpoint)."""

    def job_started(self, job: Job, label: str, start_iteration: int, iterations: int) -> None:
        """A job starts (``start_iteration`` > 0 when resumed from a checkpoint)."""

    def step(self, job: Job, iteration: int, loss: float) -> None:
        """Iteration ``iteration`` (1-based count of iterations done) finished with this batch loss."""

    def job_finished(self, job: Job, seconds: float) -> None:
        """A job's network is trained and its held-out predictions made."""

    def message(self, text: str) -> None:
        """A line of information (loading, resuming, calibrating)."""

    def loading(self, done: int, total: int) -> None:
        """``done`` of ``total`` images loaded (zips are preprocessed on the way)."""


@dataclass
class JobResult:
    """A trained network, its standardisation, its held-out raw outputs and its timing."""

    state_dict: dict[str, Any]
    mean: np.ndarray  # (T,)
    sd: np.ndarray  # (T,)
    heldout_raw: np.ndarray  # (n_heldout, T, 2) float64
    final_loss: float
    train_seconds: float
    iterations_run: int


@dataclass
class TrainResult:
    """What :func:`train` made."""

    spec: ModuleSpec
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    iterations_per_second: float = math.nan
    images_per_second: float = math.nan
    #: networks trained at once (the rates above are per network)
    workers: int = 1


def _sha256_of_file(path: str | os.PathLike[str]) -> str:
    from mimir.utils.hashing import file_sha256

    try:
        return file_sha256(path)
    except FileNotFoundError:
        raise UsageError("file not found", path=os.fspath(path)) from None


def data_fingerprint(dataset: Dataset) -> str:
    """sha256 over the subject names, target names, target values and image bytes."""
    h = hashlib.sha256()
    h.update("\n".join(dataset.names).encode())
    h.update(b"\0" + "\n".join(dataset.targets).encode() + b"\0")
    h.update(np.ascontiguousarray(dataset.values, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(dataset.images).data)
    return h.hexdigest()


def _job_seed(config: TrainConfig, job: Job) -> int:
    seq = np.random.SeedSequence([config.seed & 0xFFFFFFFF, job.stream, 0x1A17])
    return int(seq.generate_state(1, dtype=np.uint32)[0])


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """Learning rate of 0-based ``iteration``: ``lr``, then ``lr / 10`` for the last fifth."""
    drop = int(round(config.lr_drop_at * config.iterations))
    return config.lr if iteration < drop else config.lr / 10.0


# --------------------------------------------------------------------------- interruption


# --------------------------------------------------------------------------- initialisation


def init_from(net: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a torchvision-format ResNet50 state dict into ``net``, except its ``fc`` layer.

    The file is read with ``weights_only=True``; its width must be ``net``'s
    (64 for torchvision's ImageNet weights). ``fc`` keeps its random
    initialisation (its size depends on the targets).
    """
    from mimir.models.resnet import architecture_of, load_checkpoint

    state = load_checkpoint(path)
    width, _ = architecture_of(state)
    shown = os.path.basename(os.fspath(path))
    if width != net.width:
        raise ModuleError(f"is a width-{width} ResNet50; pass --width {width}", path=shown)
    body = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise ModuleError(
            f"does not fit a ResNet50 body ({len(unexpected)} unexpected, {len(missing)} missing tensors)",
            path=shown,
        )


# --------------------------------------------------------------------------- the trainer


class Trainer:
    """Runs the jobs of one training run with checkpoints in ``work_dir``."""

    def __init__(
        self,
        dataset: Dataset,
        targets: Sequence[TargetInfo],
        config: TrainConfig,
        work_dir: str | os.PathLike[str],
        *,
        device: str = "cpu",
        progress: TrainProgress | None = None,
        restart: bool = False,
    ) -> None:
        import torch

        from mimir.utils.devices import resolve_device

        config.validate()
        if [t.name for t in targets] != list(dataset.targets):
            raise UsageError("target descriptions do not match the targets table")
        self.dataset = dataset
        self.targets = list(targets)
        self.config = config
        self.work_dir = Path(work_dir)
        self.device = resolve_device(device)
        self.progress = progress or TrainProgress()
        self.jobs = plan_jobs(len(dataset.names), config)
        self.stop = StopFlag()
        self._torch = torch
        self.data_digest = data_fingerprint(dataset)
        key = {"config": config.weights_key(), "data": self.data_digest, "format": 1}
        self.key_digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self._open_work_dir(restart)

    # ------------------------------------------------------------------ work folder

    def _open_work_dir(self, restart: bool) -> None:
        state_path = self.work_dir / STATE_FILE
        if restart and self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        if state_path.is_file():
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                state = {}
            if state.get("key") != self.key_digest:
                raise UsageError(
                    "holds checkpoints of a training run with other data or settings",
                    path=os.fspath(self.work_dir),
                    hint="Pass --restart to discard them, or run with the same inputs and options to resume.",
                )
        else:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            write_text(state_path, json.dumps({"key": self.key_digest, "mimir": __version__}, indent=2) + "\n")

    def _job_file(self, job: Job) -> Path:
        return self.work_dir / f"job_{job.key}.pt"

    def _current_file(self, job: Job) -> Path:
        """Checkpoint of a job in progress (one per job, so parallel workers never share one)."""
        return self.work_dir / f"current_{job.key}.pt"

    def _save(self, obj: dict[str, Any], path: Path) -> None:
        with atomic_path(path, suffix=".pt") as tmp:
            self._torch.save(obj, tmp)

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            return self._torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception:  # a damaged checkpoint is redone, not trusted
            return None

    def _finished(self, job: Job) -> JobResult | None:
        obj = self._load(self._job_file(job))
        if obj is None:
            return None
        return JobResult(
            state_dict=obj["state_dict"],
            mean=obj["mean"].numpy(),
            sd=obj["sd"].numpy(),
            heldout_raw=obj["heldout_raw"].numpy(),
            final_loss=float(obj["final_loss"]),
            train_seconds=float(obj["train_seconds"]),
            iterations_run=int(obj["iterations_run"]),
        )

    # ------------------------------------------------------------------ networks

    def _new_network(self, job: Job) -> torch.nn.Module:
        from mimir.models.resnet import mean_variance_resnet50

        self._torch.manual_seed(_job_seed(self.config, job))
        net = mean_variance_resnet50(len(self.targets), self.config.width)
        if self.config.init is not None:
            init_from(net, self.config.init)
        return net

    # ------------------------------------------------------------------ one job

    def _run_job(self, job: Job, images: torch.Tensor) -> JobResult:
        from mimir.training.loss import mean_variance_loss

        torch = self._torch
        cfg = self.config
        mean, sd = standardisation(self.dataset.values[job.train], self.dataset.targets)
        y_all = torch.from_numpy(((self.dataset.values - mean) / sd).astype(np.float32)).to(self.device)

        net = self._new_network(job).to(self.device).train()
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        start, train_seconds, last_loss = 0, 0.0, math.nan
        ckpt = self._load(self._current_file(job))
        if ckpt is not None and ckpt.get("job") == job.key:
            net.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            start = int(ckpt["iteration"])
            train_seconds = float(ckpt["train_seconds"])
            last_loss = float(ckpt["loss"])
        label = job.label(cfg.members)
        self.progress.job_started(job, label, start, cfg.iterations)

        sampler = BatchSampler(job.train, cfg.batch_size, cfg.seed, job.stream)
        for it in range(start, cfg.iterations):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, it)
            idx = torch.from_numpy(sampler(it)).to(self.device)
            shifts = random_shifts(cfg.batch_size, cfg.max_shift, cfg.seed, job.stream, it)
            x = shift_images(images[idx], shifts).to(torch.float32)
            loss = mean_variance_loss(net(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last_loss = float(loss.detach())
            train_seconds += time.perf_counter() - t0
            done = it + 1
            self.progress.step(job, done, last_loss)
            if not math.isfinite(last_loss):
                raise UsageError(
                    f"training diverged ({label}, iteration {done}: loss is {last_loss})",
                    hint="Lower --lr.",
                )
            if done < cfg.iterations and (done % cfg.checkpoint_every == 0 or self.stop.requested):
                self._save(
                    {
                        "job": job.key,
                        "iteration": done,
                        "model": net.state_dict(),
                        "optimizer": opt.state_dict(),
                        "train_seconds": train_seconds,
                        "loss": last_loss,
                    },
                    self._current_file(job),
                )
            if self.stop.requested:
                raise KeyboardInterrupt

        heldout = self._predict_raw(net, images, job.heldout)
        result = JobResult(
            state_dict={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            mean=mean,
            sd=sd,
            heldout_raw=heldout,
            final_loss=last_loss,
            train_seconds=train_seconds,
            iterations_run=cfg.iterations,
        )
        self._save(
            {
                "state_dict": result.state_dict,
                "mean": torch.from_numpy(mean),
                "sd": torch.from_numpy(sd),
                "heldout_raw": torch.from_numpy(heldout),
                "final_loss": last_loss,
                "train_seconds": train_seconds,
                "iterations_run": cfg.iterations,
            },
            self._job_file(job),
        )
        with contextlib.suppress(FileNotFoundError):
            self._current_file(job).unlink()
        return result

    def _predict_raw(self, net: torch.nn.Module, images: torch.Tensor, idx: np.ndarray) -> np.ndarray:
        """Raw outputs (n, T, 2) float64 of the network in eval mode for subjects ``idx``."""
        torch = self._torch
        t = len(self.targets)
        out = np.zeros((idx.size, t, 2), dtype=np.float64)
        net.eval()
        with torch.inference_mode():
            for s in range(0, idx.size, self.config.eval_batch_size):
                sel = torch.from_numpy(idx[s : s + self.config.eval_batch_size]).to(self.device)
                raw = net(images[sel].to(torch.float32)).float().cpu().numpy()
                out[s : s + sel.numel()] = raw.reshape(-1, t, 2)
        net.train()
        return out

    # ------------------------------------------------------------------ the run

    def run(self, workers: int = 1, threads: int | None = None) -> list[JobResult]:
        """Train every job not yet finished (resuming checkpoints), in order.

        ``workers`` > 1 trains that many networks at once in worker processes
        (:mod:`mimir.training.workers`) with ``threads`` torch threads each;
        every network is the same as in a sequential run with those threads.
        """
        torch = self._torch
        images = torch.from_numpy(self.dataset.images)
        if self.device.type != "cpu":
            images = images.to(self.device)
        cfg = self.config
        finished = {j.index: self._finished(j) for j in self.jobs}
        done_its = sum(cfg.iterations for r in finished.values() if r is not None)
        for j in self.jobs:
            if finished[j.index] is None:
                ckpt = self._load(self._current_file(j))
                if ckpt is not None and ckpt.get("job") == j.key:
                    done_its += int(ckpt.get("iteration", 0))
        if done_its:
            self.progress.message(
                f"resuming from checkpoints in {self.work_dir} "
                f"({done_its} of {len(self.jobs) * cfg.iterations} iterations done)"
            )
        self.progress.run_started(self.jobs, cfg.iterations, done_its)
        results: list[JobResult] = []
        pending = [j for j in self.jobs if finished[j.index] is None]
        threads_before = torch.get_num_threads()
        if threads is not None and not (workers > 1 and len(pending) > 1):
            torch.set_num_threads(threads)  # a sequential run uses them itself
        with self.stop.installed(), contextlib.ExitStack() as restore:
            restore.callback(torch.set_num_threads, threads_before)
            if workers > 1 and len(pending) > 1:
                from mimir.training.workers import run_parallel

                run_parallel(self, pending, workers, threads)
                for j in pending:
                    finished[j.index] = self._finished(j)
                    if finished[j.index] is None:
                        raise ModuleError("was not written by its worker", path=os.fspath(self._job_file(j)))
            for job in self.jobs:
                r = finished[job.index]
                if r is None:
                    t0 = time.perf_counter()
                    r = self._run_job(job, images)
                    self.progress.job_finished(job, time.perf_counter() - t0)
                results.append(r)
        return results


# --------------------------------------------------------------------------- evaluation


def target_support(
    info: TargetInfo, catalogue: tuple[float | None, float | None] | None, values: np.ndarray
) -> tuple[float | None, float | None] | None:
    """The support recorded for a trained target: ``--support`` if given, else the published
    catalogue's for a catalogue target, else the unit's default (:func:`mimir.models.units.support_of_unit`).

    A unit's default is dropped, with a warning, when a training value (``values``, NaN for
    missing) lies outside it: a change or a difference in kg or percent may be negative.
    """
    from mimir.models.units import support_of_unit

    if info.support_given:
        return info.support
    if catalogue is not None:
        return catalogue
    support = support_of_unit(info.unit)
    if support is None:
        return None
    present = values[np.isfinite(values)]
    low, high = support
    if present.size and ((low is not None and present.min() < low) or (high is not None and present.max() > high)):
        logging.getLogger("mimir").warning(
            f"target {info.name}: training values from {present.min():g} to {present.max():g} lie outside "
            f"the default support of unit {info.unit} ({low:g} to {'no limit' if high is None else f'{high:g}'}); "
            "its intervals are not cut (give --support to set one)"
        )
        return None
    return support


def heldout_predictions(
    jobs: Sequence[Job], results: Sequence[JobResult], n: int, members: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Held-out member means and variances in target units, (K, n_heldout, T) each, and the row indices.

    With folds, each subject's K predictions come from the members of the fold
    that held it out (out-of-fold predictions). ``None`` when nothing was held out.
    """
    rows: list[int] = []
    for j in jobs:
        if j.heldout.size and j.member == 0:
            rows.extend(int(i) for i in j.heldout)
    if not rows:
        return None
    order = np.asarray(rows)
    pos = {int(r): p for p, r in enumerate(order)}
    t = results[0].mean.size
    means = np.full((members, order.size, t), np.nan)
    variances = np.full((members, order.size, t), np.nan)
    for j, r in zip(jobs, results):
        if not j.heldout.size:
            continue
        p = np.asarray([pos[int(i)] for i in j.heldout])
        means[j.member, p] = r.heldout_raw[..., 0] * r.sd + r.mean
        variances[j.member, p] = np.exp(r.heldout_raw[..., 1]) * np.square(r.sd)
    return means, variances, order


def evaluate(
    truth: np.ndarray, means: np.ndarray, variances: np.ndarray, targets: Sequence[str], objective: str = "auce"
) -> dict[str, dict[str, Any]]:
    """Per target: agreement of the ensemble mean with the truth, and its calibration.

    ``truth`` (n, T); ``means``/``variances`` (K, n, T) in target units.
    """
    out: dict[str, dict[str, Any]] = {}
    for t, name in enumerate(targets):
        y = truth[:, t]
        ok = np.isfinite(y)
        cal = calibrate(y[ok], means[:, ok, t], variances[:, ok, t], objective) if ok.sum() >= 2 else None
        mean, _ = ensemble_variance(means[:, :, t], variances[:, :, t])
        entry: dict[str, Any] = dict(agreement(y, mean))
        if cal is not None:
            entry.update(cal.to_json())
            entry["calibration_objective"] = objective
        else:
            entry["calibration_factor"] = 1.0
        out[name] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}
    return out


# --------------------------------------------------------------------------- OOD reference


def fit_training_reference(
    state_dicts: Sequence[dict[str, Any]],
    dataset: Dataset,
    job: Job,
    *,
    device: Any = "cpu",
    batch_size: int = 32,
) -> tuple[Any, dict[str, Any]] | tuple[None, None]:
    """The OOD reference of a freshly trained module, and its provenance; (None, None) with too few images.

    With a hold-out split the mean/covariance come from all images and the
    flag line from the held-out images (which no member saw), cross-fitted
    (:func:`mimir.models.ood.fit_reference`). With folds the final members saw
    every image: all images are cross-fitted, and the flag line, set on images
    the networks were trained on, is somewhat low (more new in-distribution
    images flagged than the nominal 1 %).
    """
    from mimir.models.ood import MIN_CALIBRATION, MIN_FIT, fit_reference, pooled_features
    from mimir.models.resnet import ResNet50, architecture_of

    nets = []
    for sd in state_dicts:
        width, outputs = architecture_of(sd)
        net = ResNet50(num_outputs=outputs, width=width)
        net.load_state_dict(sd, strict=True)
        nets.append(net.eval().to(device))
    if job.heldout.size >= MIN_CALIBRATION and job.train.size + job.heldout.size >= MIN_FIT + MIN_CALIBRATION:
        fit_idx, cal_idx = np.sort(job.train), np.sort(job.heldout)
        how = "mean/covariance on training + held-out images; flag line on the held-out images, 5-fold cross-fitted"
    elif len(dataset.names) >= MIN_FIT + MIN_CALIBRATION:
        fit_idx, cal_idx = np.zeros(0, dtype=np.int64), np.arange(len(dataset.names))
        how = "all images, 5-fold cross-fitted (the flag line is set on images the networks saw)"
    else:
        return None, None
    feats = pooled_features(nets, dataset.images, batch_size=batch_size, device=device)
    ref = fit_reference(feats[:, fit_idx], feats[:, cal_idx])
    fitted = {
        "by": "mimir train",
        "images": "the training data",
        "fit_images": int(fit_idx.size),
        "calibration_images": int(cal_idx.size),
        "split": how,
        "mimir_version": __version__,
    }
    return ref, fitted


# --------------------------------------------------------------------------- entry point


def train(
    dataset: Dataset,
    targets: Sequence[TargetInfo],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    work_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    progress: TrainProgress | None = None,
    restart: bool = False,
    keep_checkpoints: bool = False,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    workers: int = 1,
    threads: int | None = None,
) -> TrainResult:
    """Train an ensemble on ``dataset``, calibrate it, and write the module to ``out_dir``.

    ``work_dir`` (default: ``.<out_dir name>.train`` beside ``out_dir``) keeps
    checkpoints; it is removed after the module is written unless
    ``keep_checkpoints``. Raises :class:`UsageError` when ``out_dir`` exists
    and ``overwrite`` is false. ``workers`` > 1 trains that many networks at
    once in separate processes, ``threads`` torch CPU threads each (see
    :meth:`Trainer.run`).
    """
    from mimir.models.modules import TargetSpec, valid_name, write_module

    out = Path(out_dir)
    if not valid_name(config.name):
        raise UsageError(f"invalid module name {config.name!r}", hint="Use letters, digits, '.', '_' or '-'.")
    if out.exists() and not overwrite:
        raise UsageError("already exists", path=os.fspath(out), hint="Choose another folder or pass --force.")
    work = Path(work_dir) if work_dir is not None else out.parent / f".{out.name}.train"
    trainer = Trainer(dataset, targets, config, work, device=device, progress=progress, restart=restart)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    warn_small_calibration(trainer.jobs)
    results = trainer.run(workers=workers, threads=threads)
    jobs = trainer.jobs
    progress = trainer.progress

    members = [(j, r) for j, r in zip(jobs, results) if j.group in ("holdout", "final")]
    final_mean, final_sd = members[0][1].mean, members[0][1].sd

    names = [t.name for t in targets]
    held = heldout_predictions(jobs, results, len(dataset.names), config.members)
    metrics: dict[str, dict[str, Any]] = {}
    method = None
    if held is not None:
        progress.message("calibrating on held-out predictions")
        means, variances, rows = held
        metrics = evaluate(dataset.values[rows], means, variances, names, config.calibration)
        method = f"{config.folds}-fold out-of-fold" if config.folds else f"holdout {config.val_fraction:g}"

    from mimir.models.catalogue import catalogue_by_name

    known = catalogue_by_name()
    specs = []
    for t, info in enumerate(targets):
        m = metrics.get(info.name)
        entry = known.get(info.name)
        specs.append(
            TargetSpec(
                name=info.name,
                unit=info.unit,
                field=info.field,
                divisor=1.0,
                mean=float(final_mean[t]),
                sd=float(final_sd[t]),
                calibration=float(m["calibration_factor"]) if m else 1.0,
                metrics={"validation": {"method": method, **m}} if m else None,
                support=target_support(info, entry.support if entry is not None else None, dataset.values[:, t]),
            )
        )

    train_seconds = sum(r.train_seconds for r in results)
    total_its = sum(r.iterations_run for r in results)
    its = total_its / train_seconds if train_seconds > 0 else math.nan
    n_train = int(members[0][0].train.size)
    n_heldout = 0 if held is None else int(held[2].size)
    objective = {
        "auce": "minimise the area under the calibration error curve",
        "ci95": "make the central 95 % intervals cover 95 % of the true values",
        "nll": "minimise the Gaussian negative log-likelihood",
    }[config.calibration]
    src: dict[str, Any] = {
        "kind": "trained with mimir train",
        "mimir_version": __version__,
        "method": (
            "mean-variance ResNet50 ensemble: standardised targets (ddof=1), loss mean(exp(-s)(y-m)^2+s) "
            "over present targets, Adam with lr/10 for the last fifth, random integer shifts with "
            "nearest-edge fill, members differ by seed; one variance scale per target fitted on held-out "
            f"predictions to {objective}"
        ),
        "config": {k: v for k, v in asdict(config).items() if k not in ("description", "intended_use", "intended_use_note")},
        "data": {
            "subjects": len(dataset.names),
            "train_subjects": n_train,
            "heldout_subjects": n_heldout,
            "validation": method,
            "sha256": trainer.data_digest,
            "run_key": trainer.key_digest,
        },
        "training": {
            "device": str(trainer.device),
            "workers": workers,
            "iterations_per_second": round(its, 3) if math.isfinite(its) else None,
            "images_per_second": round(its * config.batch_size, 2) if math.isfinite(its) else None,
            "final_batch_loss": [round(r.final_loss, 4) for _, r in members],
        },
    }
    if source:
        src.update(source)
    progress.message("fitting the out-of-distribution reference")
    reference, ref_fitted = fit_training_reference(
        [r.state_dict for _, r in members], dataset, members[0][0], device=trainer.device,
        batch_size=config.eval_batch_size,
    )
    spec = write_module(
        out,
        name=config.name,
        version=config.version,
        targets=specs,
        state_dicts=[r.state_dict for _, r in members],
        description=config.description or f"Trained with mimir train on {len(dataset.names)} subjects.",
        intended_use=config.intended_use,
        intended_use_note=config.intended_use_note,
        source=src,
        overwrite=overwrite,
        ood_reference=reference,
        ood_fitted=ref_fitted,
    )
    if not keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)
    return TrainResult(
        spec=spec, metrics=metrics, iterations_per_second=its, images_per_second=its * config.batch_size, workers=workers
    )
