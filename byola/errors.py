"""The one exception type for mistakes a user can fix (floor 0: imports nothing from byola).

Library code raises :class:`UsageError` for bad option values, missing inputs, unknown model names, recipe errors
and the like; the ``byola`` command prints it as one line (``byola COMMAND: error: ...``) and exits with status 2,
without a traceback (``--debug`` or ``BYOLA_DEBUG=1`` shows it). It subclasses ``ValueError`` so callers that
already catch ``ValueError`` keep working.
"""
from __future__ import annotations


class UsageError(ValueError):
    """A problem with what the user asked for; ``str()`` names the problem and, after ``fix``, how to fix it."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}: {fix}" if fix else problem)
