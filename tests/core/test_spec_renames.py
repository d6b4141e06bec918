"""Renamed spec keys: the old spelling still reads as the new one, with a warning; both at once is an error."""

import pytest

from cafe_core.errors import SpecError
from cafe_core.runner import _comparable
from cafe_core.spec import load_spec


def spec(**changes):
    base = {
        "backbone": {"name": "toy_vit"},
        "sae": {"name": "toy_sae", "layer": 3},
        "dataset": {"name": "shapes", "size": 2},
        "targets": {"select": "top", "count": 2, "token": "cls"},
        "attributors": [{"name": "gradient_x_input"}],
    }
    base.update(changes)
    return base


def test_old_keys_read_as_the_new_ones_with_a_deprecation_warning():
    old = spec(data=spec()["dataset"], targets={"select": "top", "count": 2, "position": "cls"})
    del old["dataset"]
    with pytest.warns(DeprecationWarning) as caught:
        parsed, _ = load_spec(old)
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "spec: `data` is deprecated, write `dataset` instead (same meaning)",
        "targets: `position` is deprecated, write `token` instead (same meaning)",
    ]
    assert parsed.canonical() == load_spec(spec())[0].canonical()


def test_old_and_new_key_together_is_an_error():
    with pytest.raises(SpecError, match="`data` is the old name of `dataset`; give only `dataset`"):
        load_spec(spec(data={"name": "shapes"}))


def test_a_run_stored_with_the_old_keys_compares_equal_to_the_same_spec_written_anew():
    stored = load_spec(spec())[0].canonical()
    stored["data"] = stored.pop("dataset")
    stored["targets"][0]["position"] = stored["targets"][0].pop("token")
    assert _comparable(stored) == _comparable(load_spec(spec())[0].canonical())
