"""Cohort saliency in a common anatomical frame: a template, every subject registered to it, maps averaged there.

>>> template = cohort_template(images, iterations=2, workers=4)      # or one chosen subject's image
>>> regs = register_all(images, template, workers=4)                 # one Registration per image
>>> agg = RegisteredAggregate(template)
>>> for reg, maps in zip(regs, per_subject_maps):
...     if reg.ok:
...         agg.add(reg, maps)                                       # maps: {(module, target): (256, 256)}
>>> agg.maps()                                                       # mean unit-sum map per target, template frame

Images are (3, 256, 256) uint8; see :mod:`mimir.inference.registration` for
the registration itself. A subject whose registration failed is never
averaged; the caller lists it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mimir.inference.registration import (
    Registration,
    RegistrationOptions,
    register,
    warp,
    warp_image,
)
from mimir.inference.saliency import normalise

#: Default number of rounds of the cohort template (mean image, then register and average this many times).
TEMPLATE_ITERATIONS = 2


def _register_one(args: tuple[np.ndarray, np.ndarray, RegistrationOptions]) -> Registration:
    return register(*args)


def register_all(images: Sequence[np.ndarray], template: np.ndarray, options: RegistrationOptions | None = None,
                 workers: int = 1) -> list[Registration]:
    """Register every image to ``template``; ``workers`` > 1 runs that many processes. Order kept."""
    opts = options or RegistrationOptions()
    jobs = [(np.asarray(im), np.asarray(template), opts) for im in images]
    if workers <= 1 or len(jobs) <= 1:
        return [_register_one(j) for j in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # the parent holds torch's threads: never fork it
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        return list(pool.map(_register_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))))


def mean_image(images: Sequence[np.ndarray]) -> np.ndarray:
    """The pixel-wise mean of (3, 256, 256) images, rounded to uint8."""
    if not images:
        raise ValueError("no images")
    total = np.zeros(np.shape(images[0]))
    for im in images:
        total += im
    return np.clip(np.rint(total / len(images)), 0, 255).astype(np.uint8)


def cohort_template(images: Sequence[np.ndarray], iterations: int = TEMPLATE_ITERATIONS,
                    options: RegistrationOptions | None = None, workers: int = 1) -> np.ndarray:
    """A template built from the cohort: the mean image, then ``iterations`` rounds of registering every
    image to the current template and averaging the registered images (failed registrations left out)."""
    template = mean_image(images)
    for _ in range(iterations):
        regs = register_all(images, template, options, workers)
        warped = [warp_image(im, r.coords) for im, r in zip(images, regs) if r.ok]
        if not warped:
            break
        template = mean_image(warped)
    return template


class RegisteredAggregate:
    """Running mean, in the template's frame, of unit-sum maps per key (e.g. (module, target))."""

    def __init__(self, template: np.ndarray) -> None:
        self.template = np.asarray(template)
        self.sums: dict[tuple[str, str], np.ndarray] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, registration: Registration, maps: Mapping[tuple[str, str], np.ndarray]) -> None:
        """Warp each (256, 256) map with the subject's registration, scale it to unit sum, and add it."""
        if not registration.ok:
            raise ValueError(f"a failed registration is not averaged: {registration.error}")
        for key, m in maps.items():
            self.sums[key] = self.sums.get(key, 0) + normalise(warp(m, registration.coords))
            self.counts[key] = self.counts.get(key, 0) + 1

    def maps(self) -> dict[tuple[str, str], np.ndarray]:
        """Mean unit-sum map per key, float32 (256, 256), in the template's frame."""
        return {k: (s / self.counts[k]).astype(np.float32) for k, s in self.sums.items()}
