"""The check that two runs of one spec produced the same results, whatever executed them."""

import numpy as np


def assert_same_results(results, reference):
    """The same rows, targets and heatmaps, to the bit."""
    assert results.rows == reference.rows
    assert results.targets == reference.targets
    assert results.heatmap_index == reference.heatmap_index
    for row in reference.heatmap_index:
        key = (row["image_id"], row["layer"], row["latent"], row["position"])
        attributor = row["attributor"]
        np.testing.assert_array_equal(results.heatmap(*key, attributor), reference.heatmap(*key, attributor))
