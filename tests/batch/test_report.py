"""``mimir report``: a self-contained HTML page whose numbers equal the batch outputs."""

from __future__ import annotations

import csv
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mimir.batch.report import ReportError, build_report, target_columns
from mimir.errors import UsageError
from mimir.utils.install import extra_hint

pytest.importorskip("matplotlib", reason="the report extra (pip install 'ukb-mimir[report]') is needed")

runner = CliRunner()
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
HOSTILE = "<script>alert('x')</script> & \"quotes\""


class Page(HTMLParser):
    """Tags, attributes, text by id, and a check that every element is closed in order."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.ids: dict[str, str] = {}
        self._capture: list[tuple[str, int, list[str]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()
        if self.stack:
            self.problems.append(f"unclosed: {self.stack}")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in ("td", "th", "tr", "li", "div", "br"):  # cells and blocks read as separate words
            for _, _, parts in self._capture:
                parts.append(" ")
        if tag in VOID:
            return
        self.stack.append(tag)
        if a.get("id"):
            self._capture.append((a["id"], len(self.stack), []))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        depth = len(self.stack)
        self.stack.pop()
        while self._capture and self._capture[-1][1] == depth:
            key, _, parts = self._capture.pop()
            self.ids[key] = " ".join("".join(parts).split())

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for _, _, parts in self._capture:
            parts.append(data)

    def attrs(self, tag: str, name: str) -> list[str]:
        return [a[name] or "" for t, a in self.tags if t == tag and name in a]


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (3, 256, 256), dtype=np.uint8)


def make_batch_folder(folder: Path, n: int = 40, *, qc: bool = True, failed: int = 3, images: int = 4,
                      layout: str = "wide") -> dict:
    """A folder shaped like mimir batch's output (phantom-demo module; CSV and JSON by mimir's own writers).

    With ``qc``, subjects carry QC verdicts and flags (subject 1 "fail",
    every fifth "warn") and OOD scores; without, those stay empty (as when
    QC was not computed). ``images`` flagged subjects get .npy inputs.
    """
    from mimir.inference.predictions import SubjectResult, TargetPrediction, layout_for
    from mimir.models.registry import get_module
    from mimir.outputs.writers import csv_text, json_text, long_csv_text

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    spec = get_module("phantom-demo")
    targets = layout_for([(spec.name, spec.version, [(t.name, t.unit, t.field) for t in spec.targets],
                           spec.intended_use)])
    names = [f"{1000000 + i}_20201_2_0" for i in range(n)]
    ok, bad = names[: n - failed], names[n - failed:]
    results = []
    for i, name in enumerate(ok):
        r = SubjectResult.for_input(f"/in/{name}.zip")
        for t in targets:
            mean = np.nan if (i == 2 and t.name == "weight_kg") else rng.normal(50, 10)
            r.predictions.append(TargetPrediction(t, float(mean), float(rng.uniform(0.1, 1.0)) ** 2))
        if qc:
            r.qc_status = "fail" if i == 1 else ("warn" if i % 5 == 0 else "ok")
            r.qc_flags = {"fail": ["fat_water_swap:station=3"],
                          "warn": ["slices_dropped:station=2,n=1", "out_of_distribution:phantom-demo"]}.get(
                              r.qc_status, [])
            r.ood_scores = {spec.name: float(rng.gamma(2.0))}
        results.append(r)
    text = csv_text(results, targets) if layout == "wide" else long_csv_text(results)
    (folder / "predictions.csv").write_text(text, encoding="utf-8")
    (folder / "predictions.json").write_text(json_text(results), encoding="utf-8")
    errors = [(b, f"/in/{b}.zip", "preprocess", f"/in/{b}.zip: broken {HOSTILE}") for b in bad]
    errors += [(b, f"/in/{b}.zip", "input", "a second error for the same subject") for b in bad[:1]]
    with open(folder / "errors.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("name", "path", "stage", "message"))
        w.writerows(errors)
    img_dir = folder.parent / f"{folder.name}-inputs"
    img_dir.mkdir(exist_ok=True)
    flagged = [r.name for r in results if r.qc_status in ("warn", "fail")]
    paths = {}
    for k, name in enumerate(names):
        if name in flagged[:images]:
            np.save(img_dir / f"{name}.npy", _image(k))
            paths[name] = str(img_dir / f"{name}.npy")
        else:
            paths[name] = str(img_dir / f"{name}.zip")  # does not exist: no thumbnail
    with open(folder / "subjects.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("name", "path"))
        w.writerows(sorted(paths.items()))
    run = {"format": "mimir-batch-run/1", "status": "complete", "versions": {"mimir": "0.1.0", "torch": "2.x"},
           "pipeline_version": "mimir-v1", "input": "/in", "engine": "local", "devices": ["cpu (fp32)"],
           "precision": "auto", "level": 0.95, "modules": [spec.identity()], "key_digest": "ab" * 32,
           "csv_layout": layout,
           "counts": {"inputs": n, "subjects": n, "refused": 0, "processed": n, "predicted": len(ok),
                      "failed": failed, "unfinished": 0},
           "started_at": "2026-01-01T00:00:00+0000", "finished_at": "2026-01-01T00:01:01+0000",
           "wall_s": 61.25, "throughput_subjects_per_s": 0.65}
    (folder / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return {"results": results, "errors": errors, "run": run, "flagged": flagged, "spec": spec}


def _report(tmp_path: Path, **kw) -> tuple[dict, Page, str]:
    info = make_batch_folder(tmp_path / "out", **kw)
    result = build_report(tmp_path / "out")
    text = result.path.read_text(encoding="utf-8")
    assert result.size_bytes == len(text.encode())
    return info, Page(text), text


def test_report_is_well_formed_and_self_contained(tmp_path: Path) -> None:
    info, page, text = _report(tmp_path)
    assert not page.problems, page.problems[:5]
    assert text.startswith("<!DOCTYPE html>")
    imgs = page.attrs("img", "src")
    assert len(imgs) >= 2 * 6 + 4  # two histograms per target, and thumbnails
    assert all(re.match(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+$", s) for s in imgs)
    hrefs = page.attrs("a", "href")
    assert hrefs and all(h.startswith("#") for h in hrefs)
    ids = {a["id"] for _, a in page.tags if a.get("id")}
    assert {h[1:] for h in hrefs} <= ids  # every link lands somewhere
    # nothing is fetched: no scripts, no stylesheets, no external URL anywhere
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object", "embed")]
    assert not re.search(r"(https?:|ftp:|//[a-z0-9.-]+\.[a-z]{2,})", text.replace("data:image", ""), re.I)
    assert "url(" not in text and "@import" not in text
    # hostile text from errors.csv is escaped, not executed
    assert HOSTILE not in text and "&lt;script&gt;alert" in text
    # it says that it holds per-subject data (what may leave the UK Biobank RAP: docs/ukb-rap.md)
    assert "Contains per-subject data" in text


@pytest.mark.parametrize("layout", ["wide", "long"])
def test_report_counts_equal_the_batch_outputs(tmp_path: Path, layout: str) -> None:
    info = make_batch_folder(tmp_path / "out", layout=layout)
    page = Page(build_report(tmp_path / "out").path.read_text(encoding="utf-8"))
    subjects = json.loads((tmp_path / "out" / "predictions.json").read_text())
    with open(tmp_path / "out" / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len({r["name"] for r in rows}) == len(subjects)
    with open(tmp_path / "out" / "errors.csv", newline="", encoding="utf-8") as fh:
        failed = {r["name"] for r in csv.DictReader(fh)}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    flagged = [s for s in subjects if s["qc"]["status"] in ("warn", "fail") or s["qc"]["flags"]]
    assert page.ids["count-predicted"] == str(len(subjects))
    assert page.ids["count-failed"] == str(len(failed)) == str(run["counts"]["failed"])
    assert page.ids["count-inputs"] == str(run["counts"]["subjects"])
    assert page.ids["count-flagged"] == str(len(flagged)) != "0"
    assert page.ids["count-unfinished"] == "0"
    assert page.ids["wall-time"] == "1 min 1 s" and page.ids["run-status"] == "complete"
    # every flagged and every failed subject is listed and linked to its detail panel
    for s in flagged:
        assert s["name"] in page.ids["flagged"]
        for f in s["qc"]["flags"]:
            assert f in page.ids["flagged"]
    for name in failed:
        assert name in page.ids["failed"]
    details = [k for k in page.ids if k.startswith("subject-")]
    assert len(details) >= len(flagged) + len(failed)
    fail_panel = page.ids["subject-f0"]  # "fail" verdicts come first
    assert "fail" in fail_panel and "fat_water_swap:station=3" in fail_panel
    # statistics: the table's numbers are those of the outputs
    stats = page.ids["statistics"]
    for key in subjects[0]["targets"]:
        t0 = subjects[0]["targets"][key]
        v = np.array([s["targets"][key]["value"] for s in subjects if s["targets"][key]["value"] is not None])
        w = np.array([s["targets"][key]["ci_high"] - s["targets"][key]["ci_low"] for s in subjects
                      if s["targets"][key]["ci_high"] is not None])
        want = f"{key} {t0['unit']} {v.size} {v.mean():.4g} {v.std(ddof=1):.4g} {v.min():.4g}"
        assert want in stats, (want, stats)
        assert f"{np.median(v):.4g}" in stats and f"{np.median(w):.4g}" in stats
    assert "weight_kg kg 36 " in stats  # one subject without a finite weight
    # the module's identity and intended use, and the published accuracy beside the histograms
    spec = info["spec"]
    assert spec.digest in page.ids["modules"] and spec.intended_use in page.ids["modules"]
    assert "validation (holdout 0.2): n=400" in page.ids["targets"]
    assert "synthetic drawings" in page.ids["synthetic-warning"]


def test_report_without_qc_columns_says_qc_was_not_recorded(tmp_path: Path) -> None:
    _, page, _ = _report(tmp_path, qc=False, failed=0)  # qc_status/qc_flags columns present but empty
    assert page.ids["count-flagged"] == "not recorded"
    assert "QC was not recorded" in page.ids["flagged"]
    assert "No subject failed" in page.ids["failed"]


def test_report_limits_thumbnails_and_listed_rows(tmp_path: Path) -> None:
    make_batch_folder(tmp_path / "out", n=60, images=6)
    result = build_report(tmp_path / "out", tmp_path / "r.html", thumbnails=2, max_listed=3, sample=5)
    page = Page(result.path.read_text(encoding="utf-8"))
    assert result.thumbnails == 2
    assert "Showing the first 3 of" in page.ids["flagged"]
    assert len([k for k in page.ids if k.startswith("subject-s")]) == 5


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no run.json"):
        build_report(tmp_path)
    with pytest.raises(ReportError, match="is not a folder"):
        build_report(tmp_path / "missing")
    (tmp_path / "run.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ReportError, match="unreadable run.json"):
        build_report(tmp_path)


def test_missing_matplotlib_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_batch_folder(tmp_path / "out")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=re.escape(extra_hint("report"))):
        build_report(tmp_path / "out")


def test_target_columns_pairs_the_four_columns() -> None:
    cols = ["name", "a.x_mean_in_L", "a.x_variance_in_L", "a.x_ci_low_in_L", "a.x_ci_high_in_L", "y_mean_in_kg"]
    (t,) = target_columns(cols)
    assert (t.key, t.unit, t.name, t.high) == ("a.x", "L", "x", "a.x_ci_high_in_L")


def test_report_cli(tmp_path: Path) -> None:
    from mimir.cli import app

    make_batch_folder(tmp_path / "out")
    res = runner.invoke(app, ["report", str(tmp_path / "out"), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "37 predicted, 3 failed" in res.output and (tmp_path / "r.html").is_file()
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "is not a folder" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_batch_report_end_to_end(tmp_path: Path) -> None:
    """mimir batch --report on synthetic zips (one broken): the report matches the outputs written."""
    from mimir.cli import app
    from mimir.synth import generate_subject

    for seed in (1, 2, 3):
        generate_subject(tmp_path / "in", seed, small=True)
    generate_subject(tmp_path / "in", 4, variant="truncated", small=True)
    out = tmp_path / "out"
    res = runner.invoke(app, ["batch", str(tmp_path / "in"), "-o", str(out), "-m", "phantom-demo", "--workers", "1",
                              "--device", "cpu", "--report"])
    assert res.exit_code == 2, res.output  # one subject failed
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    assert not page.problems
    run = json.loads((out / "run.json").read_text())
    assert page.ids["count-predicted"] == str(run["counts"]["predicted"]) == "3"
    assert page.ids["count-failed"] == str(run["counts"]["failed"]) == "1"
    assert "truncated" in page.ids["failed"]
    # the sampled subjects' previews come from the images the batch decoded
    previews = [a for t, a in page.tags if t == "img" and "preview" in (a.get("class") or "")]
    assert len(previews) == 3


def test_report_of_a_run_in_progress(tmp_path: Path) -> None:
    """Only run.json yet (no predictions.csv, no errors.csv): a report with zero counts, not an error."""
    (tmp_path / "run.json").write_text(json.dumps({"status": "running", "counts": {"subjects": 5}}), encoding="utf-8")
    result = build_report(tmp_path)
    page = Page(result.path.read_text(encoding="utf-8"))
    assert not page.problems
    assert page.ids["count-inputs"] == "5" and page.ids["count-predicted"] == "0"
    assert page.ids["count-failed"] == "0" and page.ids["run-status"] == "running"


def test_report_of_a_merged_folder(tmp_path: Path) -> None:
    """mimir merge's run.json (modules inside the key, counts with "missing", the shards as sources)."""
    info = make_batch_folder(tmp_path / "shard0")
    merged = tmp_path / "merged"
    merged.mkdir()
    for name in ("predictions.csv", "predictions.json", "errors.csv"):
        (merged / name).write_bytes((tmp_path / "shard0" / name).read_bytes())
    run = {"format": "mimir-batch-merge/1", "mimir_version": "0.1.0", "sources": [str(tmp_path / "shard0")],
           "key": {"pipeline_version": "mimir-v1", "modules": [info["spec"].identity()], "level": 0.95},
           "key_digest": "cd" * 32, "counts": {"subjects": 41, "predicted": 37, "failed": 3, "missing": 1}}
    (merged / "run.json").write_text(json.dumps(run), encoding="utf-8")
    result = build_report(merged)
    page = Page(result.path.read_text(encoding="utf-8"))
    assert page.ids["count-inputs"] == "41" and page.ids["count-unfinished"] == "1"
    assert page.ids["count-predicted"] == "37" and page.ids["run-status"] == "merged"
    assert info["spec"].digest in page.ids["modules"]
    assert result.thumbnails == 4  # the previews found through the shard's subjects.csv


