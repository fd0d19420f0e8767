"""The launcher's exception hierarchy.

Every error a user can meet is a `CoiError` subclass carrying one actionable sentence
(`str(err)`) and, optionally, a `hint` saying what to do. The CLI renders these without a
traceback and maps them to exit codes.
"""

from __future__ import annotations


class CoiError(Exception):
    """Base of every error the launcher reports to the user."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(CoiError):
    """The command line is wrong (bad flag value, slot out of range, invalid --env)."""

    exit_code = 2


class ConfigError(CoiError):
    """A configuration file or value is invalid."""


class WorkspaceError(CoiError):
    """The workspace is missing, not a directory, or cannot be mounted."""


class IncusError(CoiError):
    """Incus is missing, not running, not accessible, or refused an operation."""


class IncusUnavailable(IncusError):
    """Incus cannot be reached at all (not installed, not running, socket not accessible)."""


class ImageError(CoiError):
    """An image is missing or an image build failed."""


class SessionError(CoiError):
    """A session or container could not be created, found or managed."""


class HelperError(CoiError):
    """The privileged helper is unreachable or refused a request."""


class Interrupted(CoiError):
    """The user pressed Ctrl-C or the process got SIGTERM/SIGHUP; cleanup has run."""

    exit_code = 130
