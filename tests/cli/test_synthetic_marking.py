"""A synthetic-demo module says so on screen in every command, and in explain's figures and explain.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mimir.cli import app

runner = CliRunner()
WARNING = "phantom-demo: a synthetic demonstration module (intended_use synthetic-demo)"


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        p = folder / f"100000{k}_20201_2_0.npy"
        np.save(p, rng.integers(0, 255, (3, 256, 256), dtype=np.uint8))
        paths.append(str(p))
    return paths


@pytest.mark.slow  # a real batch run: worker processes start (about 20 s on the shared 2-core VM)
def test_batch_says_synthetic_demo_and_counts_flags(tmp_path: Path) -> None:
    _images(tmp_path / "in", 2)
    r = runner.invoke(app, ["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", "phantom-demo",
                            "--workers", "1", "--device", "cpu"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    flagged = run["counts"]["qc_flagged"]
    assert flagged == 2  # random images are far out of distribution
    assert f"{flagged} predicted subject(s) QC-flagged ({run['counts']['qc_fail']} fail)" in " ".join(r.stdout.split())
    assert WARNING in " ".join(r.stderr.split())


def test_explain_says_synthetic_demo_on_screen_in_figures_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    from mimir.outputs import figures

    titles: list[str] = []
    real = figures.saliency_figure

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        titles.append(kwargs["title"])
        return real(*args, **kwargs)

    monkeypatch.setattr(figures, "saliency_figure", spy)
    paths = _images(tmp_path / "in", 1)
    r = runner.invoke(app, ["explain", *paths, "-m", "phantom-demo", "-t", "weight_kg", "-o", str(tmp_path / "ex"),
                            "--device", "cpu"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert WARNING in " ".join(r.stderr.split())
    summary = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert summary["synthetic_demo"] == ["phantom-demo"]
    assert [m["intended_use"] for m in summary["modules"]] == ["synthetic-demo"]
    assert titles and all("phantom-demo (synthetic demo)" in t for t in titles)
