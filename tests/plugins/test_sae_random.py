"""The untrained ``random`` SAE: reproducible from its seed, frozen, and conformant."""

import pytest
import torch
from pydantic import ValidationError

from cafe_core.plugins import PluginHost
from cafe_core.testing import check_sae


@pytest.fixture(scope="module")
def random_sae():
    return PluginHost().registry("sae").get("random")


def test_same_seed_same_weights_other_seed_other_weights(random_sae):
    a = random_sae.build({"d_in": 16, "d_sae": 64, "layer": 2, "seed": 3})
    b = random_sae.build({"d_in": 16, "d_sae": 64, "layer": 2, "seed": 3})
    c = random_sae.build({"d_in": 16, "d_sae": 64, "layer": 2, "seed": 4})
    assert torch.equal(a.W_e, b.W_e) and not torch.equal(a.W_e, c.W_e)
    assert (a.d_in, a.d_sae, a.layer) == (16, 64, 2)
    assert not any(p.requires_grad for p in a.parameters())


def test_random_topk_keeps_k_latents(random_sae):
    sae = random_sae.build({"d_in": 16, "d_sae": 64, "layer": 0, "architecture": "topk", "k": 5})
    h = torch.randn(7, 16, generator=torch.Generator().manual_seed(0))
    assert ((sae.encode(h) > 0).sum(1) <= 5).all()
    check_sae(sae, h)


def test_random_sae_records_its_tokens(random_sae):
    assert random_sae.build({"d_in": 8, "d_sae": 16, "layer": 0}).tokens == "patch"
    sae = random_sae.build({"d_in": 8, "d_sae": 16, "layer": 0, "tokens": "cls"})
    assert (sae.tokens, sae.site) == ("cls", "resid_post")


def test_params_are_checked(random_sae):
    with pytest.raises(ValidationError, match="needs k"):
        random_sae.validate({"d_in": 16, "d_sae": 64, "layer": 0, "architecture": "topk"})
    with pytest.raises(ValidationError, match="topk. only"):
        random_sae.validate({"d_in": 16, "d_sae": 64, "layer": 0, "k": 3})
    with pytest.raises(ValidationError):
        random_sae.validate({"d_in": 0, "d_sae": 64, "layer": 0})
    with pytest.raises(ValidationError, match="k = 65 is more than d_sae = 64"):
        random_sae.validate({"d_in": 16, "d_sae": 64, "layer": 0, "architecture": "topk", "k": 65})
