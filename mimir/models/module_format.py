"""The inference module format: what module.json holds, and how it is read, validated and verified.

A module is a folder::

    <name>/
        module.json              what the module is (see docs/modules.md)
        member_0.safetensors     one file per ensemble member
        member_1.safetensors
        ...

``module.json`` records the name, version, description, intended use, the
architecture (ResNet50 and its width), the input pipeline version, the
targets (name, UK Biobank field, unit, divisor, standardisation mean/sd,
calibration factor, published metrics where known) and the members (file
name and sha256). A member whose file does not hash to the recorded sha256 is
refused when the module is loaded (:mod:`mimir.models.module_store`).

Reading ``module.json`` (for ``list-targets``) needs neither torch nor safetensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimir.errors import MimirError, ModuleError
from mimir.models.ood import OodReference, OodSpec, load_reference
from mimir.utils.hashing import file_sha256

#: ``format`` value of every module.json
FORMAT = "mimir-module"
#: Version of the module.json schema this code writes and reads.
FORMAT_VERSION = 1
MODULE_JSON = "module.json"
ARCHITECTURES = ("resnet50",)
#: Pipeline version assumed when none is given (the published MIMIR modules).
DEFAULT_PIPELINE = "mimir-v1"

#: Files of a module in the original MIMIR layout.
ORIGINAL_FILES = ("snapshot.pth.tar", "metadata.txt", "standardization_parameters.txt", "calibration_factors.txt")

#: Schema bounds of module.json (see docs/limits.md). A module that breaks one is refused at
#: import and skipped (with one warning line) when found installed.
MAX_WIDTH = 256  # ResNet50 stem width; the published modules use 64
MAX_TARGETS = 256
MAX_MEMBERS = 64
MAX_ABS_MEAN = 1e9
SD_RANGE = (1e-9, 1e9)
CALIBRATION_RANGE = (1e-6, 1e3)
ABS_DIVISOR_RANGE = (1e-9, 1e9)
MAX_TEXT = {"version": 100, "description": 10_000, "intended_use": 2_000, "target name": 100, "unit": 40}
#: Largest safetensors header read when checking a member's architecture, bytes.
MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024
#: ``intended_use`` values: a module for research use, or one made for the synthetic demonstration only.
INTENDED_RESEARCH = "research"
INTENDED_SYNTHETIC_DEMO = "synthetic-demo"
INTENDED_USES = (INTENDED_RESEARCH, INTENDED_SYNTHETIC_DEMO)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def valid_name(name: str) -> bool:
    """Module names: letters, digits, ``._-``, starting with a letter or digit."""
    return bool(_NAME.match(name or ""))


# --------------------------------------------------------------------------- dataclasses


@dataclass
class TargetSpec:
    """One target of a module, and how to turn raw output into its unit."""

    name: str
    unit: str
    field: int | None = None
    divisor: float = 1.0
    mean: float = 0.0
    sd: float = 1.0
    calibration: float = 1.0
    #: published validation figures, e.g. {"cv": {"n":..,"icc":..,"r2":..,"mae":..,"mape_percent":..}}
    metrics: dict[str, Any] | None = None
    #: values the target can take, in display units: (low, high), either None for unbounded;
    #: intervals are cut to it (the mean is not). None: unbounded.
    support: tuple[float | None, float | None] | None = None
    #: a derived module's refit (``mimir calibrate``), applied to the ensemble's mean and variance after mixing:
    #: {"variance_scale": s, "mean_intercept": a, "mean_slope": b}; mean' = a + b * mean, variance' = s * variance.
    #: None: none (the module's own calibration only).
    recalibration: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "field": self.field,
            "unit": self.unit,
            "divisor": self.divisor,
            "standardization": {"mean": self.mean, "sd": self.sd},
            "calibration_factor": self.calibration,
            "metrics": self.metrics,
        }
        if self.support is not None:  # absent, not null: module.json digests of older modules stay as they were
            out["support"] = list(self.support)
        if self.recalibration is not None:  # likewise absent unless a derived module refitted it
            out["recalibration"] = dict(self.recalibration)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TargetSpec:
        std = d.get("standardization") or {}
        return cls(
            name=str(d["name"]),
            unit=str(d.get("unit", "")),
            field=None if d.get("field") in (None, "") else int(d["field"]),
            divisor=float(d.get("divisor", 1.0)),
            mean=float(std["mean"]),
            sd=float(std["sd"]),
            calibration=float(d.get("calibration_factor", 1.0)),
            metrics=d.get("metrics"),
            support=parse_support(d.get("support")),
            recalibration=parse_recalibration(d.get("recalibration")),
        )


def parse_support(value: Any) -> tuple[float | None, float | None] | None:
    """``[low, high]`` (either may be null) -> (low, high); None stays None.

    Raises ValueError for anything else: not a pair, a non-finite bound, low >= high.
    """
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"support must be [low, high], got {value!r}")
    bounds: list[float | None] = []
    for v in value:
        if v is None:
            bounds.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"support bounds must be finite numbers or null, got {v!r}")
        bounds.append(float(v))
    low, high = bounds
    if low is not None and high is not None and not low < high:
        raise ValueError(f"support low {low} must be below high {high}")
    return (low, high)


#: Keys of a target's ``recalibration`` and their value when absent.
RECALIBRATION_KEYS = {"variance_scale": 1.0, "mean_intercept": 0.0, "mean_slope": 1.0}


def parse_recalibration(value: Any) -> dict[str, float] | None:
    """``{"variance_scale", "mean_intercept", "mean_slope"}`` (missing keys: identity); None stays None.

    Raises ValueError for anything else: not an object, an unknown key, a
    non-finite number, a scale outside the calibration range, a slope of 0.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError("recalibration must be an object")
    unknown = set(value) - set(RECALIBRATION_KEYS)
    if unknown:
        raise ValueError(f"recalibration has unknown key {sorted(unknown)[0]!r}")
    out = {}
    for key, default in RECALIBRATION_KEYS.items():
        v = value.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"recalibration {key} must be a finite number")
        out[key] = float(v)
    if not CALIBRATION_RANGE[0] <= out["variance_scale"] <= CALIBRATION_RANGE[1]:
        raise ValueError(f"recalibration variance_scale {out['variance_scale']:g} is outside "
                         f"{CALIBRATION_RANGE[0]:g} to {CALIBRATION_RANGE[1]:g}")
    if out["mean_slope"] == 0 or abs(out["mean_intercept"]) > MAX_ABS_MEAN or abs(out["mean_slope"]) > 1e6:
        raise ValueError("recalibration mean_slope must be non-zero and the intercept and slope of sane size")
    return out


