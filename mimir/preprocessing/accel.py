"""Whether stations, fusion and projection run the compiled kernels.

:mod:`mimir.preprocessing.kernels` (C, built with the package) makes a
subject about twice as fast and gives the same bits as the plain NumPy code.
It is used whenever it is installed, unless ``MIMIR_KERNELS=0`` is set
(``MIMIR_NUMBA=0``, the earlier name, is still read).
"""

from __future__ import annotations

from types import ModuleType


def compiled() -> ModuleType | None:
    """The :mod:`~mimir.preprocessing.kernels` module when the compiled path is to be used, else None."""
    from mimir.preprocessing import kernels

    return kernels if kernels.enabled() else None
