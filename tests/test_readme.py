"""The README's commands are real: every ``mimir ...`` line of its code blocks parses against the CLI.

Each command line is parsed by click's parser through the Typer app (the
command exists, every option exists and takes the value given, the
arguments fit), without running it. Nothing is skipped silently: a line of a
shell code block that is not a ``mimir`` command must be one of the known
other commands, and every registered command must appear in the README.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

try:  # typer >= 0.2x vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from mimir.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The first word of a shell command in the README that is not mimir's.
OTHER_PROGRAMS = {"python3", "python", "pip", ".", "sbatch", "source", "cd"}
SET_UP = [
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && mimir demo",
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e ".[test,reference,'
    'ray,report,browser,codecs,volumes,parquet,register]" && python -m pytest',
]


def shell_blocks(text: str) -> list[str]:
    """The bodies of the ```bash / ```sh / ``` code blocks (not ```python)."""
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
            if m.group(1) in ("", "bash", "sh", "shell", "console")]


def simple_commands(block: str) -> list[list[str]]:
    """Every simple command of a block: split into words, comments removed, split at && || ; |."""
    found = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|"):
                if current:
                    found.append(current)
                current = []
            else:
                current.append(word)
    return found


def parse(argv: list[str]) -> None:
    """Parse ``mimir ARGV`` as the CLI would, without running the command; raises click's errors."""
    group = typer.main.get_command(app)
    try:
        with group.make_context("mimir", list(argv)) as ctx:
            rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
            if not rest:
                return
            name, command, args = group.resolve_command(ctx, rest)
            assert command is not None, argv
            with command.make_context(name, args, parent=ctx):
                pass
    except typer.Exit as exc:  # --help, --version
        assert exc.exit_code == 0, argv


def readme_commands() -> list[list[str]]:
    commands = []
    for block in shell_blocks(README.read_text()):
        for words in simple_commands(block):
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value mimir ...
                words = words[1:]
            commands.append(words)
    return commands


COMMANDS = readme_commands()
MIMIR = [w[1:] for w in COMMANDS if w and w[0] == "mimir"]


def test_every_shell_line_is_mimir_or_a_known_program() -> None:
    others = sorted({w[0] for w in COMMANDS if w and w[0] != "mimir"} - OTHER_PROGRAMS)
    assert others == [], f"README commands that are neither mimir nor known: {others}"
    assert len(MIMIR) >= 20


@pytest.mark.parametrize("argv", MIMIR, ids=[" ".join(a)[:60] for a in MIMIR])
def test_readme_command_parses(argv: list[str]) -> None:
    parse(argv)


def test_parser_refuses_what_the_cli_refuses() -> None:
    for bad in (["predcit", "a.zip"], ["predict", "a.zip", "--bogus"], ["batch", "in", "-o"], ["predict", "--ci", "x", "a"]):
        with pytest.raises(click_exceptions.UsageError):
            parse(bad)
    parse(["predict", "a.zip", "-m", "phantom-demo"])
    parse(["--version"])


def test_every_registered_command_is_in_the_readme() -> None:
    group = typer.main.get_command(app)
    used = {argv[0] for argv in MIMIR if argv and not argv[0].startswith("-")}
    assert set(group.commands) - used == set()  # type: ignore[attr-defined]


def test_set_up_commands_are_the_two_and_ci_runs_the_second() -> None:
    text = README.read_text()
    for command in SET_UP:
        assert command in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert SET_UP[1] in ci.splitlines()


def test_the_ukb_rap_page_is_linked_on_the_first_screen() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:40])
    assert "(docs/ukb-rap.md)" in first_screen


def test_docs_pages_named_anywhere_exist() -> None:
    """Every ``docs/NAME.md`` that a help text, message, docstring, script or page names is a real page."""
    named: dict[str, set[str]] = {}
    files = [README, ROOT / "CHANGELOG.md", *ROOT.glob("docs/*.md")]
    for folder in ("mimir", "benchmarks", "scripts", "deploy", "examples"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".sh", ".md", ".json", ".sbatch"}]
    for path in files:
        for page in re.findall(r"docs/([A-Za-z0-9_.-]+?\.md)", path.read_text(errors="replace")):
            named.setdefault(page, set()).add(str(path.relative_to(ROOT)))
    assert "precision.md" in named and "ukb-rap.md" in named  # the scan sees help texts and pages
    missing = {page: sorted(where) for page, where in named.items() if not (ROOT / "docs" / page).is_file()}
    assert missing == {}


def test_links_of_the_readme_and_docs_resolve() -> None:
    """Every relative link of README.md and docs/*.md names a file that exists."""
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path = (page.parent / target).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
