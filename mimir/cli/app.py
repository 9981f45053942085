"""The Typer application object and the shared error handling of all commands."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors click as typer._click; older versions use click itself
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx  # type: ignore[no-redef]

from mimir import __version__
from mimir.errors import EXIT_ERROR, MimirError

#: Shown at the end of every command's --help (and of ``mimir --help``).
EXIT_CODES_HELP = (
    "Exit codes: 0 everything done; 1 the run could not proceed (usage error: unknown command, "
    "bad option or value; missing module; or every input failed); 2 some inputs failed (the others "
    "were written); 130 interrupted."
)


def _plain_type(param: Any, ctx: Any) -> str | None:
    """The value placeholder shown in --help: the metavar, or a word (N, NUMBER, PATH, TEXT), never a Python type."""
    if getattr(param, "is_flag", False) or getattr(param, "param_type_name", "") == "argument":
        return None  # flags take no value; an argument's name is its placeholder
    if param.metavar is not None:
        return str(param.metavar)
    desc = param.type_descriptor
    if desc.is_choice:
        return "|".join(str(c) for c in desc.choices or ())
    annotation = desc.annotation
    args = getattr(annotation, "__args__", None)
    if desc.is_list and args:
        annotation = args[0]
    if desc.is_path:
        return "PATH"
    words = {bool: None, int: "N", float: "NUMBER", str: "TEXT"}
    return words.get(annotation, "VALUE") if isinstance(annotation, type) else "VALUE"


def _usage_name(param: Any) -> str:
    """An argument in the usage line: ``ZIP...`` when required, ``[NAMES]...`` when optional."""
    name = str(param.display_name_raw)
    repeat = param.nargs != 1 and not name.endswith("...")
    name = name if param.required else f"[{name}]"
    return name + ("..." if repeat else "")


def _plain_help_types() -> None:
    """Make typer's --help show placeholders (N, PATH, ZIP...) instead of Python types (<int>, <list[str]>).

    typer >= 0.2x prints a type column such as ``<bool>`` or ``<int range>``
    and usage lines such as ``{INPUT}...``; mimir's help shows what to type.
    ``tests/cli/test_help.py`` checks every command's help.
    """
    from typer import core

    base = getattr(core, "_TyperParameter", None)
    if base is not None and hasattr(base, "display_type"):
        base.display_type = _plain_type  # type: ignore[method-assign]
    if hasattr(core.TyperArgument, "_usage_display_name"):
        core.TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]


_plain_help_types()

_MARKUP_TAG = re.compile(r"(\\*)\[([a-z#/@][^[]*?)\]")


def escape_help(text: str | None) -> str | None:
    """``text`` with every ``[...]`` that is not a Rich style tag escaped, so that --help shows it.

    Help texts may use Rich styles (``[bold]...[/]``); anything else in square
    brackets (``'ukb-mimir[report]'``, ``[default: mimir-demo]``) would be read
    as an unknown tag and vanish from the rendered help.
    """
    if not text:
        return text
    from rich.style import Style

    def fix(match: re.Match[str]) -> str:
        backslashes, tag = match.group(1), match.group(2)
        if backslashes:  # already escaped
            return match.group(0)
        if tag.startswith("/"):
            return match.group(0)
        try:
            Style.parse(tag)
        except Exception:  # noqa: BLE001 - rich raises StyleSyntaxError; not a style: show it literally
            return "\\" + match.group(0)
        return match.group(0)

    return _MARKUP_TAG.sub(fix, text)


def _escape_command_help(command: Any) -> None:
    """Escape the help, epilog and option help texts of ``command`` and its subcommands (see :func:`escape_help`)."""
    command.help = escape_help(command.help)
    command.epilog = escape_help(command.epilog)
    for param in getattr(command, "params", ()):
        if getattr(param, "help", None):
            param.help = escape_help(param.help)
    for sub in getattr(command, "commands", {}).values():
        _escape_command_help(sub)


#: Options of ``mimir`` itself that are also accepted after the command (``mimir qc -q ...``).
GLOBAL_FLAGS = ("-q", "--quiet")


def global_flags_first(args: Sequence[str]) -> list[str]:
    """``args`` with :data:`GLOBAL_FLAGS` given after the command moved before it (up to a ``--``)."""
    args = list(args)
    command = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if command is None:
        return args
    end = args.index("--") if "--" in args else len(args)
    moved = [a for a in args[command + 1 : end] if a in GLOBAL_FLAGS]
    if not moved:
        return args
    rest = [a for a in args[command + 1 : end] if a not in GLOBAL_FLAGS]
    return [*args[:command], *moved, args[command], *rest, *args[end:]]


class _MimirGroup(TyperGroup):
    """The command group, with usage errors as one ``error:`` line and exit code 1.

    Click exits 2 on a usage error, but mimir's 2 means "some inputs failed";
    an unknown command, an unknown option or a bad value exits 1 instead.
    Help texts are escaped once the commands are built (:func:`escape_help`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _escape_command_help(self)

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = global_flags_first(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except _cx.NoArgsIsHelpError as exc:
            text = exc.format_message()  # typer's rich help is printed while the error is made; click's is returned
            if text.strip():
                print(text)
            code = 0
        except _cx.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "mimir"
            report_error(f"{exc.format_message()} (see {where} --help)")
            code = EXIT_ERROR
        except _cx.ClickException as exc:
            report_error(exc.format_message())
            code = EXIT_ERROR
        except typer.Abort:
            report_error("interrupted")
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="mimir",
    cls=_MimirGroup,
    help="Inference engine for UK Biobank neck-to-knee body MRI (field 20201).",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

#: Normal output (tables, summaries).
console = Console()
#: Warnings and errors, one line each.
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def one_line(text: str) -> str:
    """``text`` with every run of white space (newlines included) made one space."""
    return " ".join(str(text).split())


def report_error(message: str) -> None:
    """Print one error line to stderr; ``message`` is printed literally (no Rich markup)."""
    err_console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def report_warning(message: str) -> None:
    """Print one warning line to stderr; ``message`` is printed literally (no Rich markup)."""
    err_console.print(f"[yellow]warning:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def say(message: str, *, style: str | None = None, stderr: bool = False) -> None:
    """Print a plain line (paths and other user strings included) literally, without Rich markup."""
    (err_console if stderr else console).print(
        message, style=style, markup=False, highlight=False, soft_wrap=True
    )


def pick_output(output: Any, alias: Any, *, required: bool = False) -> Any:
    """The value of ``-o/--output``, or of its hidden old spelling ``--out``; :class:`UsageError` if both or neither (when required)."""
    from mimir.errors import UsageError

    if output is not None and alias is not None and output != alias:
        raise UsageError("give -o/--output once (--out is its old spelling)")
    value = output if output is not None else alias
    if required and value is None:
        raise UsageError("missing option -o/--output", hint="Say where to write the results.")
    return value


def module_option(*, columns: bool) -> Any:
    """The ``-m/--module`` option, declared once for every command that applies modules.

    ``columns``: the command writes prediction columns, whose order follows the modules'.
    """
    order = "repeatable; columns follow this order" if columns else "repeatable"
    return typer.Option(
        None, "-m", "--module", metavar="MODULE",
        help=f"Module name or folder ({order}). Default: every installed module except the synthetic demo.",
        show_default=False,
    )


def volumes_option(what: str) -> Any:
    """The ``--volumes FOLDER`` option of ``preprocess`` and ``batch``; ``what`` ends its help."""
    return typer.Option(
        None, "--volumes", metavar="FOLDER",
        help="Also write the fused 3-D volumes as NIfTI (<zip stem>_<contrast>.nii.gz) and a JSON sidecar here "
        f"(docs/volumes.md; needs the volumes extra). {what}",
        show_default=False,
    )


def contrasts_option() -> Any:
    """The ``--contrasts LIST`` option that goes with :func:`volumes_option`."""
    return typer.Option(
        None, "--contrasts", metavar="LIST",
        help="Volumes to write with --volumes, comma-separated: water, fat, in (in-phase), opp (opposed-phase), "
        "ff (fat fraction), or all [default: water,fat,ff].",
        show_default=False,
    )


def volume_contrasts(volumes: Path | None, contrasts: str | None) -> tuple[str, ...] | None:
    """The contrasts to write (None without ``--volumes``); a UsageError for ``--contrasts`` alone or a bad list."""
    from mimir.errors import UsageError

    if volumes is None:
        if contrasts is not None:
            raise UsageError("--contrasts applies to --volumes only", hint="Add --volumes FOLDER.")
        return None
    from mimir.preprocessing.volumes import parse_contrasts

    return parse_contrasts(contrasts)


def parse_gpus(text: str | None, *, single: bool = False) -> list[int] | None:
    """``--gpu`` text: ``"0"`` -> [0], ``"0,1"`` -> [0, 1]; None stays None.

    ``single``: the command runs one inference process (``predict``), so only one index is allowed.
    """
    from mimir.errors import UsageError

    if text is None:
        return None
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--gpu takes GPU indices such as 0 or 0,1, got {text!r}") from None
    if not gpus:
        raise UsageError("--gpu needs at least one GPU index")
    if any(g < 0 for g in gpus):
        raise UsageError(f"--gpu takes GPU indices >= 0, got {text!r}")
    if single and len(gpus) > 1:
        raise UsageError("mimir predict runs on one GPU", hint="Give one index, or use mimir batch for several GPUs.")
    return gpus


def handle_errors(func: F) -> F:
    """Turn a :class:`MimirError` escaping a command into one line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MimirError as exc:
            report_error(str(exc))
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            report_error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


class _WarningLine(logging.Handler):
    """Show the library's log warnings as one ``warning:`` line each."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            report_error(record.getMessage())
        else:
            report_warning(record.getMessage())


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("mimir")
    logger.handlers[:] = [_WarningLine()]
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"mimir {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Hide warnings about repaired irregularities (also accepted after the command)."
    ),
) -> None:
    """Inference engine for UK Biobank neck-to-knee body MRI (field 20201)."""
    _setup_logging(quiet)


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="mimir")
    finally:
        # The command is done and its files are closed. With torch imported, the interpreter's last
        # garbage collections at exit walk every object torch created: 0.4-0.7 s per command, measured.
        # Frozen objects are skipped by them; atexit handlers, buffered output and refcounted objects
        # are finalized as usual.
        import gc

        gc.freeze()
