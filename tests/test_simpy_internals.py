"""The SimPy internals simlb relies on, checked so that a SimPy release that changes them
fails here, loudly, rather than in a wrong result (issue 14.2).

``sim.model.node.LateTimeout`` pushes its event onto ``Environment._queue`` itself, as
``(time, priority, event id, event)`` with ``next(env._eid)``, to give node iterations a
lower priority than arrivals at the same instant; ``sim.runner`` reads ``_eid`` to count the
events a run scheduled. pyproject.toml bounds SimPy below 5 for the same reason.
"""

from __future__ import annotations

import itertools

import simpy
from simpy.events import NORMAL, Timeout

from sim.model.node import LATE, LateTimeout


def test_environment_has_the_private_fields_simlb_uses() -> None:
    env = simpy.Environment()
    assert isinstance(env._queue, list)
    assert isinstance(env._eid, itertools.count)
    assert env._now == 0.0
    Timeout(env, 1.5)
    when, priority, eid, event = env._queue[0]
    assert (when, priority) == (1.5, NORMAL) and isinstance(eid, int)
    assert isinstance(event, Timeout)


def test_late_timeout_fires_after_same_time_events() -> None:
    """A node event at the same instant as an arrival is processed after it, whatever the
    order they were scheduled in."""
    env = simpy.Environment()
    order: list[str] = []
    LateTimeout(env, 1.0, lambda _e: order.append("node"))
    Timeout(env, 1.0).callbacks.append(lambda _e: order.append("arrival"))
    LateTimeout(env, 0.5, lambda _e: order.append("early node"))
    env.run()
    assert order == ["early node", "arrival", "node"]
    assert env.now == 1.0 and LATE > NORMAL
