"""The README's main job: the quickstart spec stays valid and runs on the embedded default."""

import pathlib
import re

import pytest

import cafe_core
from cafe_core.spec import read_spec_source

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.toml"


def readme_table() -> list[str]:
    """The lines of the README's block that shows what the quickstart printed."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The main job, measured"):]
    block = re.search(r"```\n(metric .*?)```", section, flags=re.S)
    return block.group(1).rstrip("\n").splitlines()


def test_quickstart_runs_on_two_images(tmp_path):
    raw, _ = read_spec_source(QUICKSTART)
    raw["dataset"]["size"] = 2
    for attributor in raw["attributors"]:
        if attributor["name"] == "integrated_gradients":
            attributor["n_steps"] = 4
    results = cafe_core.run(raw, tmp_path / "run")
    assert {r["attributor"] for r in results.rows} == {
        "activation_map", "gradient_x_input", "attnlrp", "integrated_gradients", "random"
    }
    assert {r["metric"] for r in results.rows} == {"insertion", "deletion", "object_hit", "own_patch_share"}
    assert 4 <= len(results.targets) <= 8  # two rules of two latents per image, overlaps counted once
    key = next((r["image_id"], r["layer"], r["latent"], r["position"]) for r in results.rows)
    assert results.heatmap(*key, "attnlrp").shape == (8, 8)
    assert results.curve(*key, "attnlrp", "insertion")["curve"].shape == (65,)
    # What the README shows is laid out as the summary prints it: the same header lines, a line per metric
    # and attributor, the attributors' own relative errors, and the count of targets.
    printed = results.format_summary().splitlines()
    shown = readme_table()
    assert shown[0] == printed[0]
    assert sum(line.startswith(("deletion", "insertion", "object_hit", "own_patch_share")) for line in shown) == 20
    error_header = next(line for line in printed if line.startswith("relative error"))
    assert error_header in shown
    for prefix in ("completeness |delta|/|f(x)-f(x0)| integrated_gradients", "conservation |error|/|z|"):
        assert any(line.startswith(prefix) for line in shown), prefix
        assert any(line.startswith(prefix) for line in printed), prefix
    assert re.fullmatch(r"\d+ targets considered, \d+ skipped as inactive(, \d+ below the floor "
                        r"\(min_relative_activation\))?", shown[-1])
