"""The ``cafe`` command: exit codes, one-line errors, and the commands' output."""

import json
import subprocess
import sys

import pytest

from cafe_core.cli import main

pytestmark = pytest.mark.slow


def write_spec(path, spec):
    lines = []
    for section in ("backbone", "sae", "dataset", "targets", "run"):
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in spec[section].items()]
    for section in ("attributors", "metrics"):
        for entry in spec[section]:
            lines.append(f"[[{section}]]")
            lines += [f"{key} = {toml_value(value)}" for key, value in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def toml_value(value):
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def test_run_then_show(spec_dict, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.toml", spec_dict)
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "insertion ↑" in out and "deletion ↓" in out and "gradient_x_input" in out
    assert "10 targets considered, 0 skipped as inactive" in out
    assert "units: 3 units done on 1 worker, 0 retried, 0 failed" in out.splitlines()
    assert main(["show", str(tmp_path / "run")]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[:5] == out.splitlines()[:5]
    assert main(["show", str(tmp_path / "run"), "--csv"]) == 0
    csv_lines = capsys.readouterr().out.splitlines()
    assert csv_lines[0].startswith("image_id,sae,layer,latent,position,position_name,activation,attributor,metric,score")
    assert len(csv_lines) == 1 + 10 * 2 * 2


def test_a_plugin_table_is_accepted_and_checked_and_leaves_the_run_resumable(spec_dict, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.toml", spec_dict)
    run_dir = tmp_path / "run"
    assert main(["run", str(spec), "--out", str(run_dir), "--no-progress"]) == 0
    stored = (run_dir / "spec.json").read_text()
    capsys.readouterr()
    with_table = tmp_path / "with_table.toml"
    for table in ("share = 0.5\nmax_nodes = 4", "share = 0.25"):
        with_table.write_text(spec.read_text() + f"[interlayer]\n{table}\n")
        assert main(["validate", str(with_table)]) == 0
        assert main(["run", str(with_table), "--out", str(run_dir), "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert "ok" in out and "units: 0 units done" in out
        assert (run_dir / "spec.json").read_text() == stored
    with_table.write_text(spec.read_text() + "[interlayer]\nshares = 0.5\n\n[interlayr]\nshare = 0.5\n")
    assert main(["validate", str(with_table)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "  interlayer.shares: unknown key; remove it or check its spelling" in err
    assert "  interlayr: unknown key: [interlayr] is neither a section of the run spec" in err
    assert "Did you mean 'interlayer'?" in err


def test_validate_reports_every_problem_on_one_line_each_without_traceback(spec_dict, tmp_path, capsys):
    spec_dict["attributors"].append({"name": "gradient_x_inputt"})
    spec_dict["metrics"][0]["steps"] = "x"
    spec = write_spec(tmp_path / "spec.toml", spec_dict)
    assert main(["validate", str(spec)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 2 problem(s) in the run spec:")
    assert "attributors[2].name: unknown attributor 'gradient_x_inputt'. Did you mean 'gradient_x_input'" in err
    assert "metrics[0].steps: Input should be a valid integer" in err
    assert "Traceback" not in err


def test_validate_ok_and_layer_error(spec_dict, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.toml", spec_dict)
    assert main(["validate", str(spec)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")
    spec_dict["sae"]["layer"] = 2
    spec = write_spec(tmp_path / "spec.toml", spec_dict)
    assert main(["validate", str(spec)]) == 1
    assert "trained on layer 1" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "show", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "is not a cafe run directory" in err


def test_plugins_lists_components_and_json_is_machine_readable(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "baselines (cafe-plugin-baselines 0.1.0)" in out
    assert "attributor  gradient_x_input" in out
    assert main(["plugins", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in described["components"]["metric"]}
    assert {"insertion", "deletion"} <= names


def test_console_entry_point_runs_as_a_process(tmp_path):
    missing = tmp_path / "absent.toml"
    result = subprocess.run(
        [sys.executable, "-m", "cafe_core", "validate", str(missing)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: 1 problem(s) in the run spec:\n  <spec>: spec file {str(missing)!r} does not exist"


def test_plugin_commands_are_added_and_imported_only_when_invoked(monkeypatch, capsys):
    from types import SimpleNamespace

    import cafe_core.plugins as plugins
    from cafe_core import hookimpl

    built = []

    class Greet:
        def __init__(self):
            built.append(self)

        def configure(self, parser):
            parser.add_argument("who")

        def run(self, args):
            print(f"hello {args.who}")
            return 3

    @hookimpl
    def cafe_register_commands(register):
        register("greet", Greet, description="say hello")
        register("run", Greet, description="tries to shadow a core command")

    host = plugins.PluginHost()
    host.add(SimpleNamespace(cafe_register_commands=cafe_register_commands), "greeter")
    monkeypatch.setattr(plugins, "_host", host)
    assert main(["plugins"]) == 0
    assert built == []
    assert "registers command 'run', which is a core command; ignored" in capsys.readouterr().err
    assert main(["greet", "world"]) == 3
    assert capsys.readouterr().out == "hello world\n"
