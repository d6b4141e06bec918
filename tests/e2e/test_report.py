"""``cafe report`` on real runs: what the pages hold, numbers checked against the run's own table, class-token
targets, a resumed run updating its report, and the sanity checks catching a method that ignores the model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

import cafe_core
from cafe_core.cli import main
from cafe_core.store import RunStore
from conftest import IMAGE, backbone_kwargs

pytestmark = pytest.mark.slow


class FirstUnitOnly:
    """An executor that stops after the first unit of work, as a run killed early does."""

    def execute(self, units, work, commit):
        for piece in work(next(iter(units))):
            commit(piece)


def _spec(spec_dict):
    spec_dict["targets"] = [{"select": "top", "count": 2, "token": "argmax"},
                            {"select": "top", "count": 1, "token": "cls"}]
    spec_dict["metrics"].append({"name": "cause_patches", "share": 0.5})
    return spec_dict


@pytest.fixture(scope="module")
def full_run(assets, tmp_path_factory):
    """One finished run (five images; patch and class-token targets; the random ranking too) and its report."""
    spec = _spec({
        "backbone": {"name": "timm", "model": "vit_tiny_patch16_224", "checkpoint": str(assets / "vit.safetensors"),
                     "img_size": IMAGE, "model_kwargs": backbone_kwargs()},
        "sae": {"name": "relu", "path": str(assets / "sae.safetensors"), "layer": 1},
        "dataset": {"name": "folder", "path": str(assets / "images")},
        "attributors": [{"name": "activation_map"}, {"name": "gradient_x_input"}, {"name": "random"}],
        "metrics": [{"name": "insertion", "steps": 2}, {"name": "deletion", "steps": 2}],
        "run": {"batch_size": 2, "device": "cpu", "seed": 0},
    })
    out = tmp_path_factory.mktemp("report") / "run"
    results = cafe_core.run(spec, out, progress=False)
    index = cafe_core.report(out, sanity_targets=2, random_directions=1, resamples=300, per_page=50,
                             device="cpu", progress=False)
    return results, index


def _report(out, *extra):
    assert main(["report", str(out), "--device", "cpu", "--no-progress", "--resamples", "300", *extra]) == 0
    return out / "report"


def _figures(folder):
    return {p.name: p.stat().st_mtime_ns for p in (folder / "figures").glob("*.png")}


def test_report_of_a_partial_run_is_updated_when_the_run_is_resumed(spec_dict, tmp_path):
    spec = _spec(spec_dict)
    out = tmp_path / "run"
    cafe_core.run(spec, out, executor=FirstUnitOnly(), progress=False)
    report = _report(out, "--sanity-targets", "0")
    partial = json.loads((report / "summary.json").read_text())
    before = _figures(report)
    assert partial["explained"] == 6 and (report / "index.html").is_file()  # 2 images x (2 patch + 1 cls)

    cafe_core.run(spec, out, progress=False)  # resumes: only the missing units
    report = _report(out, "--sanity-targets", "0")
    full = json.loads((report / "summary.json").read_text())
    after = _figures(report)
    assert full["explained"] == full["shown"] == 15
    strips = [name for name in before if name.startswith("target-")]
    assert strips and all(after.get(name) == before[name] for name in strips), "unchanged figures are kept"
    assert len([n for n in after if n.startswith("target-")]) > len(strips)
    old_summary = {n for n in before if n.startswith("summary-")}
    new_summary = {n for n in after if n.startswith("summary-")}
    assert len(new_summary) == 1 and new_summary != old_summary, "the stale summary plot is replaced"


def test_summary_numbers_match_the_runs_own_table(full_run):
    results, index = full_run
    summary = json.loads((index.parent / "summary.json").read_text())
    rows = {(r["metric"], r["group"], r["attributor"]): r for r in summary["summary"]}

    by_key: dict = {}
    for row in results.rows:
        group = f"{row['sae']} · layer 1" if "sae" in row else "layer 1"
        group += " · cls" if row["position_name"] == "cls" else ""
        key = (row["image_id"], row["latent"], row["position"])
        by_key.setdefault((row["metric"], group, row["attributor"]), {})[key] = row["score"]
    for (metric, group, attributor), scores in by_key.items():
        finite = [v for v in scores.values() if math.isfinite(v)]
        got = rows[(metric, group, attributor)]
        assert got["mean"]["n"] == len(finite)
        assert got["mean"]["value"] == pytest.approx(np.mean(finite))
        assert got["median"]["value"] == pytest.approx(np.median(finite))
        assert got["mean"]["low"] <= got["mean"]["value"] <= got["mean"]["high"]
        if attributor == "gradient_x_input" and metric in ("insertion", "deletion"):
            reference = by_key[(metric, group, "activation_map")]
            pairs = [scores[k] - reference[k] for k in scores
                     if math.isfinite(scores[k]) and math.isfinite(reference[k])]
            assert got["difference"]["value"] == pytest.approx(np.mean(pairs))
    assert any(m == "insertion" and g.endswith("layer 1 · cls") for m, g, _ in rows)  # class-token targets apart


def test_the_attributors_own_relative_errors_are_reported(spec_dict, tmp_path):
    spec_dict["attributors"] = [{"name": "attnlrp"}, {"name": "integrated_gradients", "n_steps": 4},
                                {"name": "gradient_x_input"}]
    spec_dict["metrics"] = [{"name": "insertion", "steps": 4}]
    spec_dict["targets"] = {"select": "top", "count": 1, "token": "argmax"}
    out = tmp_path / "run"
    cafe_core.run(spec_dict, out, progress=False)
    report = _report(out, "--sanity-targets", "0")
    found = {(d["diagnostic"], d["attributor"]): d for d in json.loads((report / "summary.json").read_text())["diagnostics"]}
    assert set(found) == {("conservation |error|/|z|", "attnlrp"),
                          ("completeness |delta|/|f(x)-f(x0)|", "integrated_gradients")}

    # The same numbers from the store's rows, by numpy.
    with RunStore.open_existing(out) as store:
        info = {h.attributor: [] for h in store.heatmap_records(arrays=False)}
        for h in store.heatmap_records(arrays=False):
            info[h.attributor].append(h.info)
    conservation = np.array([abs(i["conservation_error"]) / abs(i["z"]) for i in info["attnlrp"]])
    completeness = np.array([abs(i["relative_delta"]) for i in info["integrated_gradients"]])
    for key, values in (
        (("conservation |error|/|z|", "attnlrp"), conservation),
        (("completeness |delta|/|f(x)-f(x0)|", "integrated_gradients"), completeness),
    ):
        assert found[key]["n"] == len(values) == 5
        assert found[key]["median"] == pytest.approx(np.median(values))
        assert found[key]["max"] == pytest.approx(values.max())
    page = (report / "index.html").read_text()
    assert "What the attributors report about their own heatmaps" in page
    assert f"{np.median(conservation):.4g}" in page


def test_every_figure_has_content_and_a_bounded_size(full_run):
    _, index = full_run
    figures = sorted((index.parent / "figures").glob("*.png"))
    assert len(figures) == 2 * 15 + 1  # maps and curves of every target, and the summary plot
    for figure in figures:
        assert figure.stat().st_size < 150_000, figure.name
        with Image.open(figure) as image:
            pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert pixels.std(axis=0).max() > 10 and len(np.unique(pixels, axis=0)) > 20, figure.name


def test_cause_patches_are_stored_per_target_and_attributor(full_run):
    results, _ = full_run
    with RunStore.open_existing(results.directory) as store:
        heatmaps = {(h.key, h.attributor): h.heatmap for h in store.heatmap_records()}
        counts = {(s.key, s.attributor): s.info["count"] for s in store.scores() if s.metric == "cause_patches"}
    assert counts and set(counts) == set(heatmaps)
    for key, heatmap in heatmaps.items():
        positive = np.sort(np.clip(heatmap.ravel().astype(np.float64), 0, None))[::-1]
        if positive.sum() <= 0:
            assert counts[key] == 0
            continue
        held = np.cumsum(positive) / positive.sum()
        assert counts[key] == int(np.argmax(held >= 0.5 - 1e-6)) + 1


def test_class_token_targets_say_the_activation_map_has_nothing_to_show(full_run):
    results, index = full_run
    page = (index.parent / "targets-001.html").read_text()
    cls_targets = sum(1 for t in results.targets if t["position_name"] == "cls")
    assert cls_targets == 5
    assert page.count("Cls target: the latent has no patch of its own, so the activation map has nothing to show") \
        == cls_targets
    text = index.read_text()
    assert "layer 1 · cls" in text and "Against the reference" in text


def test_sanity_checks_catch_the_attributor_that_ignores_the_model(full_run):
    results, index = full_run
    sanity = json.loads((index.parent / "summary.json").read_text())["sanity"]
    randomised = sanity["randomisation"]
    # the random ranking depends on the latent and token only: the same maps on a random SAE and backbone
    assert randomised["random"]["sae"]["rank_correlation"]["value"] == pytest.approx(1.0)
    assert randomised["random"]["backbone"]["rank_correlation"]["value"] == pytest.approx(1.0)
    # gradient x input follows the model: its maps change
    assert randomised["gradient_x_input"]["sae"]["rank_correlation"]["value"] < 0.9
    assert randomised["gradient_x_input"]["backbone"]["rank_correlation"]["value"] < 0.9
    control = sanity["random_directions"]["gradient_x_input"]
    assert control["latent"]["n"] == 2 and 0 <= control["wins"] <= 1
    assert set(sanity["relevance_gain"]) == {"activation_map", "gradient_x_input", "random"}
    assert "Model randomisation" in index.read_text()
    written = (index.parent / "sanity.json").stat().st_mtime_ns
    cafe_core.report(results.directory, sanity_targets=2, random_directions=1, resamples=300, per_page=50,
                     device="cpu", progress=False)
    assert (index.parent / "sanity.json").stat().st_mtime_ns == written  # reused, not recomputed


def _graph(latent):
    """A concept graph as ``cafe graph`` stores it, with one source layer and one edge."""
    return {
        "top": {"latent": latent, "label": "layer1", "images": ["a.png"], "positions": [3]},
        "attributor": "cp_lrp", "engine": "matplotlib", "figure": f"graph-layer1-{latent}.png",
        "layers": [{"label": "layer0", "layer": 0, "parents": 1, "kept": 1, "kept_share": 0.9, "capped": False,
                    "positive_latent_relevance": 0.9, "error": 0.05, "bias": 0.02, "uncovered": 0.0,
                    "absorbed": 0.03}],
        "edges": [{"source": f"layer1:{latent}", "target": "layer0:7", "weight": 0.875}],
    }


def _write_graphs(folder, latent):
    folder.mkdir(parents=True)
    Image.fromarray(np.full((4, 4, 3), latent, dtype=np.uint8)).save(folder / f"graph-layer1-{latent}.png")
    (folder / "graphs.json").write_text(json.dumps({"images": 5, "graphs": [_graph(latent)]}))


def test_concept_graphs_of_the_run_directory_and_included_folders_are_drawn_in_the_report(full_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(full_run[0].directory, run_dir, ignore=shutil.ignore_patterns("report"))
    _write_graphs(run_dir / "graphs", 11)
    _write_graphs(tmp_path / "other", 22)
    report = _report(run_dir, "--include", str(tmp_path / "other"), "--sanity-targets", "0", "--max-targets", "1")
    index = (report / "index.html").read_text()
    assert '<h2 id="concept-graphs">Concept graphs</h2>' in index
    assert index.index('id="sanity"') < index.index('id="concept-graphs"') < index.index('id="targets"')
    targets_page = (report / "targets-001.html").read_text()
    assert '<a href="index.html#concept-graphs">Concept graphs</a>' in index and "#concept-graphs" in targets_page
    for folder, latent in (("1-graphs", 11), ("2-other", 22)):
        src = f"concept-graphs/{folder}/graph-layer1-{latent}.png"
        assert f'src="{src}"' in index
        assert np.asarray(Image.open(report / src)).max() == latent
        assert f"layer1:{latent}" in index
    assert "+0.875" in index

    shutil.rmtree(run_dir / "graphs")
    index = (_report(run_dir, "--sanity-targets", "0", "--max-targets", "1") / "index.html").read_text()
    assert "concept-graphs" not in index and not (report / "concept-graphs").exists()
