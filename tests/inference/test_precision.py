"""Exact fp32 by default, the bf16 opt-in, OOD references' feature precision, and running out of memory.

No GPU is lent to this project's CI: the out-of-memory handling is tested by
injecting ``torch.OutOfMemoryError`` into the forward pass on the CPU, and the
CUDA half of the precision agreement test runs only where a GPU is present
(``benchmarks/gpu_check.sh`` runs it on a lent GPU machine).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest_models import DEFAULT_TARGETS, random_images, random_resnet_state

torch = pytest.importorskip("torch")

from mimir.inference.predictor import OutOfMemory, Predictor  # noqa: E402
from mimir.models.modules import TargetSpec, write_module  # noqa: E402
from mimir.models.registry import get_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _module(folder: Path, members: int = 1) -> str:
    targets = [TargetSpec(name=n, field=f, unit=u, divisor=d, mean=m, sd=s, calibration=c)
               for n, f, u, d, m, s, c in DEFAULT_TARGETS]
    write_module(folder, name="tiny", version="1", targets=targets,
                 state_dicts=[random_resnet_state(3, 8, seed) for seed in range(members)])
    return str(folder)


def _inject_oom(predictor: Predictor, fail_shapes: set[int] | None = None, times: int | None = None) -> list[int]:
    """Make member 0's forward raise torch's OOM: for ``times`` calls, or whenever the batch is in ``fail_shapes``.

    Returns the list of batch sizes the network was called with (failed calls included).
    """
    net = predictor.loaded[0].networks[0]
    real = net.features
    calls: list[int] = []

    def features(x):  # noqa: ANN001, ANN202
        calls.append(int(x.shape[0]))
        failing = (times is not None and len(calls) <= times) or (fail_shapes is not None and x.shape[0] in fail_shapes)
        if failing:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(x)

    net.features = features
    return calls


def test_a_passing_out_of_memory_is_retried_at_the_same_shape_bit_for_bit(tmp_path: Path) -> None:
    module = _module(tmp_path / "m", members=2)
    images = random_images(8, seed=4)
    want = Predictor([module], device="cpu", batch_size=8).predict_arrays(images)
    p = Predictor([module], device="cpu", batch_size=8)
    calls = _inject_oom(p, times=1)
    got = p.predict_arrays(images)
    assert calls == [8, 8]  # failed once, then the same 8 images again
    assert p.forward_size is None and "out of memory" not in p.describe_device()
    for (m1, v1), (m2, v2) in zip(want, got):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(v1, v2)


def test_a_lasting_out_of_memory_halves_the_batch_padded_as_batch_size_would(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Halves are padded to the half size: the numbers are those of a run with that batch size, bit for bit."""
    module = _module(tmp_path / "m")
    images = random_images(7, seed=5)  # odd: the second half (3 images) is padded to 4
    p = Predictor([module], device="cpu", batch_size=8)
    calls = _inject_oom(p, fail_shapes={8, 7})
    with caplog.at_level(logging.WARNING, logger="mimir"):
        got = p.predict_arrays(images)
        later = p.predict_arrays(images[4:])  # later batches (3 images) keep forward passes of 4, padded
    assert calls == [7, 7, 4, 4, 4]
    assert p.forward_size == 4 and "forward passes of 4 images after running out of memory" in p.describe_device()
    assert sum("out of memory" in r.getMessage() for r in caplog.records) == 1
    assert "--batch-size 4" in caplog.records[0].getMessage()

    ref = Predictor([module], device="cpu", batch_size=4)
    padded = np.zeros((8, 3, 256, 256), np.uint8)
    padded[:7] = images
    want = [ref.predict_arrays(padded[:4]), ref.predict_arrays(padded[4:])]
    (mean, var), = got
    np.testing.assert_array_equal(mean, np.concatenate([want[0][0][0], want[1][0][0][:3]]))
    np.testing.assert_array_equal(var, np.concatenate([want[0][0][1], want[1][0][1][:3]]))
    np.testing.assert_array_equal(later[0][0], want[1][0][0][:3])
    np.testing.assert_array_equal(later[0][1], want[1][0][1][:3])


