"""``simlb profile``: the GPU profiler's command group (``sim.profile.cli``)."""

from __future__ import annotations

from sim.profile.cli import profile as command

__all__ = ["command"]
