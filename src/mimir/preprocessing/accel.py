"""Whether fusion and projection run the compiled kernels, decided without importing numba.

:mod:`mimir.preprocessing.kernels` makes a subject about 1.8x faster, but a
fresh process pays about 0.5 s CPU to import numba and load the cached
machine code: more than it saves on a single subject. So by default
(``MIMIR_NUMBA`` unset or ``auto``) the first image of a process is made by
the plain NumPy code, and the compiled kernels are used from the second
image on (a ``mimir batch`` worker, ``mimir predict`` of several zips). The
two paths give identical bits. ``MIMIR_NUMBA=1`` uses the kernels from the
first subject on, ``MIMIR_NUMBA=0`` never.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

_images_made = 0


def image_made() -> None:
    """Count one finished image of this process (:func:`mimir.preprocessing.projection.make_image`)."""
    global _images_made
    _images_made += 1


def compiled() -> ModuleType | None:
    """The :mod:`~mimir.preprocessing.kernels` module when the compiled path is to be used, else None."""
    mode = os.environ.get("MIMIR_NUMBA", "auto").strip().lower()
    if mode in ("0", "off", "no", "false"):
        return None
    if mode not in ("1", "on", "yes", "true") and _images_made == 0 and "mimir.preprocessing.kernels" not in sys.modules:
        return None
    from mimir.preprocessing import kernels

    return kernels if kernels.enabled() else None