def test_out_of_memory_with_one_image_stops_with_one_line(tmp_path: Path) -> None:
    p = Predictor([_module(tmp_path / "m")], device="cpu", batch_size=2)
    _inject_oom(p, fail_shapes={1, 2})
    with pytest.raises(OutOfMemory) as err:
        p.predict_arrays(random_images(2, seed=6))
    text = str(err.value)
    assert "\n" not in text and "even with one image per forward pass" in text and "--device cpu" in err.value.hint


def test_other_errors_are_not_taken_for_out_of_memory(tmp_path: Path) -> None:
    p = Predictor([_module(tmp_path / "m")], device="cpu", batch_size=2)
    net = p.loaded[0].networks[0]

    def broken(x):  # noqa: ANN001, ANN202
        raise RuntimeError("shape mismatch")

    net.features = broken
    with pytest.raises(RuntimeError, match="shape mismatch"):
        p.predict_arrays(random_images(2, seed=6))
    assert p.forward_size is None


# --------------------------------------------------------------------------- OOD references


def test_references_record_their_feature_precision_and_old_ones_read_as_fp32(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mimir.inference import predictor as predictor_module
    from mimir.inference.reference import fit_module_reference

    module = Path(_module(tmp_path / "m"))
    data = tmp_path / "imgs"
    data.mkdir()
    for i, image in enumerate(random_images(40, seed=7)):
        np.save(data / f"s{i}.npy", image)
    fit_module_reference(str(module), [str(data)], device="cpu", cache=False)
    doc = json.loads((module / "module.json").read_text())
    assert doc["ood_reference"]["feature_precision"] == "fp32"  # the default: exact fp32 features
    assert get_module(str(module)).load_reference().feature_precision == "fp32"

    predictor_module._warned_reference.clear()
    with caplog.at_level(logging.WARNING, logger="mimir"):
        Predictor([str(module)], device="cpu")
        assert not caplog.records  # same precision: nothing to say
        Predictor([str(module)], device="cpu", precision="bf16")
        Predictor([str(module)], device="cpu", precision="bf16")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # once per process
    assert "fitted on fp32 features, this run computes bf16 features" in warnings[0]
    assert "--precision fp32" in warnings[0]

    # a module.json of an earlier version has no field: read as fp32, and its digest is unchanged by reading
    del doc["ood_reference"]["feature_precision"]
    (module / "module.json").write_text(json.dumps(doc, indent=2))
    old = get_module(str(module))
    assert old.load_reference().feature_precision == "fp32" and old.ood.feature_precision is None
    assert "feature_precision" not in old.to_json()["ood_reference"]
    doc["ood_reference"]["feature_precision"] = "fp16"
    (module / "module.json").write_text(json.dumps(doc, indent=2))
    from mimir.errors import ModuleError

    with pytest.raises(ModuleError, match="feature_precision"):
        get_module(str(module))


# --------------------------------------------------------------------------- agreement with the CPU


def _precision_benchmark():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("precision_bench", ROOT / "benchmarks" / "precision.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return _precision_benchmark().subject_images(tmp_path_factory.mktemp("subjects"), 2)


def test_cpu_half_default_is_exact_and_the_measure_sees_bf16(demo_images: np.ndarray) -> None:
    """The CPU half: the default is fp32 and reproducible; bf16 (the opt-in) moves means by far more than 1e-3 sd."""
    bench = _precision_benchmark()
    cpu = bench.run(demo_images, "cpu", "fp32")
    default = bench.run(demo_images, "cpu", "auto")
    d = bench.deviation(cpu, default)
    assert d["mean_shift_sd_max"] == 0.0 and d["variance_rel_max"] == 0.0 and d["within_tolerance"]
    bf16 = bench.deviation(cpu, bench.run(demo_images, "cpu", "bf16"))
    assert bf16["mean_shift_sd_max"] > 10 * bench.TOLERANCE and not bf16["within_tolerance"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA half needs a GPU (benchmarks/gpu_check.sh)")
def test_cuda_half_default_agrees_with_the_cpu_within_1e_3_sd(demo_images: np.ndarray) -> None:
    from mimir.utils.devices import tf32_off

    bench = _precision_benchmark()
    cpu = bench.run(demo_images, "cpu", "fp32")
    cuda = bench.run(demo_images, "cuda", "auto")
    assert tf32_off() and "fp32, TF32 off" in cuda["described"]
    d = bench.deviation(cpu, cuda)
    assert d["within_tolerance"], d
