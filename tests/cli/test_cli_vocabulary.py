"""One CLI vocabulary: help texts, usage errors (exit 1, one line), literal printing, predict's inputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimir.cli import app

runner = CliRunner()
COMMANDS = ["predict", "batch", "merge", "demo", "preprocess", "synth", "train", "fetch-weights", "list-targets",
            "explain", "report", "qc", "fit-reference", "rap", "evaluate", "calibrate", "age-gap", "change"]
#: commands of the command groups (mimir rap ...)
SUBCOMMANDS = [["rap", "plan"], ["rap", "run-shard"], ["rap", "collect"]]
FORBIDDEN = ("<bool>", "<list[", "<int", "<float", "<str>", "<path>", "{")


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": src, "COLUMNS": "200"}


def test_every_help_shows_placeholders_not_python_types() -> None:
    import typer

    assert set(typer.main.get_command(app).commands) == set(COMMANDS)  # type: ignore[attr-defined]
    for args in ([], *([c] for c in COMMANDS), *SUBCOMMANDS):
        r = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, (args, r.stdout)
        for bad in FORBIDDEN:
            assert bad not in r.stdout, (args, bad, r.stdout)
        assert "Exit codes: 0 everything done; 1 the run could not proceed" in " ".join(r.stdout.split()), args
        if args and args != ["rap"]:  # a command group's usage is click's own (COMMAND [ARGS]...)
            usage = next(ln.strip() for ln in r.stdout.splitlines() if "Usage:" in ln)
            # one style: [OPTIONS] then UPPER-CASE placeholders, '...' when repeatable, [...] when optional
            assert re.fullmatch(
                r"Usage: mimir [a-z-]+( [a-z-]+)? \[OPTIONS\]( \[?[A-Z][A-Za-z_.]*(\.\.\.)?\]?)*", usage
            ), usage
            assert "[[" not in usage and "]..." not in usage, usage


def test_every_command_names_its_output_option_alike() -> None:
    for cmd in ("predict", "batch", "merge", "demo", "preprocess", "synth", "train", "evaluate", "calibrate", "age-gap", "change"):
        r = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert "--output" in r.stdout and "-o" in r.stdout, cmd
        assert "--out " not in r.stdout, cmd  # the old spelling is a hidden alias


def test_old_output_spelling_still_works(tmp_path: Path) -> None:
    r = runner.invoke(app, ["synth", "-o", str(tmp_path / "a"), "--small", "--seed", "3"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "a" / "1000003_20201_2_0.zip").is_file()
    r = runner.invoke(app, ["synth", str(tmp_path / "b"), "--small", "--seed", "3"])  # positional, as before
    assert r.exit_code == 0 and (tmp_path / "b" / "1000003_20201_2_0.zip").is_file()
    r = runner.invoke(app, ["synth", "--small"])
    assert r.exit_code == 1 and "missing option -o/--output" in r.stderr
    r = runner.invoke(app, ["preprocess", str(tmp_path / "a" / "1000003_20201_2_0.zip"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.stderr  # preprocess's old --out
    assert (tmp_path / "c" / "1000003_20201_2_0.npy").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predcit"], "No such command 'predcit'"),
        (["predict", "--bogus", "x.zip"], "No such option: --bogus"),
        (["predict", "--ci", "abc", "x.zip"], "Invalid value for '--ci'"),
        (["batch", "in", "-o", "out", "--workers", "0"], "--workers"),
        (["predict"], "Missing argument"),
    ],
)
def test_usage_errors_exit_1_with_one_line(args: list[str], message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "mimir", *args], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "--help" in lines[0]


def test_messages_are_printed_literally(capsys: pytest.CaptureFixture[str]) -> None:
    from mimir.cli.app import report_error, report_warning, say

    report_warning("install it: pip install 'ukb-mimir[ray]'")
    report_error("/data/[red]/x.zip: bad value [nan, nan]")
    say("wrote 1 subject(s) to out[bold].csv")
    out, err = capsys.readouterr()
    assert "pip install 'ukb-mimir[ray]'" in err
    assert "/data/[red]/x.zip: bad value [nan, nan]" in err
    assert "out[bold].csv" in out


def test_gpu_option_parsing() -> None:
    from mimir.cli.app import parse_gpus
    from mimir.errors import UsageError

    assert parse_gpus("0,1") == [0, 1] and parse_gpus("3", single=True) == [3] and parse_gpus(None) is None
    for text, single in (("a", False), ("-1", False), ("0,1", True), (",", False)):
        with pytest.raises(UsageError):
            parse_gpus(text, single=single)


def test_predict_searches_folders_like_batch_and_refuses_duplicate_names(tmp_path: Path) -> None:
    import numpy as np

    from mimir.batch.inputs import discover
    from mimir.cli.predict_cmd import expand_inputs

    img = np.zeros((3, 256, 256), np.uint8)
    (tmp_path / "in" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    np.save(tmp_path / "in" / "1000001_20201_2_0.npy", img)
    np.save(tmp_path / "in" / "deep" / "er" / "1000002_20201_2_0.npy", img)
    np.save(tmp_path / "other" / "1000001_20201_2_0.npy", img)
    (tmp_path / "in" / "notes.zip").write_bytes(b"x")  # not a subject zip name: ignored by both
    files, refused = expand_inputs([str(tmp_path / "in")])
    assert files == sorted(f.path for f in discover(tmp_path / "in").files)
    assert [Path(f).name for f in files] == ["1000001_20201_2_0.npy", "1000002_20201_2_0.npy"] and refused == []

    files, refused = expand_inputs([str(tmp_path / "in"), str(tmp_path / "other" / "1000001_20201_2_0.npy")])
    assert [Path(f).name for f in files] == ["1000002_20201_2_0.npy"]
    assert len(refused) == 2
    a, b = str(tmp_path / "in" / "1000001_20201_2_0.npy"), str(tmp_path / "other" / "1000001_20201_2_0.npy")
    assert {p for p, _ in refused} == {a, b}
    assert all((b if p == a else a) in reason for p, reason in refused)


def test_train_intended_use_is_research_or_synthetic_demo(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", str(tmp_path), str(tmp_path / "t.csv"), "-o", str(tmp_path / "m"),
                            "--intended-use", "for fun"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: --intended-use must be one of research, synthetic-demo, got 'for fun'"


def test_global_quiet_flag_is_accepted_after_the_command() -> None:
    from mimir.cli.app import global_flags_first

    assert global_flags_first(["qc", "-q", "swap/"]) == ["-q", "qc", "swap/"]
    assert global_flags_first(["predict", "a.zip", "--quiet", "-m", "x"]) == ["--quiet", "predict", "a.zip", "-m", "x"]
    assert global_flags_first(["qc", "swap/", "--", "-q"]) == ["qc", "swap/", "--", "-q"]  # after -- it is a name
    assert global_flags_first(["-q", "qc", "x"]) == ["-q", "qc", "x"]
