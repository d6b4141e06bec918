"""Relative paths in params start at the spec file's folder; URIs are left for the component to resolve."""

import pathlib

from pydantic import BaseModel

from cafe_core.resolve import anchor_paths


class Params(BaseModel):
    path: str | pathlib.Path
    other: str = ""


def test_relative_paths_start_at_the_spec_folder_and_uris_stay_as_written(tmp_path):
    anchored = anchor_paths(Params, {"path": "weights/sae.pt", "other": "x/y"}, tmp_path)
    assert anchored == {"path": str(tmp_path / "weights" / "sae.pt"), "other": "x/y"}  # only path-typed fields
    uri = "hf://owner/repo@v1/blocks.9.hook_resid_post"
    assert anchor_paths(Params, {"path": uri}, tmp_path) == {"path": uri}
    assert anchor_paths(Params, {"path": "/abs/sae.pt"}, tmp_path) == {"path": "/abs/sae.pt"}
