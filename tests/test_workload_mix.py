"""The request mix: which model each request asks for, and which are sheddable."""

from __future__ import annotations

import numpy as np
import pytest

from sim import app
from sim.errors import ScenarioError
from sim.runner import workload_for
from sim.workload.spec import WorkloadSpec, build_workload

from conftest import scenario_dict, write_scenario

BASE = {
    "arrivals": {"name": "poisson", "params": {"rate_rps": 50.0}},
    "prompt_tokens": {"name": "fixed", "params": {"tokens": 100}},
    "output_tokens": {"name": "fixed", "params": {"tokens": 10}},
}


def test_models_are_drawn_with_their_weights():
    """Each request names a model; shares follow the weights within a few standard errors."""
    spec = WorkloadSpec.model_validate({**BASE, "models": {"small": 3.0, "large": 1.0}})
    w = build_workload(spec, 400.0, seed=5)
    models = w.extra["model"]
    share = float(np.mean(models == "small"))
    se = np.sqrt(0.75 * 0.25 / len(w))
    assert abs(share - 0.75) < 4 * se
    assert set(np.unique(models)) == {"small", "large"}


def test_a_session_keeps_one_model():
    """All turns of a session ask for the same model."""
    spec = WorkloadSpec.model_validate({**BASE, "models": {"a": 1.0, "b": 1.0}, "sessions": {
        "name": "multi_turn", "params": {"turns": {"name": "fixed", "params": {"tokens": 3}},
                                         "think_time_s": 5.0}}})
    w = build_workload(spec, 100.0, seed=2)
    for session in np.unique(w.session_id):
        assert len(set(w.extra["model"][w.session_id == session])) == 1


def test_sheddable_fraction_marks_requests_without_changing_the_stream():
    """The sheddable flags come from their own stream: arrivals and lengths stay the same."""
    plain = build_workload(WorkloadSpec.model_validate(BASE), 100.0, seed=9)
    marked = build_workload(WorkloadSpec.model_validate({**BASE, "sheddable_fraction": 0.3}),
                            100.0, seed=9)
    assert plain.fingerprint() == marked.fingerprint()
    assert abs(float(np.mean(marked.extra["sheddable"])) - 0.3) < 0.05


@pytest.mark.parametrize("models", [{}, {"": 1.0}, {"a": 0.0}, {"a": -1.0}])
def test_bad_model_weights_are_refused(models):
    """Empty mixes, empty names and non-positive weights fail validation."""
    with pytest.raises(ValueError, match="models"):
        WorkloadSpec.model_validate({**BASE, "models": models})


def test_a_model_no_node_serves_is_a_load_error(tmp_path):
    """Asking for a model that no node group serves fails before the run, naming the field."""
    raw = scenario_dict()
    raw["cluster"]["node_groups"][0]["model"] = "llama"
    raw["workload"]["models"] = {"llama": 1.0, "mistral": 1.0}
    with pytest.raises(ScenarioError, match=r"workload\.models: .*mistral.*node_groups"):
        app.load(write_scenario(tmp_path, raw))
    raw["workload"]["models"] = {"llama": 1.0}
    resolved = app.load(write_scenario(tmp_path, raw))
    assert set(workload_for(resolved, 0).extra["model"]) == {"llama"}
