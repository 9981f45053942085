"""How to install an optional extra of mimir: the one place every install hint comes from.

mimir is distributed as ``ukb-mimir`` (the name ``mimir`` on PyPI belongs to an
unrelated project); the import name and the command stay ``mimir``. An extra
is installed differently from a release (``pip install 'ukb-mimir[report]'``)
than from a git checkout installed with ``pip install -e .`` (``pip install -e
'<checkout>[report]'``); :func:`extra_hint` says the one that fits where this
copy runs from, :func:`extra_help` says both (for help texts and docs,
which cannot know).
"""

from __future__ import annotations

import re
from pathlib import Path

#: The distribution name on PyPI (``pip install ukb-mimir``).
DISTRIBUTION = "ukb-mimir"

#: What each extra brings (shown in the hints).
EXTRAS: dict[str, str] = {
    "report": "matplotlib and jinja2",
    "ray": "Ray Data",
    "codecs": "pylibjpeg and its libjpeg, openjpeg and rle plugins",
    "reference": "OpenCV and scikit-image, for the tests",
    "browser": "selenium, for the report's browser test",
    "volumes": "nibabel",
    "parquet": "pyarrow",
    "register": "SimpleITK",
    "test": "pytest, hypothesis",
}


def release_command(extra: str) -> str:
    """``pip install 'ukb-mimir[EXTRA]'``: the command for an installed release."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def checkout_command(extra: str, checkout: str = ".") -> str:
    """``pip install -e '.[EXTRA]'``: the command in a git checkout (``checkout``: its folder)."""
    return f"pip install -e '{checkout}[{extra}]'"


def source_checkout() -> Path | None:
    """The git checkout this copy of mimir runs from (``pip install -e .`` or PYTHONPATH), or None for a release.

    A checkout holds the package folder beside the ``pyproject.toml`` that
    names the ``ukb-mimir`` distribution; an installed release lives in
    ``site-packages``, which holds no such file.
    """
    root = Path(__file__).resolve().parents[2]
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return root if re.search(rf'^name\s*=\s*"{re.escape(DISTRIBUTION)}"', text, re.MULTILINE) else None


def extra_help(extra: str) -> str:
    """Both install commands of ``extra``, for help texts and docs: release first, then checkout."""
    return f"{release_command(extra)} (in a checkout: {checkout_command(extra)})"


def extra_hint(extra: str) -> str:
    """A one-line hint saying how to install ``extra`` for this copy of mimir.

    From a checkout: ``pip install -e '<checkout>[EXTRA]'`` (its absolute
    folder, so the command works from anywhere); a release: the PyPI command.
    """
    what = EXTRAS.get(extra)
    brings = f" ({what})" if what else ""
    checkout = source_checkout()
    command = release_command(extra) if checkout is None else checkout_command(extra, str(checkout))
    return f"Install the {extra} extra{brings}: {command}."
