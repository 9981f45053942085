"""The Typer application object and the shared error handling of all commands."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mimir import __version__
from mimir.errors import EXIT_ERROR, MimirError

app = typer.Typer(
    name="mimir",
    help="Inference engine for UK Biobank neck-to-knee body MRI (field 20201).",
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


def report_error(message: str) -> None:
    """Print one error line to stderr."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def report_warning(message: str) -> None:
    """Print one warning line to stderr."""
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide warnings about repaired irregularities."),
) -> None:
    """Inference engine for UK Biobank neck-to-knee body MRI (field 20201)."""
    _setup_logging(quiet)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mimir")
