"""`mimir fetch-weights` without a name, with the packaged manifest and the built-in module present."""

from __future__ import annotations

from typer.testing import CliRunner

from mimir.cli import app

runner = CliRunner()


def test_fetch_all_exits_1_when_modules_needing_a_browser_stay_missing() -> None:
    """No name: the packaged manifest; the four MIMIR modules need a browser, so nothing is installed."""
    r = runner.invoke(app, ["fetch-weights", "--offline"])
    assert r.exit_code == 1, r.output  # as `mimir fetch-weights module_bodycomp` in the same situation
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 4 module(s) not installed (module_bodycomp, module_organs, module_age, "
                           "module_experimental)") and "mimir fetch-weights NAME --from FILE.zip" in last
    r = runner.invoke(app, ["fetch-weights", "module_bodycomp", "--offline"])
    assert r.exit_code == 1


def test_no_module_hint_says_the_real_steps() -> None:
    from mimir.inference.predictor import NO_MODULE_HINT

    assert "need a download in a browser" in NO_MODULE_HINT and "mimir fetch-weights --list" in NO_MODULE_HINT
    assert "mimir fetch-weights NAME --from FILE.zip" in NO_MODULE_HINT
