"""What a target's unit says about the values it can take: the default support of a trained target.

A module's target may declare a support ``[low, high]`` (either may be
``None``); intervals are cut to it, the mean is never changed
(:mod:`mimir.models.module_format`). ``mimir train`` records one derived from
the unit when the target is not in the published catalogue and no
``--support`` is given: a percentage lies in [0, 100]; a volume, a mass or a
length is never negative. Any other unit (years, bpm, ratios, unitless)
gets no default, since a difference or a score in it may be negative.
"""

from __future__ import annotations

#: Units whose values are percentages, as written in module.json (case-insensitive).
PERCENT_UNITS = frozenset({"%", "percent", "pct"})
#: Units of volumes, masses and lengths (case-insensitive).
NON_NEGATIVE_UNITS = frozenset({
    # volumes
    "l", "dl", "cl", "ml", "ul", "µl", "cm3", "cm^3", "cm³", "mm3", "mm^3", "mm³", "m3", "cc",
    # masses
    "kg", "g", "mg", "lb",
    # lengths
    "m", "cm", "mm", "km", "in",
})

Support = tuple[float | None, float | None]


def support_of_unit(unit: str) -> Support | None:
    """The default support of a target measured in ``unit``: (0, 100) for percent, (0, None) for
    volumes, masses and lengths, None (no bounds) for anything else."""
    key = unit.strip().lower()
    if key in PERCENT_UNITS:
        return (0.0, 100.0)
    if key in NON_NEGATIVE_UNITS:
        return (0.0, None)
    return None


def parse_support_text(text: str, where: str) -> Support | None:
    """``"LOW:HIGH"`` (either side may be empty: unbounded) or ``"none"`` -> a support or None.

    Raises :class:`ValueError` naming ``where`` for anything else.
    """
    text = text.strip()
    if text.lower() == "none":
        return None
    low_text, sep, high_text = text.partition(":")
    if not sep:
        raise ValueError(f"{where}: {text!r} is not LOW:HIGH (or none)")
    bounds: list[float | None] = []
    for part in (low_text.strip(), high_text.strip()):
        if not part:
            bounds.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{where}: {part!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where}: {part!r} is not a finite number")
        bounds.append(value)
    low, high = bounds
    if low is None and high is None:
        raise ValueError(f"{where}: give at least one bound (or none)")
    if low is not None and high is not None and low >= high:
        raise ValueError(f"{where}: low {low:g} must be below high {high:g}")
    return (low, high)
