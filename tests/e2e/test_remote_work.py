"""What an executor sends to a worker elsewhere is enough: the spec, the unit and what the store holds for it.

A worker that gets only pickled copies of these (as a Ray actor does) computes the same rows as the
in-process run, and given a unit left half done it computes only what is missing.
"""

import dataclasses
import pickle

import pytest
import torch

import cafe_core
from cafe_core.plugins import PluginHost
from cafe_core.records import UnitResult
from cafe_core.store import RunStore
from cafe_core.work import SpecWorker
from same_results import assert_same_results

pytestmark = pytest.mark.slow


def over_the_wire(value):
    return pickle.loads(pickle.dumps(value))


def walk(value):
    """Every value inside records, dicts, lists and tuples."""
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from walk(getattr(value, field.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from walk(key)
            yield from walk(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from walk(item)


class PickledWorkerExecutor:
    """Computes each unit in a SpecWorker built from pickled copies of what a remote executor sends."""

    def __init__(self, stop_after=None):
        self.stop_after = stop_after  # pieces to commit before "dying"
        self.sent, self.pieces = [], []

    def execute(self, units, work, commit):
        worker = SpecWorker(over_the_wire(work.spec), over_the_wire(work.base_dir), over_the_wire(work.floors))
        for unit in reversed(list(units)):  # any order will do
            stored = over_the_wire(work.stored(unit))
            self.sent.append(stored)
            for piece in worker(over_the_wire(unit), stored):
                piece = over_the_wire(piece)
                self.pieces.append(piece)
                commit(piece)
                if self.stop_after is not None and len(self.pieces) == self.stop_after:
                    raise KeyboardInterrupt  # the worker died here
        return None  # the runner counts the finished units itself


def test_a_worker_given_only_pickled_spec_unit_and_stored_work_computes_the_same_rows(spec_dict, tmp_path):
    host = PluginHost()
    reference = cafe_core.run(spec_dict, tmp_path / "local", host=host)
    executor = PickledWorkerExecutor()
    results = cafe_core.run(spec_dict, tmp_path / "elsewhere", host=host, executor=executor)
    assert_same_results(results, reference)
    assert results.execution.done == 3 and results.execution.retried == 0
    assert all(not stored.work.heatmaps and not stored.heatmaps for stored in executor.sent)  # fresh units
    assert not any(isinstance(value, torch.Tensor) for piece in executor.pieces for value in walk(piece))


def test_a_unit_left_half_done_is_finished_from_what_the_driver_sends(spec_dict, tmp_path):
    host = PluginHost()
    spec_dict["run"]["limit"] = 2  # one unit: targets of its SAE, then two chunks of two targets
    reference = cafe_core.run(spec_dict, tmp_path / "local", host=host)
    directory = tmp_path / "elsewhere"
    dying = PickledWorkerExecutor(stop_after=2)  # the targets and the first chunk are committed
    with pytest.raises(KeyboardInterrupt):
        cafe_core.run(spec_dict, directory, host=host, executor=dying)
    first_chunk = dying.pieces[1]
    assert first_chunk.heatmaps and first_chunk.scores

    with RunStore(directory) as store:
        assert not store.finished_units()
        stored_before = {(h.key, h.attributor) for h in store.heatmap_records(arrays=False)}
    resumed = PickledWorkerExecutor()
    results = cafe_core.run(spec_dict, directory, host=host, executor=resumed)
    [sent] = resumed.sent
    assert sent.work.heatmaps == stored_before
    computed = UnitResult.merge(resumed.pieces)
    assert {(h.key, h.attributor) for h in computed.heatmaps}.isdisjoint(stored_before)
    assert len(computed.heatmaps) + len(stored_before) == len(reference.heatmap_index)
    assert_same_results(results, reference)
