"""Every command that writes an output checks the output path before doing any work.

One table row per command with an output option; a command added later is
covered by adding its row. Each row runs against a path under a regular file
(``afile/x``) and against a place nobody may write (``/proc``): one
``error:`` line naming the path, exit code 1, no traceback, and nothing done
(no image decoded into the cache, no file written anywhere).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimir.cli import app
from mimir.synth import generate_subject

runner = CliRunner()

#: command -> its arguments; {zip}, {zips}, {csv}, {batch} are inputs, {out} the output path (a file when the
#: command writes one file, then with its extension).
COMMANDS: dict[str, list[str]] = {
    "predict": ["predict", "{zip}", "-m", "phantom-demo", "-o", "{out}.csv"],
    "batch": ["batch", "{zips}", "-m", "phantom-demo", "--workers", "1", "-o", "{out}"],
    "merge": ["merge", "{batch}", "-o", "{out}"],
    "demo": ["demo", "-o", "{out}"],
    "preprocess": ["preprocess", "{zip}", "-o", "{out}"],
    "synth": ["synth", "--small", "-o", "{out}"],
    "train": ["train", "{zips}", "{csv}", "--members", "1", "-o", "{out}"],
    "explain": ["explain", "{zip}", "-m", "phantom-demo", "-o", "{out}"],
    "report": ["report", "{batch}", "-o", "{out}.html"],
    "qc": ["qc", "{zip}", "-o", "{out}.csv"],
    "evaluate": ["evaluate", "{preds}", "{pheno}", "-o", "{out}"],
    "age-gap": ["age-gap", "{preds}", "{pheno}", "-o", "{out}.csv"],
    "change": ["change", "{preds}", "-o", "{out}.csv"],
}
#: commands whose -o is not a path (so no path to refuse), and why.
NOT_A_PATH = {"calibrate": "its -o is the name of the derived module, installed in MIMIR_HOME"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("inputs")
    subject = generate_subject(root / "zips", 7, small=True)
    (root / "targets.csv").write_text(f"name,weight_kg\n{subject.zip_path.name[:-4]},70\n")
    (root / "batch").mkdir()
    preds = root / "preds.csv"
    r = runner.invoke(app, ["predict", str(subject.zip_path), "-m", "phantom-demo", "-o", str(preds), "--format", "long"])
    assert r.exit_code == 0 and preds.is_file(), r.output
    eid = subject.zip_path.name.split("_")[0]
    (root / "pheno.csv").write_text(f"eid,p21003_i2,p21002_i2\n{eid},61,{subject.truth['weight_kg']}\n")
    return {"zip": str(subject.zip_path), "zips": str(root / "zips"), "csv": str(root / "targets.csv"),
            "batch": str(root / "batch"), "preds": str(preds), "pheno": str(root / "pheno.csv")}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_every_command_with_an_output_option_is_in_the_table() -> None:
    import typer

    group = typer.main.get_command(app)
    with_output = {name for name, cmd in group.commands.items()  # type: ignore[attr-defined]
                   if any("--output" in getattr(p, "opts", ()) for p in cmd.params)}
    assert with_output == set(COMMANDS) | set(NOT_A_PATH)


@pytest.mark.parametrize("place", ["under_a_file", "unwritable"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_output_path_is_one_line_before_any_work(
    command: str, place: str, inputs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("a regular file\n")
    monkeypatch.chdir(work)
    out = "afile/x" if place == "under_a_file" else "/proc/mimir-no-such-place/x"
    args = [a.format(out=out, **inputs) for a in COMMANDS[command]]
    before = _files(work)
    cache = Path(os.environ["MIMIR_CACHE"])

    r = runner.invoke(app, args)

    assert r.exit_code == 1, (args, r.output)
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
    assert "Traceback" not in r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "afile" in errors[0] if place == "under_a_file" else "/proc/mimir-no-such-place" in errors[0], errors
    assert _files(work) == before  # nothing written
    assert not cache.exists() or not any(cache.rglob("*.npy")), "an image was decoded before the output check"
