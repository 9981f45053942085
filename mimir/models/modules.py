"""Inference modules: one import for the module format, its files and the original MIMIR layout.

The code lives in three modules, one idea each:

- :mod:`~mimir.models.module_format`: what ``module.json`` holds (:class:`ModuleSpec`,
  :class:`TargetSpec`), reading, validating and verifying it;
- :mod:`~mimir.models.module_store`: loading the members' weights and writing modules atomically;
- :mod:`~mimir.models.mimir_original`: the published MIMIR layout and its conversion.

This module re-exports their public names, so ``from mimir.models.modules import X`` keeps working.
"""

from __future__ import annotations

from mimir.models.mimir_original import (
    convert_original,
    find_module_root,
    is_original_format,
    read_original_targets,
)
from mimir.models.module_format import (
    ARCHITECTURES,
    CALIBRATION_RANGE,
    DEFAULT_PIPELINE,
    FORMAT,
    FORMAT_VERSION,
    INTENDED_RESEARCH,
    INTENDED_SYNTHETIC_DEMO,
    INTENDED_USES,
    MAX_MEMBERS,
    MAX_TARGETS,
    MAX_WIDTH,
    MODULE_JSON,
    ORIGINAL_FILES,
    MemberSpec,
    ModuleSpec,
    TargetSpec,
    check_members,
    is_module_folder,
    load_module_json,
    member_architecture,
    parse_support,
    read_module,
    spec_from_json,
    valid_name,
    verify_module,
)
from mimir.models.module_store import load_networks, load_state_dicts, replace_dir, set_reference, write_module

__all__ = [
    "ARCHITECTURES", "CALIBRATION_RANGE", "DEFAULT_PIPELINE", "FORMAT", "FORMAT_VERSION", "INTENDED_RESEARCH",
    "INTENDED_SYNTHETIC_DEMO", "INTENDED_USES", "MAX_MEMBERS", "MAX_TARGETS", "MAX_WIDTH", "MODULE_JSON",
    "ORIGINAL_FILES", "MemberSpec", "ModuleSpec", "TargetSpec", "check_members", "convert_original",
    "find_module_root", "is_module_folder", "is_original_format", "load_module_json", "load_networks",
    "load_state_dicts", "member_architecture", "parse_support", "read_module", "read_original_targets",
    "replace_dir", "set_reference", "spec_from_json", "valid_name", "verify_module", "write_module",
]
