"""Training and calibration of mean-variance ResNet50 ensemble modules (``mimir train``).

- :mod:`mimir.training.data`: targets table, images, splits, batches, augmentation;
- :mod:`mimir.training.loss`: the mean-variance loss with missing targets;
- :mod:`mimir.training.calibration`: variance scale fitting, coverage, AUCE;
- :mod:`mimir.training.metrics`: MAE, R2, ICC(2,1), MAPE;
- :mod:`mimir.training.trainer`: the training loop, checkpoints, module writing.

>>> from mimir.training import train_module
>>> result = train_module("images/", "targets.csv", "my-module", members=3, iterations=2000)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mimir.training.trainer import TrainConfig, TrainProgress, TrainResult, train

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "train", "train_module"]


def train_module(
    images: str | os.PathLike[str],
    targets_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    units: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
    supports: Sequence[str] | None = None,
    target_info_file: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    progress: TrainProgress | None = None,
    restart: bool = False,
    keep_checkpoints: bool = False,
    overwrite: bool = False,
    cache: bool = True,
    source: dict[str, Any] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    workers: int = 1,
    threads: int | None = None,
    **config: Any,
) -> TrainResult:
    """Train a module from a folder of images (``.npy`` or zips) and a targets CSV.

    ``config`` takes the fields of :class:`TrainConfig` (``name``, ``members``,
    ``width``, ``iterations``, ``batch_size``, ``lr``, ``val_fraction``,
    ``folds``, ``seed``, ...). ``name`` defaults to the output folder's name.
    ``workers`` > 1 trains that many networks at once, in separate processes
    with ``threads`` torch threads each; those are ``spawn`` processes, which
    import the calling script again, so in a script call this under
    ``if __name__ == "__main__":`` (a call outside it raises
    :class:`~mimir.errors.UsageError` saying so). ``targets_csv`` is keyed by
    ``name`` (image file stems) or ``eid`` (UK Biobank participant ids).
    ``supports`` (``name=LOW:HIGH`` or ``name=none``) overrides the support
    each target's intervals are cut to (default: the published catalogue's,
    else derived from the unit: percent 0-100; volumes, masses, lengths >= 0).
    """
    from pathlib import Path

    from mimir.training.data import load_images, read_targets_csv, target_info

    if workers > 1:
        from mimir.utils.processes import require_main_guard

        require_main_guard("train_module(workers > 1)")

    config.setdefault("name", Path(out_dir).name)
    cfg = TrainConfig(**config)
    cfg.validate()
    table = read_targets_csv(targets_csv)
    infos = target_info(table.targets, units=units, fields=fields, info_file=target_info_file, supports=supports)
    if progress is not None:
        progress.message(f"loading images from {os.fspath(images)}")
    dataset = load_images(images, table, cache=cache, on_progress=progress.loading if progress is not None else None)
    return train(
        dataset,
        infos,
        out_dir,
        cfg,
        work_dir=work_dir,
        device=device,
        progress=progress,
        restart=restart,
        keep_checkpoints=keep_checkpoints,
        overwrite=overwrite,
        source=source,
        workers=workers,
        threads=threads,
    )
