"""Device and precision choice: exact fp32 by default, bf16 asked of the chosen GPU, TF32 off on CUDA.

No GPU is needed: the CUDA queries are mocked (``torch.cuda.*``), so these run
on the CPU and check what mimir asks and decides, not what a GPU computes.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mimir.errors import UsageError  # noqa: E402
from mimir.utils import devices  # noqa: E402


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch):
    """Two visible CUDA GPUs: cuda:0 an H100 (9.0), cuda:1 a V100 (7.0). Records which GPU was asked."""
    asked: list[int] = []
    caps = {0: (9, 0), 1: (7, 0)}

    def capability(device=None):  # noqa: ANN001, ANN202
        index = torch.device(device).index if device is not None else 0
        asked.append(index)
        return caps[index]

    def bf16_supported(*a, **k):  # noqa: ANN002, ANN003, ANN202 - must never be asked: it looks at GPU 0
        raise AssertionError("torch.cuda.is_bf16_supported() asks GPU 0, not the chosen GPU")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "FAKE GPU")
    return asked


@pytest.fixture
def tf32_restored():
    """Put PyTorch's fp32 precision settings back after a test that changed them."""
    conv, matmul = torch.backends.cudnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cudnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul


def test_auto_is_exact_fp32_everywhere(fake_gpus: list[int], tf32_restored: None) -> None:
    for device in ("cpu", "cuda:0", "cuda:1"):
        assert devices.resolve_precision("auto", torch.device(device)) == "fp32"
        assert devices.resolve_precision("fp32", torch.device(device)) == "fp32"
    assert fake_gpus == []  # fp32 asks no GPU anything
    assert devices.precision_name("AUTO") == "fp32" and devices.precision_name("bf16") == "bf16"
    with pytest.raises(UsageError, match="unknown precision"):
        devices.precision_name("fp16")


def test_bf16_asks_the_chosen_gpu_for_its_compute_capability(fake_gpus: list[int]) -> None:
    assert devices.resolve_precision("bf16", torch.device("cuda:0")) == "bf16"
    assert fake_gpus == [0]
    with pytest.raises(UsageError, match=r"cuda:1 has compute capability 7\.0") as err:
        devices.resolve_precision("bf16", torch.device("cuda:1"))
    assert fake_gpus == [0, 1]  # GPU 1 was asked about GPU 1, never GPU 0
    assert "--precision fp32" in (err.value.hint or "")
    assert devices.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # CPU autocast: asked for, allowed


def test_a_cuda_device_turns_tf32_off(fake_gpus: list[int], tf32_restored: None) -> None:
    torch.backends.cudnn.fp32_precision = "tf32"  # PyTorch's default for cuDNN convolutions
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert not devices.tf32_off()
    assert devices.resolve_device("cpu").type == "cpu" and not devices.tf32_off()  # the CPU leaves it alone
    assert devices.resolve_device("auto", None) == torch.device("cuda:0")
    assert devices.tf32_off()
    assert torch.backends.cudnn.conv.fp32_precision == "ieee" and torch.backends.cuda.matmul.fp32_precision == "ieee"
    torch.backends.cudnn.fp32_precision = "tf32"
    assert devices.resolve_device("cuda", 1) == torch.device("cuda:1") and devices.tf32_off()
    assert devices.describe(torch.device("cuda:1"), "fp32") == "cuda:1 (FAKE GPU, fp32, TF32 off)"


def test_device_type_without_torch_for_named_devices(fake_gpus: list[int]) -> None:
    assert devices.device_type("cpu") == "cpu"
    assert devices.device_type("cuda:3") == "cuda"  # not checked here: the inference process says if it is missing
    assert devices.device_type("auto", 1) == "cuda" and devices.device_type("2") == "cuda"
    assert devices.device_type("auto") == "cuda"  # the fake GPUs are visible


def test_device_type_auto_on_a_machine_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert devices.device_type("auto") == "cpu"
