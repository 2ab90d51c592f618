"""Sweeps and capacity planning over one scenario (``simlb sweep``, ``simlb capacity``).

A *point* is the scenario with some ``--set``-style overrides; a *task* is one point run for one
strategy and one replication. Replication ``k`` uses seed ``seed + k`` at every point and for
every strategy (common random numbers), exactly as ``simlb run`` does. Tasks run on an executor
(``executors``: in-process, local worker processes, or Ray), each finished task is cached in the
output folder under the hash of its resolved scenario (``cache``), and the results become one
tidy table (``table``) and a report (``report``); ``capacity`` searches the highest sustainable
rate or the fewest nodes meeting SLOs on top of the same machinery.
"""

from sim.errors import InputError


class SweepError(InputError):
    """Bad sweep or capacity input: a grid key or value, an SLO metric, a price, an option."""


__all__ = ["SweepError"]
