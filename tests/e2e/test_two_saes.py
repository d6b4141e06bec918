"""Two SAEs at the same layer in one run: every stored row says whose it is, and old stores are read."""

import shutil
import sqlite3

import pytest

import cafe_core
from cafe_core.errors import SpecError
from cafe_core.store import RunDirectoryError

pytestmark = pytest.mark.slow

CONTROL = {"name": "random", "label": "control", "d_in": 32, "d_sae": 96, "layer": 1, "seed": 3}


def small(spec_dict):
    """The same latents of both SAEs at the same token, so that their targets share image, layer and latent."""
    spec_dict["targets"] = {"latents": list(range(12)), "token": "cls"}
    spec_dict["attributors"] = [{"name": "gradient_x_input"}]
    spec_dict["metrics"] = [{"name": "insertion", "steps": 2}]
    spec_dict["run"]["limit"] = 2
    return spec_dict


def by_target(rows):
    return {(r["image_id"], r["layer"], r["latent"], r["position"]): r for r in rows}


def test_two_saes_at_one_layer_keep_their_rows_apart(spec_dict, tmp_path):
    spec = small(spec_dict)
    trained = dict(spec["sae"], label="trained")
    alone = {"trained": cafe_core.run({**spec, "sae": trained}, tmp_path / "trained"),
             "control": cafe_core.run({**spec, "sae": CONTROL}, tmp_path / "control")}
    both = cafe_core.run({**spec, "sae": [trained, CONTROL]}, tmp_path / "both")

    shared = by_target(alone["trained"].rows).keys() & by_target(alone["control"].rows).keys()
    assert shared  # targets both SAEs explain: the same image, layer, latent and token
    assert len(both.rows) == len(alone["trained"].rows) + len(alone["control"].rows)
    for label, single in alone.items():
        mine = by_target(r for r in both.rows if r["sae"] == label)
        assert mine.keys() == by_target(single.rows).keys()
        for key, row in by_target(single.rows).items():
            assert mine[key]["activation"] == pytest.approx(row["activation"], rel=1e-6)
            assert mine[key]["score"] == pytest.approx(row["score"], rel=1e-6)
            stored = both.heatmap(*key, "gradient_x_input", sae=label)
            assert stored == pytest.approx(single.heatmap(*key, "gradient_x_input"), rel=1e-5, abs=1e-7)
    key = next(iter(by_target(both.rows)))
    with pytest.raises(KeyError, match="control, trained"):
        both.heatmap(*key, "gradient_x_input")
    assert {r["sae"] for r in both.summary()} == {"trained", "control"}
    header, *lines = both.format_summary().splitlines()
    assert header.split()[:3] == ["metric", "sae", "attributor"]
    assert sorted(line.split()[2] for line in lines[:-1]) == ["control", "trained"]
    assert "sae" in (both.directory / "results.csv").read_text().splitlines()[0].split(",")


def test_two_sae_sections_with_one_label_are_rejected(spec_dict):
    spec_dict["sae"] = [spec_dict["sae"], dict(spec_dict["sae"])]
    with pytest.raises(SpecError, match="give each a distinct `label`"):
        cafe_core.run(spec_dict)


def make_store_without_sae_column(directory):
    """The tables as a store written before keys named their SAE (no ``sae`` column)."""
    with sqlite3.connect(directory / "run.db") as db:
        for table in ("targets", "heatmaps", "scores"):
            columns = [row for row in db.execute(f"PRAGMA table_info({table})") if row[1] != "sae"]
            key = [name for _, name, _, _, _, pk in sorted(columns, key=lambda c: c[5]) if pk]
            names = ", ".join(c[1] for c in columns)
            definition = ", ".join(f"{c[1]} {c[2]}" for c in columns)
            db.execute(f"CREATE TABLE old ({definition}, PRIMARY KEY ({', '.join(key)}))")
            db.execute(f"INSERT OR IGNORE INTO old SELECT {names} FROM {table}")  # one row per old key
            db.execute(f"DROP TABLE {table}")
            db.execute(f"ALTER TABLE old RENAME TO {table}")


def test_a_store_written_before_the_sae_column_is_read_and_resumed(spec_dict, tmp_path):
    spec = small(spec_dict)
    fresh = cafe_core.run(spec, tmp_path / "fresh")
    shutil.copytree(tmp_path / "fresh", tmp_path / "old")
    make_store_without_sae_column(tmp_path / "old")
    with sqlite3.connect(tmp_path / "old" / "run.db") as db:
        assert "sae" not in [row[1] for row in db.execute("PRAGMA table_info(scores)")]

    old = cafe_core.Results.load(tmp_path / "old")
    assert sorted(map(str, old.rows)) == sorted(map(str, fresh.rows))
    assert {r["sae"] for r in old.rows} == {"relu"}  # the stored spec's SAE, which has no label
    with sqlite3.connect(tmp_path / "old" / "run.db") as db:
        stored_before = db.execute("SELECT COUNT(*) FROM heatmaps").fetchone()[0]
        db.execute("DELETE FROM units")  # the resumed run must find what is stored under the new key
    resumed = cafe_core.run(spec, tmp_path / "old")
    with sqlite3.connect(tmp_path / "old" / "run.db") as db:
        assert db.execute("SELECT COUNT(*) FROM heatmaps").fetchone()[0] == stored_before
    assert sorted(map(str, resumed.rows)) == sorted(map(str, fresh.rows))


def test_an_old_store_of_several_saes_is_refused(spec_dict, tmp_path):
    spec = small(spec_dict)
    spec["sae"] = [dict(spec["sae"], label="trained"), CONTROL]
    cafe_core.run(spec, tmp_path / "run")
    make_store_without_sae_column(tmp_path / "run")
    with pytest.raises(RunDirectoryError, match="new output directory"):
        cafe_core.Results.load(tmp_path / "run")
