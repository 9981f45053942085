"""Device and precision choice for inference.

``--device auto|cpu|cuda|cuda:N|mps`` (``auto``: the first CUDA GPU, else
Apple MPS, else the CPU) and the short form ``--gpu N`` (= ``cuda:N``).

``--precision auto`` (the default) and ``fp32`` are exact float32 on every
device: on CUDA, :func:`resolve_device` also turns TF32 off for convolutions
and matrix products (PyTorch allows TF32 in cuDNN convolutions by default,
which moves results by about 1e-3 relative), so a GPU and a CPU give the same
numbers to well within 1e-3 of the predicted sd. ``bf16`` is an explicit
opt-in: the network's backbone under bf16 autocast (with channels_last on
CUDA), the final layer in float32; its deviation from fp32 is measured in
docs/precision.md. On CUDA it needs a GPU with native bf16 (compute
capability 8.0 or newer, asked of the chosen GPU, not of GPU 0).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mimir.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
#: The oldest CUDA compute capability with native bf16 (Ampere); older GPUs emulate it slowly.
BF16_MIN_CAPABILITY = (8, 0)
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def exact_fp32() -> None:
    """Make float32 on CUDA exact float32: no TF32 in convolutions (cuDNN) or matrix products.

    Process-wide and idempotent; harmless on a build without CUDA. Uses
    PyTorch's ``fp32_precision`` settings only (mixing them with the legacy
    ``allow_tf32`` flags makes PyTorch raise).
    """
    import torch

    torch.backends.cudnn.fp32_precision = "ieee"  # convolutions and RNNs
    torch.backends.cuda.matmul.fp32_precision = "ieee"


def tf32_off() -> bool:
    """True when neither cuDNN convolutions nor CUDA matrix products may use TF32 (for tests and run.json)."""
    import torch

    return torch.backends.cudnn.conv.fp32_precision == "ieee" and torch.backends.cuda.matmul.fp32_precision == "ieee"


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
            exact_fp32()
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
        exact_fp32()
        return torch.device(f"cuda:{index}")
    raise UsageError(f"unknown device {device!r}", hint="Use auto, cpu, cuda, cuda:N or mps.")


def precision_name(precision: str) -> str:
    """``fp32`` or ``bf16`` for ``--precision`` (``auto`` is ``fp32`` on every device), without torch."""
    p = (precision or "auto").strip().lower()
    if p not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}", hint="Use auto, fp32 or bf16.")
    return "fp32" if p == "auto" else p


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``precision`` on ``device``; bf16 only where it runs natively.

    ``auto`` is exact fp32 everywhere. ``bf16`` on CUDA asks the chosen GPU's
    compute capability (not ``torch.cuda.is_bf16_supported()``, which asks
    GPU 0 and accepts emulated bf16) and refuses GPUs older than
    :data:`BF16_MIN_CAPABILITY`.
    """
    import torch

    p = precision_name(precision)
    if p == "bf16" and device.type == "mps":
        raise UsageError("bf16 autocast is not supported on MPS here", hint="Use --precision fp32.")
    if p == "bf16" and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < BF16_MIN_CAPABILITY:
            raise UsageError(
                f"--precision bf16: {device} has compute capability {major}.{minor}, which emulates bf16 slowly "
                f"(native from {BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]})",
                hint="Use --precision fp32 (the default).",
            )
    return p


def device_type(device: str = "auto", gpu: int | None = None) -> str:
    """``cpu``, ``cuda`` or ``mps``: the type of device ``--device``/``--gpu`` resolves to.

    Imports torch only for ``auto`` (which depends on what this machine has).
    """
    text = (device or "auto").strip().lower()
    if gpu is not None or text.isdigit() or _CUDA.match(text):
        return "cuda"
    if text in ("cpu", "mps"):
        return text
    return resolve_device(text).type


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def describe(device: torch.device, precision: str) -> str:
    """A short human description, e.g. ``cuda:0 (NVIDIA H100, fp32, TF32 off)``."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        extra = ", channels_last" if precision != "fp32" else (", TF32 off" if tf32_off() else ", TF32 on")
        return f"{device} ({name}, {precision}{extra})"
    return f"{device} ({precision}, {torch.get_num_threads()} threads)" if device.type == "cpu" else f"{device} ({precision})"
