"""Device and precision choice for inference.

``--device auto|cpu|cuda|cuda:N|mps`` (``auto``: the first CUDA GPU, else
Apple MPS, else the CPU) and the short form ``--gpu N`` (= ``cuda:N``).
``--precision auto`` means bf16 autocast with channels_last memory layout on
CUDA GPUs that support bf16, and fp32 everywhere else; ``fp32`` turns both off;
``bf16`` asks for bf16 autocast explicitly (CUDA or CPU).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mimir.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(device: str = "auto", gpu: int | None = None) -> torch.device:
    """The torch device for ``--device`` / ``--gpu``; a clear :class:`UsageError` if it is not there."""
    import torch

    text = (device or "auto").strip().lower()
    if gpu is not None:
        if gpu < 0:
            raise UsageError(f"--gpu must be a GPU index >= 0, got {gpu}")
        if text not in ("auto", "cuda", f"cuda:{gpu}"):
            raise UsageError(f"--gpu {gpu} contradicts --device {device}; give one of them")
        text = f"cuda:{gpu}"
    if text.isdigit():
        text = f"cuda:{text}"
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise UsageError("--device mps: Apple MPS is not available here", hint="Use --device cpu.")
        return torch.device("mps")
    m = _CUDA.match(text)
    if m:
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"--device {text}: {build}", hint="Use --device cpu (or auto).")
        index = int(m.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise UsageError(f"--device {text}: only {count} CUDA GPU(s) visible (0..{count - 1})")
        return torch.device(f"cuda:{index}")
    raise UsageError(f"unknown device {device!r}", hint="Use auto, cpu, cuda, cuda:N or mps.")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``precision`` on ``device``."""
    import torch

    p = (precision or "auto").strip().lower()
    if p not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint="Use auto, fp32 or bf16.")
    if p == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if p == "bf16" and device.type == "mps":
        raise UsageError("bf16 autocast is not supported on MPS here", hint="Use --precision fp32.")
    return p


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def describe(device: torch.device, precision: str) -> str:
    """A short human description, e.g. ``cuda:0 (NVIDIA H100, bf16, channels_last)``."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        extra = ", channels_last" if precision != "fp32" else ""
        return f"{device} ({name}, {precision}{extra})"
    return f"{device} ({precision}, {torch.get_num_threads()} threads)" if device.type == "cpu" else f"{device} ({precision})"
