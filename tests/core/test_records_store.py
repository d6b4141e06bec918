"""The run's records: their store round trip, the schema that follows from them, and merging unit pieces."""

import dataclasses
import pickle
import sqlite3

import numpy as np
import pytest

from cafe_core.records import (
    KEY_FIELDS,
    HeatmapRecord,
    ScoreRecord,
    Target,
    TargetKey,
    TargetRecord,
    UnitResult,
)
from cafe_core.store import RunStore, StoredUnit

KEY = TargetKey("img0.png", "relu", 1, 7, 5)
OTHER = TargetKey("img1.png", "relu", 1, 3, 0)


def unit_pieces():
    targets = [TargetRecord(KEY, "patch(1,0)", 0.75, "explained"), TargetRecord(OTHER, "cls", 0.0, "inactive")]
    heatmap = np.arange(6, dtype=np.float32).reshape(2, 3)
    heatmaps = [HeatmapRecord(KEY, "gradient_x_input", heatmap, {"delta": 0.5})]
    curve = np.array([0.0, 0.5, 1.0])
    scores = [
        ScoreRecord(KEY, "gradient_x_input", "insertion", 0.625, curve, curve * 2, np.array([0.0, 0.5, 1.0])),
        ScoreRecord(KEY, "gradient_x_input", "own_patch_share", float("nan"), info={"positive_total": 0.0}),
    ]
    return [
        UnitResult("images[0:2]", targets=targets),
        UnitResult("images[0:2]", heatmaps=heatmaps, scores=scores),
        UnitResult("images[0:2]", complete=True),
    ]


def test_a_written_unit_reads_back_as_the_same_records(tmp_path):
    pieces = unit_pieces()
    with RunStore(tmp_path) as store:
        for piece in pieces:
            store.write(piece)
        assert store.finished_units() == {"images[0:2]"}
        assert store.targets() == sorted(pieces[0].targets, key=lambda r: r.key)
        (heatmap,) = store.heatmap_records()
        np.testing.assert_array_equal(heatmap.heatmap, pieces[1].heatmaps[0].heatmap)
        assert (heatmap.key, heatmap.attributor, heatmap.info) == (KEY, "gradient_x_input", {"delta": 0.5})
        insertion, locality = store.scores()
        np.testing.assert_array_equal(insertion.raw_curve, [0.0, 1.0, 2.0])
        assert insertion.score == 0.625 and locality.curve is None
        assert np.isnan(locality.score)  # an undefined score is stored as NULL and read back as NaN
        stored = store.stored_work(["img0.png"])
        assert stored.has_heatmap(KEY, "gradient_x_input") and not stored.has_heatmap(KEY, "attnlrp")
        assert stored.missing_metrics(KEY, "gradient_x_input", ["insertion", "deletion"]) == {"deletion"}


def test_a_unit_is_finished_only_once_its_last_piece_is_written(tmp_path):
    first, second, _ = unit_pieces()
    with RunStore(tmp_path) as store:
        store.write(first)
        store.write(second)
        assert store.finished_units() == set()
        assert len(store.targets()) == 2  # what was written is kept for a resumed run


def test_the_tables_have_one_column_per_record_field(tmp_path):
    RunStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "run.db") as db:
        for table, record in (("targets", TargetRecord), ("heatmaps", HeatmapRecord), ("scores", ScoreRecord)):
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            fields = [f.name for f in dataclasses.fields(record) if f.name != "key"]
            assert columns == [*KEY_FIELDS, *fields]


def test_a_unit_result_survives_pickling_and_merges_its_pieces():
    merged = UnitResult.merge(pickle.loads(pickle.dumps(piece)) for piece in unit_pieces())
    assert merged.complete and len(merged.targets) == 2 and len(merged.scores) == 2
    with pytest.raises(ValueError, match="different units"):
        UnitResult.merge([UnitResult("a"), UnitResult("b")])


def test_a_key_is_a_target_on_an_image():
    assert KEY.target == Target(1, 7, 5)
    assert TargetKey.of("img0.png", "relu", Target(1, 7, 5)) == KEY
    assert KEY.as_tuple() == ("img0.png", "relu", 1, 7, 5)


def test_what_a_remote_worker_is_sent_holds_the_stored_keys_and_only_the_heatmaps_still_to_score(tmp_path):
    _, chunk, _ = unit_pieces()
    unscored = HeatmapRecord(OTHER, "gradient_x_input", np.ones((2, 3), dtype=np.float32))
    with RunStore(tmp_path) as store:
        store.write(chunk)
        store.write(UnitResult("images[0:2]", heatmaps=[unscored]))
        sent = pickle.loads(pickle.dumps(store.stored_unit(["img0.png", "img1.png"], ["insertion", "own_patch_share"])))
        assert sent.stored_work(["img0.png", "img1.png"]) == store.stored_work(["img0.png", "img1.png"])
        assert set(sent.heatmaps) == {(OTHER, "gradient_x_input")}  # KEY's heatmap has every score
        np.testing.assert_array_equal(sent.heatmap(OTHER, "gradient_x_input"), unscored.heatmap)
        assert sent.heatmap(KEY, "attnlrp") is None
        assert store.stored_unit(["img2.png"], ["insertion"]) == StoredUnit()  # a unit never started: nothing
