"""Typed exceptions and the CLI's exit codes.

Every error a user can cause is a :class:`MimirError`. Its ``str()`` is one
line: which file, what is wrong, what to do. The CLI prints that line and
exits with :data:`EXIT_ERROR` or :data:`EXIT_PARTIAL`; it never shows a
traceback for these.
"""

from __future__ import annotations

from os import PathLike

#: Everything requested was done.
EXIT_OK = 0
#: The run could not proceed (bad options, nothing usable), or every input failed.
EXIT_ERROR = 1
#: Some inputs failed (each reported), the others were processed and written.
EXIT_PARTIAL = 2


class MimirError(Exception):
    """Base class of all errors that a user can cause.

    Parameters
    ----------
    message:
        What is wrong, without the file name.
    path:
        The file or folder concerned, if any. Only the name the user gave is
        shown (no directories are added), so logs carry no extra identifiers.
    hint:
        What to do about it.
    """

    def __init__(
        self, message: str, path: str | PathLike[str] | None = None, hint: str | None = None
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text = f"{text.rstrip('.')}. {self.hint}"
        return " ".join(text.split())  # always one line


class InputError(MimirError):
    """A subject's input file cannot be turned into an image."""


class NotAZipError(InputError):
    """The file is not a zip archive at all."""


class TruncatedZipError(InputError):
    """The zip archive is cut off or its members are corrupt."""


class NoDicomError(InputError):
    """The zip holds no readable DICOM slices."""


class MissingSeriesError(InputError):
    """The water or fat Dixon series are missing or incomplete."""


class InconsistentStationsError(InputError):
    """Water and fat stations do not describe the same geometry."""


class ImageFileError(InputError):
    """An already made 2-D image (``.npy``) is unreadable or has the wrong shape."""


class ModuleError(MimirError):
    """An inference module is missing, malformed, or fails verification."""


class DownloadError(MimirError):
    """A module download failed or did not verify."""


class UsageError(MimirError):
    """Options that cannot work together, or a missing required resource."""



class GeometryError(InputError):
    """The stations' geometry is impossible for a human body (spacing, placement, gaps)."""