def test_a_damaged_cell_counts_as_missing(tmp_path: Path) -> None:
    make_batch_folder(tmp_path / "out", qc=False, failed=0)
    path = tmp_path / "out" / "predictions.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    col = header.index("height_cm_mean_in_cm")
    cells = lines[5].split(",")
    cells[col] = "not-a-number"
    lines[5] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    page = Page(build_report(tmp_path / "out").path.read_text(encoding="utf-8"))
    assert "height_cm cm 39 " in page.ids["statistics"]  # 40 subjects, one damaged value
    assert "1 subject(s) without a finite value" in page.ids["targets"]


def test_report_from_another_folder_finds_the_previews(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """subjects.csv holds absolute paths: a batch given relative paths, reported from elsewhere, keeps its previews."""
    from mimir.cli import app
    from mimir.synth import generate_subject

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for seed in (1, 2):
        generate_subject(work / "small", seed, small=True)
    monkeypatch.chdir(work)
    res = runner.invoke(app, ["batch", "small", "-o", "out1", "-m", "phantom-demo", "--workers", "1",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with open(work / "out1" / "subjects.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["path"]) for r in rows] == [work / "small" / f"100000{s}_20201_2_0.zip" for s in (1, 2)]
    monkeypatch.chdir(elsewhere)
    result = build_report(work / "out1", elsewhere / "r.html")
    assert result.thumbnails == 2
    assert "no preview" not in (elsewhere / "r.html").read_text(encoding="utf-8")