@dataclass
class MemberSpec:
    """One ensemble member: a safetensors file and its sha256."""

    file: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256}


@dataclass
class ModuleSpec:
    """What ``module.json`` says, plus where the module lives."""

    name: str
    version: str
    targets: list[TargetSpec]
    members: list[MemberSpec] = field(default_factory=list)
    description: str = ""
    #: "research" or "synthetic-demo" (:data:`INTENDED_USES`); a synthetic-demo module is never applied by default
    intended_use: str = INTENDED_RESEARCH
    #: free text for humans: what the module is for and where it is valid
    intended_use_note: str = ""
    architecture: str = "resnet50"
    width: int = 64
    input_pipeline: str = DEFAULT_PIPELINE
    #: provenance: how the module was made or converted (free-form, JSON-serialisable)
    source: dict[str, Any] = field(default_factory=dict)
    #: the out-of-distribution reference (see mimir.models.ood); None: the module has none
    ood: OodSpec | None = None
    #: folder holding module.json (not serialised)
    path: Path | None = None
    #: shipped inside the package (not serialised)
    builtin: bool = False

    @property
    def synthetic(self) -> bool:
        """True for a module made for the synthetic demonstration (its numbers mean nothing for real images)."""
        return self.intended_use == INTENDED_SYNTHETIC_DEMO

    @property
    def num_targets(self) -> int:
        return len(self.targets)

    @property
    def num_outputs(self) -> int:
        return 2 * len(self.targets)

    def member_path(self, member: MemberSpec) -> Path:
        if self.path is None:
            raise ModuleError("module has no folder", path=self.name)
        return self.path / member.file

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "intended_use": self.intended_use,
            "intended_use_note": self.intended_use_note,
            "architecture": {"name": self.architecture, "width": self.width, "output": "mean_logvar"},
            "input": {"pipeline": self.input_pipeline, "shape": [3, 256, 256], "dtype": "uint8", "scaling": "none"},
            "targets": [t.to_json() for t in self.targets],
            "members": [m.to_json() for m in self.members],
            "source": self.source,
            **({"ood_reference": self.ood.to_json()} if self.ood is not None else {}),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"

    def identity(self) -> dict[str, Any]:
        """Provenance record: name, version, member sha256s and the digest of module.json."""
        return {
            "name": self.name,
            "version": self.version,
            "members": [m.sha256 for m in self.members],
            "digest": self.digest,
        }

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON of this spec (changes with any field or member)."""
        canon = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canon.encode()).hexdigest()

    def load_reference(self, *, verify: bool = True) -> OodReference | None:
        """The module's OOD reference (sha256 checked), or None when it has none."""
        if self.ood is None:
            return None
        if self.path is None:
            raise ModuleError("module has no folder", path=self.name)
        from mimir.models.ood import feature_dim

        size = len(self.members) * feature_dim(self.width)
        return load_reference(self.path, self.ood, module=self.name, size=size, verify=verify)

    def arrays(self) -> tuple[list[float], list[float], list[float], list[float]]:
        """(mean, sd, calibration, divisor) per target, for :func:`mimir.inference.predictions.convert_output`."""
        t = self.targets
        return [x.mean for x in t], [x.sd for x in t], [x.calibration for x in t], [x.divisor for x in t]

    def recalibration_arrays(self) -> tuple[list[float], list[float], list[float]] | None:
        """(intercept, slope, variance scale) per target of a recalibrated (derived) module; None when no target has one."""
        if all(x.recalibration is None for x in self.targets):
            return None
        rec = [x.recalibration or RECALIBRATION_KEYS for x in self.targets]
        return ([r["mean_intercept"] for r in rec], [r["mean_slope"] for r in rec], [r["variance_scale"] for r in rec])

    @property
    def means_recalibrated(self) -> bool:
        """True when a target's means are linearly recalibrated (``mimir calibrate --recalibrate-means``)."""
        return any(x.recalibration is not None and (x.recalibration["mean_intercept"] != 0.0
                                                    or x.recalibration["mean_slope"] != 1.0) for x in self.targets)


