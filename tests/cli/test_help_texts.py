"""Every command's --help shows its help texts whole: nothing in brackets eaten by Rich markup, defaults shown.

The commands are taken from the Typer app itself, so a command added later is
checked without touching this file.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import typer
from typer.models import ArgumentInfo, OptionInfo
from typer.testing import CliRunner

from mimir.cli import app
from mimir.cli.app import escape_help

runner = CliRunner()
#: Rich style tags a help text may use on purpose; they are the only brackets that may vanish.
STYLE_TAG = re.compile(r"\[/?(bold|dim|italic|green|red|yellow)?\]")
BRACKETED = re.compile(r"\[[^\[\]]*\]|\([^()]*\)")


def _flat(text: str) -> str:
    """Rendered help without box-drawing characters, white space made single spaces."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _commands() -> list[tuple[str, str, list[tuple[str, Any]]]]:
    """(name, raw help, [(option name, OptionInfo/ArgumentInfo)]) of every registered, visible command."""
    found = []
    infos = [("", info) for info in app.registered_commands]
    for group in app.registered_groups:  # command groups (mimir rap ...): their commands as "rap plan"
        infos += [(f"{group.name} ", info) for info in group.typer_instance.registered_commands]
    for prefix, info in infos:
        callback = info.callback
        assert callback is not None
        name = prefix + (info.name or callback.__name__.replace("_", "-"))
        if info.hidden:
            continue
        raw = info.help or inspect.getdoc(callback) or ""
        params = []
        for pname, p in inspect.signature(callback).parameters.items():
            if isinstance(p.default, (OptionInfo, ArgumentInfo)) and not getattr(p.default, "hidden", False):
                params.append((pname, p.default))
        found.append((name, raw, params))
    return found


COMMANDS = _commands()


def test_every_registered_command_is_covered() -> None:
    assert {name.split()[0] for name, _, _ in COMMANDS} == set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert len(COMMANDS) >= 13


@pytest.mark.parametrize(("name", "raw", "params"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_help_keeps_every_bracket_and_shows_defaults(name: str, raw: str, params: list[tuple[str, Any]]) -> None:
    r = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "2000"})
    assert r.exit_code == 0, r.output
    shown = _flat(r.stdout)
    texts = [raw] + [p.help or "" for _, p in params]
    for text in texts:
        plain = _flat(STYLE_TAG.sub("", text))
        for part in BRACKETED.findall(plain):
            assert part in shown, f"mimir {name} --help lost {part!r} of {text!r}"
    for pname, p in params:
        if not isinstance(p, OptionInfo) or p.show_default is False:
            continue
        default = p.default
        if default is None or default is ... or isinstance(default, bool) or default in ([], ""):
            continue
        assert f"[default: {default}]" in shown, f"mimir {name} --help: --{pname} does not show its default"


def test_escape_keeps_styles_and_shows_everything_else() -> None:
    assert escape_help("[bold]x[/] pip install 'ukb-mimir[report]'") == "[bold]x[/] pip install 'ukb-mimir\\[report]'"
    assert escape_help("CSVs [default: mimir-demo]") == "CSVs \\[default: mimir-demo]"
    assert escape_help("a [0, 100] interval; [A-Z]") == "a [0, 100] interval; [A-Z]"  # not tags: left alone
    assert escape_help(None) is None


def test_synth_help_says_how_to_give_the_folder_and_where_the_variants_are(tmp_path: Any) -> None:
    shown = _flat(runner.invoke(app, ["synth", "--help"], env={"COLUMNS": "2000"}).stdout)
    assert "Usage: mimir synth [OPTIONS] [FOLDER]" in shown
    assert "give it here or as the argument FOLDER" in shown and "see below" not in shown
    assert "the variants are listed above" in shown and shown.index("Variants: rescan") < shown.index("--variant")
    # and the positional spelling the help promises does work
    r = runner.invoke(app, ["synth", str(tmp_path / "data"), "--small"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "data" / "1000000_20201_2_0.zip").is_file()
