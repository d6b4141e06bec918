"""``[run] autocast``: the attributors' and metrics' passes in lower precision, the targets unchanged."""

import numpy as np
import pytest
import torch

import cafe_core
from cafe_core.errors import SpecError
from cafe_core.protocols import RunContext
from cafe_core.store import RunDirectoryError

pytestmark = pytest.mark.slow


def _spec(**run):
    return {
        "backbone": {"name": "toy_vit"},
        "sae": {"name": "toy_sae", "layer": 3},
        "dataset": {"name": "shapes", "size": 2, "seed": 4},
        "targets": {"select": "top", "count": 2, "token": "argmax"},
        "attributors": [{"name": "gradient_x_input"}, {"name": "attnlrp"}],
        "metrics": [{"name": "insertion", "steps": 4}],
        "run": {"batch_size": 8, "device": "cpu", **run},
    }


def _ranks(values):
    return np.argsort(np.argsort(values.ravel()))


def test_bfloat16_autocast_changes_the_heatmaps_a_little_and_the_targets_not_at_all(tmp_path):
    exact = cafe_core.run(_spec(), tmp_path / "float32", progress=False)
    lowered = cafe_core.run(_spec(autocast="bfloat16"), tmp_path / "bfloat16", progress=False)
    assert exact.targets == lowered.targets  # selection stays in float32
    assert len(lowered.heatmap_index) == len(exact.heatmap_index) == 8
    for entry in exact.heatmap_index:
        where = (entry["image_id"], entry["layer"], entry["latent"], entry["position"], entry["attributor"])
        a, b = exact.heatmap(*where), lowered.heatmap(*where)
        assert b.dtype == np.float32  # stored in the run's dtype
        assert not np.array_equal(a, b)  # bfloat16 keeps 8 significant bits: the passes did run lowered
        assert np.corrcoef(_ranks(a), _ranks(b))[0, 1] > 0.95
    scores = {(r["image_id"], r["latent"], r["attributor"]): r["score"] for r in lowered.rows}
    for row in exact.rows:
        assert np.isfinite(scores[row["image_id"], row["latent"], row["attributor"]])
        assert abs(scores[row["image_id"], row["latent"], row["attributor"]] - row["score"]) < 0.05


def test_the_context_enters_autocast_only_when_asked():
    x = torch.ones(2, 2)
    with RunContext().precision():
        assert (x @ x).dtype == torch.float32
    with RunContext(autocast=torch.bfloat16).precision():
        assert (x @ x).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "run, expected",
    [
        ({"autocast": "bfloat16", "dtype": "float64"}, "dtype = \"float32\""),
        ({"autocast": "float8"}, "run.autocast"),
    ],
)
def test_autocast_that_cannot_work_is_refused_before_the_run(tmp_path, run, expected):
    with pytest.raises(SpecError, match=expected):
        cafe_core.run(_spec(**run), tmp_path / "run", progress=False)


def test_autocast_is_part_of_the_run_identity(tmp_path):
    cafe_core.run({**_spec(), "dataset": {"name": "shapes", "size": 1, "seed": 4}}, tmp_path / "run", progress=False)
    with pytest.raises(RunDirectoryError, match="sections that differ: run"):
        cafe_core.run({**_spec(autocast="bfloat16"), "dataset": {"name": "shapes", "size": 1, "seed": 4}},
                      tmp_path / "run", progress=False)
