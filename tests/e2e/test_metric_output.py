"""A metric's scores: NaN is stored as undefined and counted, anything else that is not a score is an error."""

import math

import pytest
import torch

import cafe_core
from cafe_core.metric_output import MetricOutputError
from cafe_core.plugins import PluginHost
from cafe_core.protocols import MetricResult

pytestmark = pytest.mark.slow


def faulty_plugin(fault):
    """A plugin with a metric ``faulty`` scoring each heatmap by its sum, then spoiling the result by ``fault``."""
    from types import SimpleNamespace

    from cafe_core import hookimpl

    class Faulty:
        higher_is_better = True

        def evaluate(self, target, x, heatmap, context, annotations=None):
            score = heatmap.flatten(1).sum(dim=1)
            if fault == "infinite":
                score[-1] = -math.inf
            elif fault == "short":
                score = score[:-1]
            elif fault == "bare":
                return score
            return MetricResult(score=score)

    @hookimpl
    def cafe_register_metrics(register):
        register("faulty", Faulty)

    return SimpleNamespace(cafe_register_metrics=cafe_register_metrics)


def test_nan_scores_are_stored_as_undefined_and_counted(spec_dict, tmp_path):
    spec_dict["targets"] = {"latents": list(range(8)), "token": "cls"}
    spec_dict["metrics"] = [{"name": "own_patch_share"}]  # a class token has no patch of its own
    results = cafe_core.run(spec_dict, tmp_path / "run")
    explained = sum(t["status"] == "explained" for t in results.targets)
    assert explained > 0
    assert len(results.rows) == explained * 2 and all(math.isnan(r["score"]) for r in results.rows)
    for row in results.summary():
        assert (row["n"], row["undefined"]) == (0, explained)
    header, *lines = results.format_summary().splitlines()
    assert header.split()[:5] == ["metric", "attributor", "n", "undef", "mean"]
    assert all(line.split()[2:4] == ["0", str(explained)] for line in lines[:-1])


@pytest.mark.parametrize(
    "fault, expected",
    [("infinite", "returned an infinite score"), ("short", "scores of shape"), ("bare", "not a MetricResult")],
)
def test_a_metric_result_that_is_not_a_score_per_heatmap_is_a_named_error(spec_dict, tmp_path, fault, expected):
    spec_dict["metrics"] = [{"name": "faulty"}]
    spec_dict["run"]["limit"] = 2
    host = PluginHost()
    host.add(faulty_plugin(fault), "faulty")
    with pytest.raises(MetricOutputError, match=expected) as caught:
        cafe_core.run(spec_dict, tmp_path / "run", host=host)
    message = str(caught.value)
    assert "metric 'faulty'" in message and "image_id='img" in message and "report it" in message


def test_a_sound_metric_of_the_same_plugin_is_stored(spec_dict, tmp_path):
    spec_dict["metrics"] = [{"name": "faulty"}]
    spec_dict["run"]["limit"] = 2
    host = PluginHost()
    host.add(faulty_plugin(None), "faulty")
    results = cafe_core.run(spec_dict, tmp_path / "run", host=host)
    for row in results.rows:
        key = (row["image_id"], row["layer"], row["latent"], row["position"])
        expected = float(torch.as_tensor(results.heatmap(*key, row["attributor"])).double().sum())
        assert row["score"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
