"""Helpers shared by ``sim.cli`` and the sub-commands in ``sim.commands``: option callbacks
and the one-line error format.

They live here, below both, so a sub-command never imports ``sim.cli`` (which imports the
sub-commands): the command-line layer has no import cycle.
"""

from __future__ import annotations

from pathlib import Path

import click

#: longest error or warning line printed, in characters
MAX_LINE_CHARS = 1000


def one_line(message: str) -> str:
    """``message`` on one printable line: line breaks joined, control and undecodable
    characters (a binary file's bytes) shown as ``?``, cut to ``MAX_LINE_CHARS`` characters."""
    text = " ".join(message.splitlines())
    text = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS - 3] + "..."


def non_empty_path(value: str | None, option: str) -> Path | None:
    """``value`` as a Path; an empty one (which would mean the current folder) is refused.

    Raises:
        click.BadParameter: ``value`` is empty or blank.
    """
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter(f"expected a folder name, got {value!r} (use . for the "
                                 f"current folder)", param_hint=option)
    return Path(value)
