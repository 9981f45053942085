"""``mimir train``: loss, data handling, a tiny training run, resume, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mimir.errors import InputError, UsageError
from mimir.models.modules import load_state_dicts, read_module, verify_module
from mimir.training import TrainConfig, TrainProgress, train
from mimir.training.data import (
    BatchSampler,
    holdout_split,
    fold_split,
    load_images,
    random_shifts,
    read_targets_csv,
    shift_images,
    standardisation,
    target_info,
)
from mimir.training.loss import mean_variance_loss
from mimir.training.trainer import learning_rate, plan_jobs

from conftest_models import single_torch_thread  # noqa: F401  (fixture)

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("single_torch_thread")

# Tiny settings: a width-2 ResNet50 and batches of 2 keep an iteration well under a second.
TINY = dict(width=2, members=2, iterations=4, batch_size=2, val_fraction=0.25, checkpoint_every=2, max_shift=4)


# --------------------------------------------------------------------------- loss


def test_loss_ignores_missing_targets() -> None:
    torch.manual_seed(0)
    out = torch.randn(4, 3, 2, requires_grad=True)
    y = torch.randn(4, 3)
    y_missing = y.clone()
    y_missing[0, 1] = float("nan")
    y_missing[2, :] = float("nan")
    loss = mean_variance_loss(out, y_missing)
    present = torch.isfinite(y_missing)
    m, s = out[..., 0], out[..., 1]
    expected = (torch.exp(-s) * (y - m) ** 2 + s)[present].mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.isfinite(out.grad).all()
    assert torch.all(out.grad[0, 1] == 0) and torch.all(out.grad[2] == 0)
    assert torch.any(out.grad[1] != 0)


def test_loss_with_extreme_outputs_on_missing_entries_stays_finite() -> None:
    out = torch.zeros(2, 2, 2)
    out[0, 0, 1] = -1e4  # exp(-s) overflows, but the entry is missing
    out[0, 0, 0] = 1e30
    out.requires_grad_(True)
    y = torch.tensor([[float("nan"), 0.5], [0.1, 0.2]])
    loss = mean_variance_loss(out, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.grad).all()


def test_loss_of_an_all_missing_batch_is_zero() -> None:
    out = torch.randn(3, 4, requires_grad=True)  # (B, 2T) layout also accepted
    loss = mean_variance_loss(out, torch.full((3, 2), float("nan")))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(out.grad == 0)


def test_loss_is_minimised_by_the_true_mean_and_variance() -> None:
    y = torch.tensor([[1.0]])
    best = mean_variance_loss(torch.tensor([[[1.0, -2.0]]]), y)  # s -> -inf is best when m = y exactly...
    worse = mean_variance_loss(torch.tensor([[[0.0, -2.0]]]), y)
    assert best < worse
    # for a residual r the optimal log variance is log(r^2)
    r = 0.7
    s_opt = float(np.log(r**2))
    vals = [float(mean_variance_loss(torch.tensor([[[0.0, s]]]), torch.tensor([[r]]))) for s in (s_opt - 0.1, s_opt, s_opt + 0.1)]
    assert vals[1] < vals[0] and vals[1] < vals[2]


# --------------------------------------------------------------------------- data


def test_read_targets_csv_missing_values_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("name,a_kg,b_l\ns1,1.5,\ns2,,NA\ns3,3,4\n")
    table = read_targets_csv(p)
    assert table.names == ["s1", "s2", "s3"] and table.targets == ["a_kg", "b_l"]
    assert np.isnan(table.values[0, 1]) and np.isnan(table.values[1]).all()
    assert table.values[2].tolist() == [3.0, 4.0]
    p.write_text("subject,a\ns1,1\n")
    with pytest.raises(InputError, match="first column must be 'name'"):
        read_targets_csv(p)
    p.write_text("name,a\ns1,abc\n")
    with pytest.raises(InputError, match="not a number"):
        read_targets_csv(p)
    p.write_text("name,a\ns1,1\ns1,2\n")
    with pytest.raises(InputError, match="twice"):
        read_targets_csv(p)


def test_target_info_units_fields_and_guesses(tmp_path: Path) -> None:
    info = target_info(["weight_kg", "vat_volume_l", "score"], units=["score=points"], fields=["weight_kg=21002"])
    assert [(i.unit, i.field) for i in info] == [("kg", 21002), ("L", None), ("points", None)]
    f = tmp_path / "info.csv"
    f.write_text("name,unit,field\nscore,pts,123\n")
    info = target_info(["weight_kg", "score"], info_file=f)
    assert info[1].unit == "pts" and info[1].field == 123
    with pytest.raises(UsageError, match="not a column"):
        target_info(["a"], units=["b=kg"])
    with pytest.raises(UsageError, match="integer"):
        target_info(["a"], fields=["a=x"])


def test_standardisation_uses_ddof_1_and_skips_missing() -> None:
    v = np.array([[1.0, np.nan], [2.0, 5.0], [3.0, 7.0]])
    mean, sd = standardisation(v, ["a", "b"])
    assert mean.tolist() == [2.0, 6.0]
    assert sd[0] == pytest.approx(1.0) and sd[1] == pytest.approx(np.sqrt(2.0))
    with pytest.raises(UsageError, match="same value"):
        standardisation(np.ones((3, 1)), ["c"])


def test_shift_images_moves_content_and_fills_with_edges() -> None:
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.uint8).reshape(2, 1, 4, 5)
    out = shift_images(x, np.array([[1, -2], [0, 0]]))
    assert torch.equal(out[1], x[1])
    # output (i, j) = input (clip(i - 1), clip(j + 2))
    for i in range(4):
        for j in range(5):
            assert out[0, 0, i, j] == x[0, 0, min(max(i - 1, 0), 3), min(max(j + 2, 0), 4)]
    s = random_shifts(64, 16, seed=0, stream=1, iteration=5)
    assert s.min() >= -16 and s.max() <= 16 and np.array_equal(s, random_shifts(64, 16, 0, 1, 5))


def test_batches_depend_on_the_seed_only_and_visit_every_subject() -> None:
    pool = np.arange(10, 20)
    a, b = BatchSampler(pool, 3, 7, 0), BatchSampler(pool, 3, 7, 0)
    first = [a(i).tolist() for i in range(6)]
    assert [b(i).tolist() for i in reversed(range(6))][::-1] == first  # order of calls does not matter
    seen = np.concatenate([a(i) for i in range(10)])[:10]  # 30 draws = 3 epochs; the first epoch is a permutation
    assert sorted(seen.tolist()) == list(range(10, 20))
    assert BatchSampler(pool, 3, 7, 1)(0).tolist() != first[0] or BatchSampler(pool, 3, 7, 1)(1).tolist() != first[1]


def test_splits() -> None:
    train_idx, val = holdout_split(20, 0.25, seed=0)
    assert len(val) == 5 and len(train_idx) == 15 and not set(train_idx) & set(val)
    folds = fold_split(20, 4, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(20))
    with pytest.raises(UsageError):
        holdout_split(3, 0.5, seed=0)
    cfg = TrainConfig(members=2, folds=3)
    jobs = plan_jobs(12, cfg)
    assert [j.group for j in jobs] == ["fold"] * 6 + ["final"] * 2
    assert len({j.stream for j in jobs}) == 8


def test_learning_rate_drops_for_the_last_fifth() -> None:
    cfg = TrainConfig(iterations=100, lr=1e-3)
    assert learning_rate(cfg, 79) == 1e-3 and learning_rate(cfg, 80) == pytest.approx(1e-4)


# --------------------------------------------------------------------------- training runs


def _make_data(folder: Path, n: int = 12, seed: int = 0) -> Path:
    """n random images whose first target is their brightness; second target partly missing."""
    rng = np.random.default_rng(seed)
    img_dir = folder / "images"
    img_dir.mkdir(parents=True)
    rows = ["name,brightness_percent,other_l"]
    for i in range(n):
        level = float(rng.uniform(20, 200))
        image = np.clip(rng.normal(level, 10, size=(3, 256, 256)), 0, 255).astype(np.uint8)
        np.save(img_dir / f"s{i:02d}.npy", image)
        other = "" if i % 3 == 0 else f"{rng.normal(5, 1):.3f}"
        rows.append(f"s{i:02d},{level:.3f},{other}")
    (folder / "targets.csv").write_text("\n".join(rows) + "\n")
    return folder


def _dataset(folder: Path):
    table = read_targets_csv(folder / "targets.csv")
    return load_images(folder / "images", table), target_info(table.targets)


def test_tiny_training_writes_a_module_that_predict_loads(tmp_path: Path) -> None:
    from mimir.inference.predictor import Predictor

    data = _make_data(tmp_path / "data")
    ds, infos = _dataset(data)
    out = tmp_path / "tiny-module"
    result = train(ds, infos, out, TrainConfig(name="tiny-module", intended_use="tests", **TINY))
    spec = read_module(out)
    verify_module(spec)
    assert spec.name == "tiny-module" and spec.width == 2 and len(spec.members) == 2
    assert [t.name for t in spec.targets] == ["brightness_percent", "other_l"]
    assert [t.unit for t in spec.targets] == ["percent", "L"]
    t0 = spec.targets[0]
    v = t0.metrics["validation"]
    assert v["n"] == 3 and {"mae", "r2", "icc", "mape_percent", "coverage95_calibrated", "auce_calibrated"} <= set(v)
    assert t0.calibration == v["calibration_factor"] > 0
    assert t0.mean == pytest.approx(np.mean(ds.values[result_train_rows(ds, TINY)][:, 0]))
    assert spec.source["kind"] == "trained with mimir train"
    assert not (tmp_path / ".tiny-module.train").exists()  # checkpoints removed after success

    p = Predictor([out], device="cpu")
    recs = p.predict_files([data / "images" / "s00.npy"])
    assert recs[0].ok and len(recs[0].predictions) == 2
    assert np.isfinite([x.value for x in recs[0].predictions]).all()
    assert result.iterations_per_second > 0


def result_train_rows(ds, cfg) -> np.ndarray:
    train_idx, _ = holdout_split(len(ds.names), cfg["val_fraction"], 0)
    return train_idx


class _InterruptAt(TrainProgress):
    def __init__(self, job: int, iteration: int) -> None:
        self.job, self.iteration = job, iteration

    def step(self, job, iteration, loss) -> None:  # noqa: ANN001
        if job.index == self.job and iteration == self.iteration:
            raise KeyboardInterrupt


def test_resume_after_interruption_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=8)
    ds, infos = _dataset(data)
    cfg = dict(TINY, members=2, iterations=5, checkpoint_every=2)

    ref = train(ds, infos, tmp_path / "ref", TrainConfig(name="ref", **cfg))
    work = tmp_path / "work"
    # Interrupted in the second member, after its checkpoint at iteration 2 (iteration 3 is lost).
    with pytest.raises(KeyboardInterrupt):
        train(ds, infos, tmp_path / "res", TrainConfig(name="res", **cfg), work_dir=work, progress=_InterruptAt(1, 3))
    assert (work / "job_holdout_m0.pt").is_file() and (work / "current_holdout_m1.pt").is_file()
    assert not (tmp_path / "res").exists()
    ckpt = torch.load(work / "current_holdout_m1.pt", weights_only=True)
    assert ckpt["job"] == "holdout_m1" and ckpt["iteration"] == 2

    started: list[tuple[int, int]] = []

    class Record(TrainProgress):
        def job_started(self, job, label, start_iteration, iterations) -> None:  # noqa: ANN001
            started.append((job.index, start_iteration))

    res = train(ds, infos, tmp_path / "res", TrainConfig(name="res", **cfg), work_dir=work, progress=Record())
    assert started == [(1, 2)]  # member 0 reused, member 1 resumed at iteration 2
    for a, b in zip(load_state_dicts(ref.spec), load_state_dicts(res.spec)):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert [t.calibration for t in ref.spec.targets] == [t.calibration for t in res.spec.targets]


def test_parallel_workers_train_the_same_networks_as_a_sequential_run(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=8)
    ds, infos = _dataset(data)
    cfg = dict(TINY, members=3, iterations=3)
    ref = train(ds, infos, tmp_path / "ref", TrainConfig(name="ref", **cfg))  # one thread (fixture)

    finished: list[int] = []
    steps: dict[int, list[int]] = {}

    class Record(TrainProgress):
        def step(self, job, iteration, loss) -> None:  # noqa: ANN001
            steps.setdefault(job.index, []).append(iteration)

        def job_finished(self, job, seconds) -> None:  # noqa: ANN001
            finished.append(job.index)

    par = train(
        ds, infos, tmp_path / "par", TrainConfig(name="par", **cfg), workers=2, threads=1, progress=Record()
    )
    assert sorted(finished) == [0, 1, 2]
    assert steps == {0: [1, 2, 3], 1: [1, 2, 3], 2: [1, 2, 3]}  # every worker's progress reached the parent
    for a, b in zip(load_state_dicts(ref.spec), load_state_dicts(par.spec), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert [t.calibration for t in ref.spec.targets] == [t.calibration for t in par.spec.targets]
    assert json.loads((tmp_path / "par" / "module.json").read_text())["source"]["training"]["workers"] == 2


def test_a_parallel_run_resumes_from_a_sequential_runs_checkpoints(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=8)
    ds, infos = _dataset(data)
    cfg = dict(TINY, members=3, iterations=4, checkpoint_every=2)
    ref = train(ds, infos, tmp_path / "ref", TrainConfig(name="ref", **cfg))
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):  # member 1 stopped after its checkpoint at iteration 2
        train(ds, infos, tmp_path / "res", TrainConfig(name="res", **cfg), work_dir=work, progress=_InterruptAt(1, 3))
    started: list[tuple[int, int]] = []

    class Record(TrainProgress):
        def job_started(self, job, label, start_iteration, iterations) -> None:  # noqa: ANN001
            started.append((job.index, start_iteration))

    res = train(
        ds, infos, tmp_path / "res", TrainConfig(name="res", **cfg), work_dir=work, workers=2, threads=1,
        progress=Record(),
    )
    assert sorted(started) == [(1, 2), (2, 0)]
    for a, b in zip(load_state_dicts(ref.spec), load_state_dicts(res.spec), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_threads_apply_to_a_sequential_run_and_are_restored(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=8)
    ds, infos = _dataset(data)
    seen: list[int] = []

    class Record(TrainProgress):
        def step(self, job, iteration, loss) -> None:  # noqa: ANN001
            seen.append(torch.get_num_threads())

    torch.set_num_threads(1)
    train(ds, infos, tmp_path / "m", TrainConfig(name="m", **dict(TINY, iterations=2)), threads=2, progress=Record())
    assert seen == [2, 2, 2, 2]  # 2 members x 2 iterations, each with the threads asked for
    assert torch.get_num_threads() == 1


def test_workers_must_be_positive(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=8)
    ds, infos = _dataset(data)
    with pytest.raises(UsageError, match="--workers"):
        train(ds, infos, tmp_path / "m", TrainConfig(name="m", **TINY), workers=0)


def test_a_smaller_ensemble_reuses_finished_members(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=8)
    ds, infos = _dataset(data)
    work = tmp_path / "work"
    cfg = dict(TINY, members=3, iterations=2)
    with pytest.raises(KeyboardInterrupt):  # stopped during the third member
        train(ds, infos, tmp_path / "m", TrainConfig(name="m", **cfg), work_dir=work, progress=_InterruptAt(2, 1))
    started: list[int] = []

    class Record(TrainProgress):
        def job_started(self, job, label, start_iteration, iterations) -> None:  # noqa: ANN001
            started.append(job.index)

    small = train(ds, infos, tmp_path / "m", TrainConfig(name="m", **dict(cfg, members=2)), work_dir=work, progress=Record())
    assert started == [] and len(small.spec.members) == 2
    full = train(ds, infos, tmp_path / "full", TrainConfig(name="full", **dict(cfg, members=2)))
    for a, b in zip(load_state_dicts(small.spec), load_state_dicts(full.spec)):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_of_other_settings_are_refused(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=8)
    ds, infos = _dataset(data)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        train(ds, infos, tmp_path / "m", TrainConfig(name="m", **TINY), work_dir=work, progress=_InterruptAt(0, 3))
    with pytest.raises(UsageError, match="other data or settings"):
        train(ds, infos, tmp_path / "m", TrainConfig(name="m", **dict(TINY, seed=1)), work_dir=work)


def test_folds_calibrate_on_out_of_fold_predictions(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=12)
    ds, infos = _dataset(data)
    cfg = TrainConfig(name="cv", **dict(TINY, members=1, iterations=2, folds=2))
    result = train(ds, infos, tmp_path / "cv", cfg)
    v = result.spec.targets[0].metrics["validation"]
    assert v["n"] == 12 and v["method"] == "2-fold out-of-fold"
    assert len(result.spec.members) == 1
    assert result.spec.source["data"]["train_subjects"] == 12


def test_init_loads_a_torchvision_format_body_but_not_fc(tmp_path: Path) -> None:
    from mimir.errors import ModuleError
    from mimir.models.resnet import ResNet50, mean_variance_resnet50
    from mimir.training.trainer import init_from

    torch.manual_seed(1)
    imagenet = ResNet50(num_outputs=1000, width=2)  # torchvision layout, 1000 classes
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in imagenet.state_dict().items()}}, path)
    net = mean_variance_resnet50(3, width=2)
    fc_before = net.fc.weight.clone()
    init_from(net, path)
    assert torch.equal(net.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(net.layer4[2].bn3.running_var, imagenet.layer4[2].bn3.running_var)
    assert torch.equal(net.fc.weight, fc_before)
    with pytest.raises(ModuleError, match="width-2"):
        init_from(mean_variance_resnet50(3, width=4), path)


# --------------------------------------------------------------------------- CLI


def _app():
    from mimir.cli import app

    return app


def test_cli_train_then_predict(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=8)
    out = tmp_path / "cli-module"
    args = [
        "train", str(data / "images"), str(data / "targets.csv"), "-o", str(out),
        "--members", "1", "--width", "2", "--iterations", "2", "--batch-size", "2",
        "--val-fraction", "0.25", "--device", "cpu", "--units", "other_l=mL", "--fields", "other_l=12345",
    ]
    r = runner.invoke(_app(), args)
    assert r.exit_code == 0, r.output
    assert "held-out validation" in r.output and "wrote module cli-module" in r.output
    mj = json.loads((out / "module.json").read_text())
    assert mj["targets"][1]["unit"] == "mL" and mj["targets"][1]["field"] == 12345
    r = runner.invoke(_app(), ["predict", "-m", str(out), str(data / "images" / "s01.npy")])
    assert r.exit_code == 0, r.output
    # An existing output is not overwritten without --force
    r = runner.invoke(_app(), args)
    assert r.exit_code == 1 and "already exists" in r.output


def test_cli_train_reports_bad_inputs_in_one_line(tmp_path: Path) -> None:
    data = _make_data(tmp_path / "data", n=4)
    (data / "bad.csv").write_text("id,x\n1,2\n")
    r = runner.invoke(_app(), ["train", str(data / "images"), str(data / "bad.csv"), "-o", str(tmp_path / "m")])
    assert r.exit_code == 1 and "first column must be 'name'" in r.output
    r = runner.invoke(
        _app(), ["train", str(tmp_path / "nope"), str(data / "targets.csv"), "-o", str(tmp_path / "m")]
    )
    assert r.exit_code == 1 and "is not a folder" in r.output
    r = runner.invoke(
        _app(),
        ["train", str(data / "images"), str(data / "targets.csv"), "-o", str(tmp_path / "m"), "--calibration", "x"],
    )
    assert r.exit_code == 1 and "unknown calibration objective" in r.output


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-to-parent", "kill-9-parent"])
def test_interrupted_parallel_cli_run_keeps_a_checkpoint_per_worker(tmp_path: Path, how: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    data = _make_data(tmp_path / "data", n=8)
    work, out = tmp_path / "work", tmp_path / "out"
    code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from mimir.cli import main; main()"
    args = [
        "train", str(data / "images"), str(data / "targets.csv"), "-o", str(out), "--work-dir", str(work),
        "--workers", "2", "--threads", "1", "--width", "2", "--members", "2", "--iterations", "100000",
        "--batch-size", "2", "--checkpoint-every", "3", "--val-fraction", "0.25", "--device", "cpu",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    ckpts = [work / "current_holdout_m0.pt", work / "current_holdout_m1.pt"]
    deadline = time.monotonic() + 180
    while not all(p.is_file() for p in ckpts):
        assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the workers wrote no checkpoints in time"
        time.sleep(0.05)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    elif how == "sigterm-to-parent":
        proc.send_signal(signal.SIGTERM)  # a scheduler's kill of the main process only
    else:
        proc.kill()  # the main process dies at once; its workers must notice and stop
    _, stderr = proc.communicate(timeout=60)
    if how == "kill-9-parent":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, stderr.decode()
        assert stderr.decode().strip().splitlines()[-1].endswith("interrupted")
    assert not out.exists()
    for p in ckpts:  # each worker checkpointed its own network as it stopped
        ckpt = torch.load(p, weights_only=True)
        assert ckpt["iteration"] >= 3 and ckpt["job"] == p.stem.removeprefix("current_")
    deadline = time.monotonic() + 20  # no worker is left behind
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        left = subprocess.run(["ps", "-o", "pid,args", "-g", str(proc.pid)], capture_output=True, text=True).stdout
        raise AssertionError(f"processes left in the group: {left}")


def test_training_stores_an_ood_reference_fitted_on_training_and_held_out_images(tmp_path: Path) -> None:
    from mimir.inference.predictor import Predictor
    from mimir.models.ood import feature_dim
    from mimir.utils.hashing import file_sha256

    data = _make_data(tmp_path / "data", n=50)
    ds, infos = _dataset(data)
    out = tmp_path / "with-ref"
    cfg = TrainConfig(name="with-ref", **dict(TINY, val_fraction=0.4))
    result = train(ds, infos, out, cfg)
    spec = read_module(out)
    assert spec.ood is not None and spec.ood == result.spec.ood
    assert spec.ood.sha256 == file_sha256(out / spec.ood.file)
    fitted = spec.ood.fitted
    assert (fitted["fit_images"], fitted["calibration_images"]) == (30, 20)
    assert fitted["split"].startswith("mean/covariance on training + held-out images")
    ref = spec.load_reference()
    assert ref.size == 2 * feature_dim(2) and ref.quantile == 0.995  # the default flag line
    recs = Predictor([out], device="cpu").predict_files(sorted(str(p) for p in (data / "images").glob("*.npy")))
    scores = np.array([r.ood_scores["with-ref"] for r in recs])
    assert np.all(np.isfinite(scores)) and np.all(scores > 0)
    # the training images themselves lie mostly inside the flag line
    assert np.mean(scores > 1) <= 0.1
