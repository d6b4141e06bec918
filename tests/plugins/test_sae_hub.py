"""``hf://owner/repo/path`` checkpoints resolve through huggingface_hub's cache.

The test builds a hub cache the way huggingface_hub lays it out (``models--owner--repo/refs/main``,
``snapshots/<commit>/...`` symlinked into ``blobs/``) and loads from it in a fresh interpreter with
``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at it, so huggingface_hub's own resolution code runs and
nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from cafe_core.plugins import PluginHost

pytest.importorskip("huggingface_hub")

REPO, COMMIT = "vision-owner/vit-saes", "0123456789abcdef0123456789abcdef01234567"
D_IN, D_SAE = 8, 24


def _saelens_folder(folder):
    g = torch.Generator().manual_seed(0)
    tensors = {"W_enc": torch.randn(D_IN, D_SAE, generator=g), "b_enc": torch.randn(D_SAE, generator=g),
               "W_dec": torch.randn(D_SAE, D_IN, generator=g), "b_dec": torch.randn(D_IN, generator=g),
               "threshold": torch.rand(D_SAE, generator=g)}
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "layer_norm", "reshape_activations": "none", "architecture": "jumprelu",
           "metadata": {"sae_lens_version": "6.12.1", "hook_name": "blocks.7.hook_resid_post"}}
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


def _hub_cache(cache, files):
    """Lay ``files`` ({path in repo: bytes}) out as huggingface_hub caches a snapshot of REPO at COMMIT."""
    storage = cache / f"models--{REPO.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)
    for inner, content in files.items():
        digest = hashlib.sha256(content).hexdigest()
        blob = storage / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = storage / "snapshots" / COMMIT / inner
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


LOADER = """
import json, sys
import numpy as np, torch
from cafe_core.plugins import PluginHost
from cafe_core.resolve import resolve
from cafe_core.spec import load_spec

spec, base = load_spec(sys.argv[1])
sae = resolve(spec, PluginHost(strict=True), base)["sae"][0].build()
h = torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], sae.encode(h).detach().numpy())
print(json.dumps({"layer": sae.layer, "site": sae.site, "tokens": sae.tokens, "source": sae.extra["source"]["path"]}))
"""


def _run_offline(tmp_path, uri, cache):
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'[backbone]\nname = "toy_vit"\n\n[sae]\nname = "file"\npath = "{uri}"\ntokens = "patch"\n\n'
        '[dataset]\nname = "shapes"\nsize = 2\n\n[targets]\nlatents = [0]\n\n[[attributors]]\nname = "random"\n'
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run(
        [sys.executable, "-c", LOADER, str(spec), str(tmp_path / "h.npy"), str(tmp_path / "z.npy")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )


def test_a_hub_path_loads_from_the_cache_offline(tmp_path):
    local = _saelens_folder(tmp_path / "published" / "layer_7")
    files = {f"layer_7/{path.name}": path.read_bytes() for path in local.iterdir()}
    files["README.md"] = b"# SAEs\n"
    _hub_cache(tmp_path / "cache", files)
    h = np.random.default_rng(3).normal(size=(20, D_IN)).astype(np.float32) + 2.0
    np.save(tmp_path / "h.npy", h)

    result = _run_offline(tmp_path, f"hf://{REPO}/layer_7", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout.strip().splitlines()[-1])
    assert described == {"layer": 7, "site": "resid_post", "tokens": "patch", "source": f"hf://{REPO}/layer_7"}
    direct = PluginHost(strict=True).registry("sae").get("file").build({"path": str(local), "tokens": "patch"})
    expected = direct.encode(torch.from_numpy(h)).detach().numpy()
    assert (expected > 0).any()
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), expected)

    result = _run_offline(tmp_path, f"hf://{REPO}/layer_7/sae_weights.safetensors", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), expected)


def test_a_hub_path_missing_from_the_cache_offline_is_reported(tmp_path):
    _hub_cache(tmp_path / "cache", {"README.md": b"# SAEs\n"})
    np.save(tmp_path / "h.npy", np.zeros((1, D_IN), dtype=np.float32))
    result = _run_offline(tmp_path, f"hf://{REPO}/layer_3", tmp_path / "cache")
    assert result.returncode != 0
    assert f"hf://{REPO}/layer_3 is not in the repository's snapshot" in result.stderr
    result = _run_offline(tmp_path, "hf://vision-owner/never-fetched/layer_3", tmp_path / "cache")
    assert "cannot fetch hf://vision-owner/never-fetched/layer_3 from the Hugging Face Hub" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr


@pytest.mark.parametrize("uri", ["hf://only-owner", "hf://owner/bad repo/x", "hf://owner/repo@/x", "hf://o/r/../x"])
def test_malformed_hub_paths_are_refused_when_validating(uri):
    with pytest.raises(ValidationError, match="hf://"):
        PluginHost(strict=True).registry("sae").get("file").validate({"path": uri})