# --------------------------------------------------------------------------- validation


def _check(cond: bool, message: str, where: str) -> None:
    if not cond:
        raise ModuleError(message, path=where, hint="The module is malformed; reinstall it with mimir fetch-weights.")


def _text_field(value: Any, label: str, where: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    _check(isinstance(value, str), f"{label} must be a string", where)
    limit = MAX_TEXT.get(label, 1000)
    _check(len(value) <= limit, f"{label} is {len(value)} characters long (at most {limit})", where)
    return value


def _number(value: Any, label: str, where: str) -> float:
    _check(
        isinstance(value, (int, float)) and not isinstance(value, bool),
        f"{label} must be a number, not {_quote(value)}",
        where,
    )
    return float(value)


def _quote(value: Any) -> str:
    from mimir.utils.limits import quote

    return quote(value, 60)


def spec_from_json(data: Any, *, path: Path | None = None, where: str = MODULE_JSON) -> ModuleSpec:
    """Validate a parsed module.json against the schema and build the :class:`ModuleSpec`.

    Beyond the fields' presence and types this bounds everything that costs
    memory or produces numbers: width (1..:data:`MAX_WIDTH`), target count
    (1..:data:`MAX_TARGETS`), member count (1..:data:`MAX_MEMBERS`), finite and
    sane standardisation, calibration and divisor, text lengths, and the
    optional per-target ``support`` ([low, high], either may be null).
    Unknown keys are ignored.
    """
    _check(isinstance(data, dict), "module.json is not a JSON object", where)
    _check(data.get("format") == FORMAT, f"not a mimir module (format is {_quote(data.get('format'))})", where)
    fv = data.get("format_version")
    _check(isinstance(fv, int) and not isinstance(fv, bool), "format_version missing", where)
    if fv > FORMAT_VERSION:
        raise ModuleError(
            f"module format version {fv} is newer than this mimir understands ({FORMAT_VERSION})",
            path=where,
            hint="Upgrade mimir.",
        )
    name = data.get("name")
    _check(isinstance(name, str) and valid_name(name), f"invalid module name {_quote(name)}", where)
    version = _text_field(data.get("version"), "version", where, required=True)
    _check(version != "", "version missing", where)
    arch = data.get("architecture") or {}
    _check(isinstance(arch, dict), "architecture must be an object", where)
    _check(arch.get("name") in ARCHITECTURES, f"unknown architecture {_quote(arch.get('name'))}", where)
    width = arch.get("width", 64)
    _check(
        isinstance(width, int) and not isinstance(width, bool) and 1 <= width <= MAX_WIDTH,
        f"architecture width is {_quote(width)}; expected a whole number from 1 to {MAX_WIDTH}",
        where,
    )
    inp = data.get("input") or {}
    _check(isinstance(inp, dict), "input must be an object", where)
    targets_raw = data.get("targets")
    _check(isinstance(targets_raw, list) and len(targets_raw) > 0, "no targets", where)
    _check(
        len(targets_raw) <= MAX_TARGETS,
        f"has {len(targets_raw)} targets; at most {MAX_TARGETS} are accepted",
        where,
    )
    targets = []
    for i, t in enumerate(targets_raw):
        _check(isinstance(t, dict), f"target {i} is not an object", where)
        std = t.get("standardization")
        _check(isinstance(std, dict), f"target {i}: standardization must be an object with mean and sd", where)
        label = f"target {i}"
        try:
            spec = TargetSpec(
                name=_text_field(t.get("name"), "target name", where, required=True),
                unit=_text_field(t.get("unit"), "unit", where),
                field=_field_number(t.get("field"), label, where),
                divisor=_number(t.get("divisor", 1.0), f"{label}: divisor", where),
                mean=_number(std.get("mean"), f"{label}: standardization mean", where),
                sd=_number(std.get("sd"), f"{label}: standardization sd", where),
                calibration=_number(t.get("calibration_factor", 1.0), f"{label}: calibration_factor", where),
                metrics=t.get("metrics") if isinstance(t.get("metrics"), dict) else None,
            )
        except OverflowError:
            raise ModuleError(f"{label} holds a number too large for a float", path=where) from None
        _validate_support(t.get("support"), spec.name, where)
        try:
            spec.support = parse_support(t.get("support"))
            spec.recalibration = parse_recalibration(t.get("recalibration"))
        except ValueError as exc:
            raise ModuleError(f"target {spec.name}: {_quote(str(exc))}", path=where) from None
        _validate_target(spec, where)
        targets.append(spec)
    names = [t.name for t in targets]
    _check(len(set(names)) == len(names), "duplicate target names", where)
    members_raw = data.get("members")
    _check(isinstance(members_raw, list) and len(members_raw) > 0, "no members", where)
    _check(len(members_raw) <= MAX_MEMBERS, f"has {len(members_raw)} members; at most {MAX_MEMBERS}", where)
    members = []
    for m in members_raw:
        _check(isinstance(m, dict), "member entry is not an object", where)
        f, h = m.get("file"), m.get("sha256")
        _check(
            isinstance(f, str) and len(f) <= 200 and f.endswith(".safetensors") and "/" not in f and "\\" not in f
            and not f.startswith("."),
            f"invalid member file {_quote(f)}",
            where,
        )
        _check(isinstance(h, str) and bool(_SHA256.match(h)), f"invalid sha256 for {f}", where)
        members.append(MemberSpec(file=f, sha256=h))
    _check(len({m.file for m in members}) == len(members), "duplicate member files", where)
    source = data.get("source") or {}
    _check(isinstance(source, dict), "source must be an object", where)
    pipeline = inp.get("pipeline", DEFAULT_PIPELINE)
    _check(isinstance(pipeline, str) and len(pipeline) <= 100, "input pipeline must be a short string", where)
    _text_field(data.get("intended_use"), "intended_use", where)
    _text_field(data.get("intended_use_note"), "intended_use", where)
    ood = None
    if data.get("ood_reference") is not None:
        ood = OodSpec.from_json(data["ood_reference"], where)
        _check(ood.file not in {m.file for m in members}, "ood_reference file is a member file", where)
    use, note = _intended_use(data.get("intended_use"), data.get("intended_use_note"), where)
    return ModuleSpec(
        name=name,
        version=version,
        targets=targets,
        members=members,
        description=_text_field(data.get("description"), "description", where),
        intended_use=use,
        intended_use_note=note,
        architecture=arch["name"],
        width=width,
        input_pipeline=pipeline,
        source=dict(source),
        ood=ood,
        path=path,
    )


def _field_number(value: Any, label: str, where: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ModuleError(f"{label}: field is {_quote(value)}, not a UK Biobank field number", path=where) from None
    _check(0 <= number < 10**7, f"{label}: field {number} is not a UK Biobank field number", where)
    return number


def _validate_support(support: Any, target: str, where: str) -> None:
    """``support``: [low, high] of the training targets, either may be null (issue 11b's field)."""
    if support is None:
        return
    _check(
        isinstance(support, list) and len(support) == 2,
        f"target {target}: support must be [low, high]",
        where,
    )
    values = []
    for v in support:
        if v is None:
            continue
        x = _number(v, f"target {target}: support", where)
        _check(math.isfinite(x) and abs(x) <= MAX_ABS_MEAN * 1e3, f"target {target}: support is not finite", where)
        values.append(x)
    if all(v is not None for v in support):
        _check(values[0] <= values[1], f"target {target}: support low is above high", where)


def _intended_use(value: Any, note: Any, where: str) -> tuple[str, str]:
    """(intended_use, note) from module.json.

    ``intended_use`` is ``"research"`` or ``"synthetic-demo"``; absent means
    research (the imported MIMIR modules). module.json files written before
    mimir 0.3 held free text there: that text becomes the note and the use is
    research, unless the text says the module is for a synthetic
    demonstration only.
    """
    _check(note is None or isinstance(note, str), "intended_use_note must be text", where)
    note = note or ""
    if value is None or value == "":
        return INTENDED_RESEARCH, note
    _check(isinstance(value, str), f"intended_use must be one of {', '.join(INTENDED_USES)}", where)
    if value in INTENDED_USES:
        return value, note
    legacy = value.lower()
    use = INTENDED_SYNTHETIC_DEMO if "synthetic demonstration only" in legacy else INTENDED_RESEARCH
    return use, note or value


def _validate_target(t: TargetSpec, where: str) -> None:
    _check(bool(t.name) and "," not in t.name, f"invalid target name {_quote(t.name)}", where)
    for label, v in (("mean", t.mean), ("sd", t.sd), ("calibration factor", t.calibration), ("divisor", t.divisor)):
        _check(math.isfinite(v), f"target {t.name}: {label} is not finite", where)
    _check(t.sd > 0, f"target {t.name}: standardisation sd must be > 0", where)
    _check(t.calibration > 0, f"target {t.name}: calibration factor must be > 0", where)
    _check(t.divisor != 0, f"target {t.name}: divisor must not be 0", where)
    _check(abs(t.mean) <= MAX_ABS_MEAN, f"target {t.name}: standardisation mean {t.mean:g} is beyond +-{MAX_ABS_MEAN:g}", where)
    _check(
        SD_RANGE[0] <= t.sd <= SD_RANGE[1],
        f"target {t.name}: standardisation sd {t.sd:g} is outside {SD_RANGE[0]:g} to {SD_RANGE[1]:g}",
        where,
    )
    _check(
        CALIBRATION_RANGE[0] <= t.calibration <= CALIBRATION_RANGE[1],
        f"target {t.name}: calibration factor {t.calibration:g} is outside "
        f"{CALIBRATION_RANGE[0]:g} to {CALIBRATION_RANGE[1]:g}",
        where,
    )
    _check(
        ABS_DIVISOR_RANGE[0] <= abs(t.divisor) <= ABS_DIVISOR_RANGE[1],
        f"target {t.name}: divisor {t.divisor:g} is outside +-{ABS_DIVISOR_RANGE[0]:g} to {ABS_DIVISOR_RANGE[1]:g}",
        where,
    )

    try:
        parse_support(t.support)
    except ValueError as exc:
        raise ModuleError(f"target {t.name}: {exc}", path=where) from None


def load_module_json(path: Path, where: str) -> Any:
    """Parse a module.json: a regular file of at most ``MIMIR_MAX_JSON_BYTES``, nesting depth guarded."""
    from mimir.utils.limits import MAX_JSON_BYTES, check_regular_file, loads_guarded

    try:
        st = check_regular_file(path, "module.json")
    except MimirError as exc:
        if "not found" in exc.message:
            raise FileNotFoundError(str(path)) from None
        raise ModuleError(exc.message, path=where) from None
    cap = MAX_JSON_BYTES.value()
    if st.st_size > cap:
        raise ModuleError(
            f"module.json is {st.st_size} bytes, more than {cap} (limit {MAX_JSON_BYTES.env})", path=where
        )
    try:
        text = path.read_text(encoding="utf-8")
        return loads_guarded(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        from mimir.utils.limits import quote

        raise ModuleError(f"unreadable module.json ({quote(str(exc), 120)})", path=where) from None


def read_module(folder: str | os.PathLike[str]) -> ModuleSpec:
    """Read and validate ``folder/module.json`` (no hashing, no torch)."""
    folder = Path(folder)
    mj = folder / MODULE_JSON
    where = f"{folder.name}/{MODULE_JSON}"
    try:
        data = load_module_json(mj, where)
    except FileNotFoundError:
        raise ModuleError("no module.json", path=folder.name, hint="Not a mimir module folder.") from None
    return spec_from_json(data, path=folder, where=where)


def member_architecture(path: Path) -> tuple[int, int]:
    """(width, num_outputs) of a ResNet50 member, from its safetensors header only (no tensors loaded).

    Raises :class:`ModuleError` when the file is not safetensors or not a ResNet50.
    """
    from mimir.utils.limits import loads_guarded

    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= MAX_SAFETENSORS_HEADER:
                raise ValueError("no safetensors header")
            header = loads_guarded(fh.read(n).decode("utf-8"))
        conv = header["conv1.weight"]["shape"]
        fc = header["fc.weight"]["shape"]
        width, (outputs, in_features) = int(conv[0]), (int(fc[0]), int(fc[1]))
    except FileNotFoundError:
        raise ModuleError(f"member file {path.name} is missing", path=path.parent.name) from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        raise ModuleError(f"member {path.name} is not a ResNet50 safetensors file", path=path.parent.name) from None
    if in_features != 8 * width * 4:  # resnet.feature_dim, without importing torch
        raise ModuleError(
            f"member {path.name} is not a ResNet50: fc takes {in_features} features for stem width {width}",
            path=path.parent.name,
        )
    return width, outputs


def check_members(spec: ModuleSpec) -> None:
    """Every member's architecture (from its header) matches module.json: width and 2 x targets outputs."""
    for m in spec.members:
        width, outputs = member_architecture(spec.member_path(m))
        if width != spec.width or outputs != spec.num_outputs:
            raise ModuleError(
                f"member {m.file} is a width-{width} ResNet50 with {outputs} outputs, "
                f"module.json says width {spec.width} with {spec.num_outputs} outputs ({spec.num_targets} targets)",
                path=spec.name,
                hint="The module cannot run; it was not installed.",
            )


def verify_module(spec: ModuleSpec) -> None:
    """Check that every member file exists and hashes to its recorded sha256."""
    for m in spec.members:
        p = spec.member_path(m)
        if not p.is_file():
            raise ModuleError(
                f"member file {m.file} is missing", path=spec.name, hint=_reinstall_hint(spec)
            )
        got = file_sha256(p)
        if got != m.sha256:
            raise ModuleError(
                f"member {m.file} fails verification: its sha256 starts {got[:16]}, module.json expects {m.sha256[:16]}",
                path=spec.name,
                hint=_reinstall_hint(spec),
            )
    if spec.ood is not None:
        spec.load_reference(verify=True)


def _reinstall_hint(spec: ModuleSpec) -> str:
    if spec.builtin:
        return "The mimir installation is damaged; reinstall mimir."
    # Told without the manifest (the registry, which reads it, imports this module): a module with a
    # download address reinstalls by name; a published one (browser download) or one of your own from its file.
    return (f"The file is damaged or was changed; reinstall it: mimir fetch-weights {spec.name} --force, "
            f"or, for a module downloaded in a browser or of your own, mimir fetch-weights {spec.name} "
            "--from FILE.zip --force")


def is_module_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a module in our format."""
    return (Path(folder) / MODULE_JSON).is_file()
