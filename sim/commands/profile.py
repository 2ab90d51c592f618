"""``simlb profile``: the GPU profiler's command group (``sim.profile.cli``), plus ``derive``
(``sim.calibration.aic.cli``: profiles from aiconfigurator-core's measured tables)."""

from __future__ import annotations

from sim.calibration.aic.cli import derive_cmd
from sim.profile.cli import profile as command

command.add_command(derive_cmd)

__all__ = ["command"]
