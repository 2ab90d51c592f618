"""The exception types the command line maps to exit codes.

``InputError`` (and its subclasses) means the user's input is wrong: the CLI prints its one-line
message and exits with code 2. ``SimulationError`` means the model reached a state it cannot
handle: exit code 1.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: a scenario, a profile, a trace or a command-line value.

    The message names the file, the field path and what was expected, on one line.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        self.detail = message
        parts = [p for p in (source, field) if p]
        super().__init__(": ".join([*parts, message]))


class ScenarioError(InputError):
    """A scenario file (or an override of it) is missing, malformed or inconsistent."""


class ProfileError(InputError):
    """A cost profile is missing, corrupt, or cannot serve the requested configuration."""


class TraceError(InputError):
    """A request-trace file is unreadable or holds a bad value.

    The message names the trace file, the line (1-based, as an editor shows it; ``row`` for
    Parquet) and the column, e.g. ``conv.csv: line 7, column 'ContextTokens': not a number``.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 column: str | None = None, line_label: str = "line"):
        self.line = line
        self.column = column
        where = [f"{line_label} {line}"] if line is not None else []
        where += [f"column {column!r}"] if column is not None else []
        super().__init__(message, source=source, field=", ".join(where) or None)


class UnknownNameError(InputError, KeyError):
    """A registry lookup failed; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return Exception.__str__(self)


class SimulationError(RuntimeError):
    """The model reached a state it cannot handle (a bug or an unsupported combination)."""
