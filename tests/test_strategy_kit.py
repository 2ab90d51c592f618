"""The strategy author kit: ``sim.testing``, the guide's code, and third-party strategies
loaded from the ``simlb.strategies`` entry-point group."""

from __future__ import annotations

import re
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

import sim.build  # bound to the real registry before a test patches sim.policy.base
import sim.policy.base
import sim.registry
import sim.runner
from sim.policy.base import Strategy, StrategyParams, strategies
from sim.policy.least_loaded import LeastLoaded
from sim.registry import Registry
from sim.testing import REQUEST, check_strategy, make_view, run_tiny_cluster, tiny_scenario

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "writing-a-strategy.md"


def _guide_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)


def test_the_guides_strategy_and_its_test_run(monkeypatch):
    """docs/writing-a-strategy.md: the strategy is under 50 lines, registers itself, and its
    test passes (run here against a fresh registry, as if it were the package ``mypkg``)."""
    strategy_code, test_code = _guide_blocks()
    assert len(strategy_code.splitlines()) < 50
    fresh: Registry[type[Strategy]] = Registry("strategy")
    monkeypatch.setattr(sim.policy.base, "strategies", fresh)
    module = types.ModuleType("mypkg.slots")
    exec(compile(strategy_code, "mypkg/slots.py", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "mypkg", types.ModuleType("mypkg"))
    monkeypatch.setitem(sys.modules, "mypkg.slots", module)
    assert fresh.names() == ["free_slots"]
    tests: dict = {}
    exec(compile(test_code, "mypkg/tests/test_slots.py", "exec"), tests)
    ran = [f() for name, f in tests.items() if name.startswith("test_")]
    assert len(ran) == 3


class _Plugin(Strategy):
    """Always the last accepting node (a stand-in for a third-party strategy)."""

    def choose(self, request, view):
        return view.accepting_ids()[-1]


def _fake_entry_points(monkeypatch, eps: dict[str, list[EntryPoint]]) -> None:
    monkeypatch.setattr(sim.registry, "entry_points", lambda group: eps.get(group, []))


def test_a_class_entry_point_registers_under_its_name(monkeypatch):
    """An entry point ``name = "pkg.module:Class"`` in ``simlb.strategies`` makes the class
    available under ``name`` without editing simlb."""
    plugin = types.ModuleType("fake_plugin")
    plugin.Plugin = _Plugin  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_plugin", plugin)
    _fake_entry_points(monkeypatch, {"simlb.strategies": [
        EntryPoint("last_node", "fake_plugin:Plugin", "simlb.strategies")]})
    registry: Registry[type[Strategy]] = Registry("strategy", strategies.entry_point_groups)
    assert registry.get("last_node") is _Plugin
    assert "last_node" in registry.names()
    assert "simlb.strategies" in strategies.entry_point_groups


def test_a_module_entry_point_runs_its_decorators(monkeypatch, tmp_path):
    """An entry point naming a module imports it; its ``register`` decorators do the rest."""
    registry: Registry[type[Strategy]] = Registry("strategy", ("simlb.strategies",))
    holder = types.ModuleType("kit_holder")
    holder.registry = registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kit_holder", holder)
    (tmp_path / "kit_plugin_module.py").write_text(
        "import kit_holder\n"
        "from sim.policy.least_loaded import LeastLoaded\n"
        "kit_holder.registry.register('decorated')(LeastLoaded)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "kit_plugin_module", raising=False)
    _fake_entry_points(monkeypatch, {"simlb.strategies": [
        EntryPoint("anything", "kit_plugin_module", "simlb.strategies")]})
    assert registry.get("decorated") is LeastLoaded
    assert registry.names() == ["decorated"]


def test_a_broken_entry_point_names_itself(monkeypatch):
    _fake_entry_points(monkeypatch, {"simlb.strategy": [
        EntryPoint("broken", "no_such_module_xyz:Thing", "simlb.strategy")]})
    registry: Registry[type[Strategy]] = Registry("strategy")
    with pytest.raises(ImportError, match="entry point 'broken'"):
        registry.get("anything")


def test_check_strategy_passes_builtins_and_names_what_is_broken():
    check_strategy(LeastLoaded)

    class Wrong(Strategy):
        """Picks node 0 even when it does not accept."""

        def choose(self, request, view):
            return 0

    with pytest.raises(AssertionError, match="not accepting"):
        check_strategy(Wrong)

    class Moody(Strategy):
        """Picks at random from an unseeded generator."""

        def choose(self, request, view):
            ids = view.accepting_ids()
            return ids[np.random.default_rng().integers(len(ids))]

    with pytest.raises(AssertionError, match=r"same seed, different choices|not an int"):
        check_strategy(Moody)

    class Silent(Strategy):
        def choose(self, request, view):
            return view.accepting_ids()[0]

    with pytest.raises(AssertionError, match="no docstring"):
        check_strategy(Silent)


def test_make_view_builds_the_described_snapshot():
    view = make_view(inflight=(1, 2), queued=(3, 0), kv=(50, 0), accepting=(False, True))
    assert view.n_nodes == 2 and view.accepting_ids() == [1]
    assert view.kv_utilization(0) == 0.5 and view.queue_length(0) == 3
    assert view.telemetry_age_s == pytest.approx(0.5)
    assert REQUEST.prompt_tokens == 100


def test_run_tiny_cluster_runs_an_unregistered_class():
    """The harness runs any Strategy class, registered or not, and returns the summary."""

    class Second(Strategy):
        """The second accepting node when there is one."""

        class Params(StrategyParams):
            pass

        def choose(self, request, view):
            ids = view.accepting_ids()
            return ids[1] if len(ids) > 1 else ids[0]

    summary = run_tiny_cluster(Second)
    assert summary["requests"]["measured"]["completed"] > 100
    three = tiny_scenario(duration_s=20.0)
    three["cluster"]["node_groups"][0]["count"] = 3
    assert run_tiny_cluster(LeastLoaded, scenario=three)["requests"]["measured"]["arrived"] > 50
