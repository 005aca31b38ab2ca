"""Exceptions that carry a message a user can act on.

The CLI prints them as one line (exit code 2 for :class:`InputError`, 1 for
:class:`RuntimeFailure`); the napari layer shows them as notifications.
"""

from __future__ import annotations


class NapariSamError(Exception):
    """Base class of every error raised on purpose by napari-sam."""

    exit_code = 1


class InputError(NapariSamError, ValueError):
    """Bad input from the user: a file, a prompt, an argument. Exit code 2."""

    exit_code = 2


class ModelError(NapariSamError):
    """A model or checkpoint cannot be loaded or verified. Exit code 1."""

    exit_code = 1


class OutputError(NapariSamError):
    """An output could not be written completely (full disk, I/O error, read-only
    folder); nothing was left behind. Exit code 1."""

    exit_code = 1


class UsageError(NapariSamError, RuntimeError):
    """Methods called in the wrong order (e.g. predict before set_image)."""

    exit_code = 1


class NapariSamWarning(UserWarning):
    """Something the user should know that does not stop the job (a damaged
    cache entry rebuilt, a read-only cache folder). The CLI prints it as one
    line, ``napari-sam: warning: ...``; the napari layer as a notification."""
