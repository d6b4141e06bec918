"""Every failure ends in one line naming the component or file, the problem and the fix; runs resume after."""

import pytest

import cafe_core
from cafe_core.cli import main
from cafe_core.component_errors import ComponentError
from cafe_core.errors import CafeError, SpecError
from cafe_core.plugins import PluginHost

from test_cli import write_spec

pytestmark = pytest.mark.slow


def broken_plugin(failure):
    """A plugin whose attributor ``broken`` delegates to gradient_x_input but fails as ``failure`` says."""
    from types import SimpleNamespace

    from cafe_baselines.gradient_x_input import GradientXInput

    from cafe_core import hookimpl

    calls = []

    class Broken(GradientXInput):
        def attribute(self, target, x, context):
            calls.append(len(x))
            if failure == "raises" and len(calls) == 3:
                return {}["no such key"]  # a KeyError, as a plugin's own bug would raise
            if failure == "bare":
                return super().attribute(target, x, context).heatmap
            return super().attribute(target, x, context)

    @hookimpl
    def cafe_register_attributors(register):
        register("broken", Broken)

    return SimpleNamespace(cafe_register_attributors=cafe_register_attributors)


def host_with(failure):
    host = PluginHost()
    host.add(broken_plugin(failure), "broken")
    return host


def test_a_component_that_raises_mid_run_is_named_and_the_run_resumes(spec_dict, tmp_path):
    spec_dict["attributors"] = [{"name": "broken"}]
    with pytest.raises(ComponentError) as caught:
        cafe_core.run(spec_dict, tmp_path / "run", host=host_with("raises"))
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("attributor 'broken' failed while explaining") and "KeyError" in message
    assert "rerun the same command to resume" in message
    partial = cafe_core.Results.load(tmp_path / "run")
    assert len(partial.rows) == 2 * 2 * 2  # the first unit (2 images x 2 latents) x 2 metrics was committed
    resumed = cafe_core.run(spec_dict, tmp_path / "run", host=host_with(None))
    assert len(resumed.rows) == 5 * 2 * 2


def test_an_attributor_that_returns_a_bare_tensor_is_named(spec_dict, tmp_path):
    spec_dict["attributors"] = [{"name": "broken"}]
    with pytest.raises(CafeError, match="attributor 'broken' returned a Tensor, not an Attribution") as caught:
        cafe_core.run(spec_dict, tmp_path / "run", host=host_with("bare"))
    assert "image_id='img" in str(caught.value) and "report it" in str(caught.value)


def test_a_spec_that_is_a_directory_or_not_utf8_is_named(tmp_path):
    with pytest.raises(SpecError, match="is a directory; pass the path of a TOML spec file"):
        cafe_core.run(tmp_path)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[backbone]\nname = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(SpecError, match="latin1.toml is not UTF-8 text .* save it as UTF-8"):
        cafe_core.run(latin1)
    with pytest.raises(SpecError, match=r"not int \(123\); pass one of these"):
        cafe_core.run(123)


def test_a_spec_saved_with_a_byte_order_mark_is_read(spec_dict, tmp_path):
    from cafe_core.spec import load_spec

    plain = write_spec(tmp_path / "plain.toml", spec_dict)
    marked = tmp_path / "marked.toml"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load_spec(marked)[0] == load_spec(plain)[0]


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_out_that_is_a_file_or_lies_under_one_is_one_line(spec_dict, tmp_path, capsys, where):
    spec = write_spec(tmp_path / "spec.toml", spec_dict)
    blocking = tmp_path / "taken"
    blocking.write_text("not a directory")
    out = blocking if where == "file" else blocking / "run"
    assert main(["run", str(spec), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: cannot use {out} as a run directory: {blocking} is a file, not a directory; "
        "choose another output directory"
    ]


def test_the_traceback_is_shown_only_under_debug(tmp_path, capsys):
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "run")]) == 1
    plain = capsys.readouterr().err
    assert "Traceback" not in plain and "is a directory" in plain
    assert main(["--debug", "run", str(tmp_path), "--out", str(tmp_path / "run")]) == 1
    assert "Traceback" in capsys.readouterr().err
