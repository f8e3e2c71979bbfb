"""Errors the user can fix: bad input, an unknown name, a changed dataset.

The command line prints such an error as one line (`error: <message>`) and exits 2; any other
exception is a bug and keeps its traceback (`govrisk.cli`). Library callers catch them as the
built-in types they also are: `ValueError` for bad input, `KeyError` for an unknown name.

Besides these, the CLI treats the `OSError`s that name a path the user gave as user errors
(`USER_OS_ERRORS`: a missing file or folder, one that already exists, a permission refused).
"""

from __future__ import annotations

__all__ = ["USER_OS_ERRORS", "DatasetChanged", "InvalidInput", "UnknownName", "UserError", "user_message"]

USER_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


class UserError(Exception):
    """Input the user can fix; its message names the path, config, tag or value and what to do."""


class InvalidInput(UserError, ValueError):
    """A file, argument or value that breaks a rule (a bad cell, a value out of range)."""


class UnknownName(UserError, KeyError):
    """An unknown model tag, study or table."""

    def __str__(self) -> str:  # KeyError quotes its message: "'no model …'"
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class DatasetChanged(InvalidInput):
    """A dataset's files no longer match the content hash in its manifest."""


def user_message(exc: BaseException) -> str | None:
    """The one-line message for a user error, or None when `exc` is not one (a bug: keep its traceback)."""
    if isinstance(exc, (UserError, *USER_OS_ERRORS)):
        if isinstance(exc, OSError) and not isinstance(exc, UserError) and exc.filename and exc.strerror:
            # an OSError raised by open() & co. carries its path apart from its message
            return f"{exc.strerror}: {exc.filename}"
        text = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
        return text or type(exc).__name__
    return None
