"""User-facing errors.

Anything the user can fix (a wrong path, an existing output, a bad option) raises
``UserError``; the CLI prints its message on one line and exits with code 2. Everything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input, reported as one line without a traceback."""


def reason(error: BaseException) -> str:
    """A library exception as a clause of a one-line message: its type and first line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
