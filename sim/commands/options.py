"""Option callbacks shared by ``sim.cli`` and the sub-commands in ``sim.commands``.

They live here, below both, so a sub-command never imports ``sim.cli`` (which imports the
sub-commands): the command-line layer has no import cycle.
"""

from __future__ import annotations

from pathlib import Path

import click


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
