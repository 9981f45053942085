"""Follow-up visits: the same body, changed on purpose, acquired again.

A follow-up visit (UK Biobank's repeat imaging visit, instance 3) is the body of
the same seed with one chosen change applied to its drawn parameters
(:class:`~mimir.synth.body.BodyParams`), rendered in a new acquisition: new
positioning (station offsets, chin margin), new coil shading and noise, a study
date 2-3 years after the first visit. The truth of the follow-up holds its own
values, the first visit's values and their difference (the actual change, which
for a kept-within-range parameter can be smaller than asked).

Changes (:data:`CHANGES`; ``size`` is a relative or absolute step, see
:data:`CHANGE_HELP`, with the defaults of :data:`DEFAULT_SIZES`):

- ``none``: the same body (only the acquisition differs); the true change is 0.
- ``weight``: every fat depot grows by a fraction ``size``: subcutaneous
  (abdominal, limbs, breast) thicknesses x (1 + size), visceral load x (1 + size).
- ``liver_fat``: liver fat fraction + ``size`` percentage points (kept within 0.1-50 %).
- ``vat``: visceral load (0-1) + ``size`` (kept within 0-0.98).
- ``thigh_muscle``: muscle cross-section scale x (1 + ``size``) (every muscle,
  so thigh muscle volume changes by about that fraction).

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import dataclasses

from mimir.errors import UsageError
from mimir.synth.body import BodyParams

__all__ = ["CHANGES", "CHANGE_HELP", "DEFAULT_SIZES", "FOLLOW_UP_INSTANCE", "ACQUISITION_STREAM", "changed_params",
           "acquisition_seed"]

#: UK Biobank's instance of the repeat imaging visit.
FOLLOW_UP_INSTANCE = 3

CHANGE_HELP: dict[str, str] = {
    "none": "the same body, acquired again (true change 0)",
    "weight": "all fat depots x (1 + SIZE) (default 0.10: about +3 kg)",
    "liver_fat": "liver fat fraction + SIZE percentage points (default 3)",
    "vat": "visceral fat load (0-1) + SIZE (default 0.08: about +0.65 L VAT)",
    "thigh_muscle": "muscle cross-section x (1 + SIZE) (default -0.06: about -0.7 L thigh muscle)",
}
#: Names accepted by ``change=``.
CHANGES: tuple[str, ...] = tuple(CHANGE_HELP)
#: The size used when none is given.
DEFAULT_SIZES: dict[str, float] = {"none": 0.0, "weight": 0.10, "liver_fat": 3.0, "vat": 0.08, "thigh_muscle": -0.06}

#: Offset that separates the random streams of a follow-up acquisition from those of any first visit
#: (first-visit seeds are below 9,000,000; follow-up acquisition seeds are ``seed + instance * 2**40``).
ACQUISITION_STREAM = 2**40


def acquisition_seed(seed: int, instance: int) -> int:
    """The integer that seeds the acquisition (positioning, shading, noise, date, UIDs) of ``instance``.

    Instance 2 (the first imaging visit) keeps ``seed`` itself, so first visits are
    byte-identical to those written before follow-ups existed.
    """
    return int(seed) if instance == 2 else int(seed) + int(instance) * ACQUISITION_STREAM


def changed_params(params: BodyParams, change: str, size: float | None = None) -> tuple[BodyParams, dict[str, object]]:
    """``params`` with ``change`` of ``size`` applied, and a record of what changed.

    Returns the new parameters (a copy; ``params`` is not modified) and
    ``{"change", "size", "parameters": {name: [before, after]}}``. Raises
    :class:`~mimir.errors.UsageError` for an unknown change or a size that would
    leave the parameters' valid range.
    """
    if change not in CHANGES:
        raise UsageError(f"unknown follow-up change {change!r}", hint=f"Choose one of: {', '.join(CHANGES)}.")
    s = DEFAULT_SIZES[change] if size is None else float(size)
    p = params
    new: dict[str, float] = {}
    if change == "none":
        if s != 0.0:
            raise UsageError("follow-up change 'none' takes no size", hint="Leave --change-size out.")
    elif change == "weight":
        if not -0.5 <= s <= 1.0:
            raise UsageError(f"weight change size {s} out of range", hint="Use a fraction from -0.5 to 1.0.")
        new = {"sc_mm": p.sc_mm * (1 + s), "leg_fat_mm": p.leg_fat_mm * (1 + s), "arm_fat_mm": p.arm_fat_mm * (1 + s),
               "breast_mm": p.breast_mm * (1 + s), "visceral": min(0.98, p.visceral * (1 + s))}
    elif change == "liver_fat":
        if not -30.0 <= s <= 30.0:
            raise UsageError(f"liver fat change size {s} out of range", hint="Use -30 to 30 percentage points.")
        new = {"liver_ff": min(0.5, max(0.001, p.liver_ff + s / 100.0))}  # kept within 0.1-50 %
    elif change == "vat":
        if not -0.5 <= s <= 0.5:
            raise UsageError(f"visceral load change size {s} out of range", hint="Use -0.5 to 0.5.")
        new = {"visceral": min(0.98, max(0.0, p.visceral + s))}  # kept within 0-0.98
    elif change == "thigh_muscle":
        if not -0.5 <= s <= 0.5:
            raise UsageError(f"muscle change size {s} out of range", hint="Use a fraction from -0.5 to 0.5.")
        new = {"muscle": p.muscle * (1 + s)}
    record: dict[str, object] = {
        "change": change, "size": s,
        "parameters": {k: [getattr(p, k), v] for k, v in new.items()},
    }
    return dataclasses.replace(p, **new), record
