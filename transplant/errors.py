"""User-facing errors.

Anything the user can fix (a wrong path, an existing output, a bad option) raises
``UserError``; the CLI prints its message on one line and exits with code 2. Everything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input, reported as one line without a traceback."""
