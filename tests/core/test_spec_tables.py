"""Top-level tables plugins own: accepted, checked with the owner's model, unknown ones refused, not the run's identity."""

from __future__ import annotations

import types

import pytest
from pydantic import BaseModel, ConfigDict, Field

from cafe_core import hookimpl
from cafe_core.errors import SpecError
from cafe_core.plugins import PluginHost
from cafe_core.spec import load_spec

CORE = {
    "backbone": {"name": "b"},
    "sae": {"name": "s"},
    "dataset": {"name": "d"},
    "targets": {"latents": [1]},
    "attributors": [{"name": "a"}],
}


class GraphTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    share: float = Field(0.8, gt=0, le=1)
    engine: str = "auto"


def _even(value):
    if value % 2:
        raise ValueError(f"must be even, got {value}")
    return value


def _host():
    plugin = types.ModuleType("tables_plugin")

    @hookimpl
    def cafe_register_spec_tables(register):
        register("graphing", GraphTable, description="a table read by a plugin's command")
        register("pairs", _even)

    plugin.cafe_register_spec_tables = cafe_register_spec_tables
    host = PluginHost(entry_points=False)
    host.add(plugin, "tables")
    return host


def _problems(spec, host):
    with pytest.raises(SpecError) as caught:
        load_spec(spec, host)
    return dict(caught.value.problems)


def test_a_registered_table_is_accepted_validated_and_kept_beside_the_spec():
    spec, _ = load_spec({**CORE, "graphing": {"share": 0.5}, "pairs": 4}, _host())
    assert spec.tables == {"graphing": GraphTable(share=0.5), "pairs": 4}
    assert spec.tables["graphing"].engine == "auto"


def test_a_table_is_not_part_of_the_runs_identity():
    host = _host()
    plain, _ = load_spec(dict(CORE), host)
    with_table, _ = load_spec({**CORE, "graphing": {"share": 0.5}}, host)
    edited, _ = load_spec({**CORE, "graphing": {"share": 0.25}}, host)
    assert plain.canonical() == with_table.canonical() == edited.canonical()
    assert "graphing" not in with_table.canonical()


def test_problems_inside_a_table_are_reported_at_their_paths_with_the_specs_own():
    problems = _problems({**CORE, "run": {"batch_size": 0}, "graphing": {"share": 2, "shares": 1}, "pairs": 3},
                         _host())
    assert set(problems) == {"run.batch_size", "graphing.share", "graphing.shares", "pairs"}
    assert problems["graphing.shares"].startswith("unknown key")
    assert "less than or equal to 1" in problems["graphing.share"]
    assert problems["pairs"] == "must be even, got 3"


def test_a_table_that_is_not_a_table_is_reported_at_its_name():
    problems = _problems({**CORE, "graphing": 3}, _host())
    assert list(problems) == ["graphing"] and "dictionary" in problems["graphing"]


def test_an_unknown_table_is_refused_with_the_tables_plugins_read():
    problems = _problems({**CORE, "graphng": {"share": 0.5}}, _host())
    message = problems["graphng"]
    assert message.startswith("unknown key: [graphng] is neither a section of the run spec")
    assert "[graphing] (plugin 'tables')" in message and "Did you mean 'graphing'?" in message
    assert "install the plugin that reads it" in message


def test_without_the_owning_plugin_its_table_is_unknown():
    problems = _problems({**CORE, "graphing": {"share": 0.5}}, PluginHost(entry_points=False))
    assert "plugins' tables: none" in problems["graphing"]


def test_a_spec_without_plugin_tables_needs_no_plugins(monkeypatch):
    import cafe_core.plugins

    def fail():
        raise AssertionError("plugins loaded for a spec without plugin tables")

    monkeypatch.setattr(cafe_core.plugins, "get_host", fail)
    spec, _ = load_spec(dict(CORE))
    assert spec.tables == {}
