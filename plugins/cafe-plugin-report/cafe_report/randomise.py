"""Randomised models for the sanity checks: a backbone with redrawn weights, a random SAE, random directions."""

from __future__ import annotations

import copy
import zlib
from typing import Any, Callable

import torch

__all__ = ["PreActivation", "RandomDirections", "encoder_input", "random_sae", "randomised_backbone"]


def randomised_backbone(backbone: Any, seed: int) -> Any:
    """A copy of ``backbone`` whose every weight tensor is redrawn, the original left untouched.

    Each parameter tensor is replaced by draws from a normal distribution with that tensor's own mean and
    standard deviation (a one-element tensor keeps its value), from a CPU generator seeded with ``seed``: the
    model keeps the scale of its activations but loses everything it learnt.
    """
    randomised = copy.deepcopy(backbone)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for parameter in randomised.model.parameters():
            if parameter.numel() < 2:
                continue
            values = parameter.detach().double().cpu()
            drawn = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_((drawn * values.std() + values.mean()).to(parameter))
    return randomised


def random_sae(sae: Any, seed: int, host: Any) -> Any:
    """The registered ``random`` SAE with the size, layer and tokens of ``sae``, on its device and dtype.

    Its weights are drawn from a seed derived from ``seed`` (a CRC of it), not ``seed`` itself, so that an SAE
    that was itself drawn from the run's seed is not drawn again.

    Raises
    ------
    cafe_core.errors.UnknownComponentError
        If no plugin registers ``random`` (it comes with cafe-plugin-sae).
    """
    derived = zlib.crc32(f"cafe-report random SAE {int(seed)}".encode())
    params = {"d_in": int(sae.d_in), "d_sae": int(sae.d_sae), "layer": int(sae.layer), "seed": derived}
    tokens = getattr(sae, "tokens", None)
    if tokens in ("patch", "cls", "all"):
        params["tokens"] = tokens
    built = host.registry("sae").get("random").build(params)
    reference = next((p for p in getattr(sae, "parameters", lambda: iter(()))()), None)
    if reference is not None:
        built = built.to(device=reference.device, dtype=reference.dtype)
    return built


def encoder_input(sae: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How ``sae`` prepares a token before its encoder (``normalize_input(h) - b_d``), when it exposes both."""
    normalize, b_d = getattr(sae, "normalize_input", None), getattr(sae, "b_d", None)
    if callable(normalize) and isinstance(b_d, torch.Tensor):
        return lambda h: normalize(h) - b_d.to(h)
    return None


class RandomDirections:
    """Random latents of an SAE's form: latent ``i`` is ``ReLU(sign_i * (u_i . prepare(h)) + bias_i)``.

    Parameters
    ----------
    directions : torch.Tensor
        ``[M, d_in]`` unit vectors ``u_i``: random encoder rows.
    layer : int
        The block whose output it reads.
    prepare : callable, optional
        What the token goes through first: the SAE's own input preparation (:func:`encoder_input`), so that a
        direction reads the token as the SAE's latents do; the identity by default.
    signs, bias : torch.Tensor, optional
        ``[M]`` each: +1 or -1, and the encoder bias (default +1 and 0). :meth:`anchored` sets them so that
        each latent is zero on a reference input (the blank image) and positive on the explained one.
    """

    def __init__(self, directions: torch.Tensor, layer: int,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 signs: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> None:
        m = directions.shape[0]
        self.directions = directions
        self.signs = torch.ones(m, dtype=directions.dtype) if signs is None else signs.to(directions)
        self.bias = torch.zeros(m, dtype=directions.dtype) if bias is None else bias.to(directions)
        self.d_sae, self.d_in = directions.shape
        self.layer = int(layer)
        self.tokens = "all"
        self.prepare = prepare or (lambda h: h)

    @classmethod
    def draw(cls, count: int, d_in: int, layer: int, seed: int,
             prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> "RandomDirections":
        """``count`` random unit directions from a CPU generator seeded with ``seed``."""
        generator = torch.Generator().manual_seed(int(seed))
        directions = torch.randn(count, d_in, generator=generator, dtype=torch.float64)
        return cls((directions / directions.norm(dim=1, keepdim=True)).float(), layer, prepare)

    def anchored(self, explained: torch.Tensor, reference: torch.Tensor) -> "RandomDirections":
        """The latents with bias and sign set from tokens ``[M, d_in]``: zero at ``reference``, positive at
        ``explained``.

        Latent ``i`` then reads ``ReLU(|u_i . (prepare(explained_i) - prepare(reference_i))|)`` on the
        explained token, like an SAE latent that is silent on the blank image and fires on the image.
        """
        latents = torch.arange(self.d_sae, device=explained.device)
        with torch.no_grad():
            at_explained = self._project(explained, latents)
            at_reference = self._project(reference, latents)
        signs = torch.where(at_explained >= at_reference, 1.0, -1.0).to(at_explained)
        return RandomDirections(self.directions, self.layer, self.prepare, signs.cpu(), (-signs * at_reference).cpu())

    def to(self, device: Any = None, dtype: Any = None) -> "RandomDirections":
        self.directions = self.directions.to(device=device, dtype=dtype)
        return self

    def _project(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return (self.prepare(h) * self.directions.to(h)[latents]).sum(-1)

    def pre_activation_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``sign_i * (u_i . prepare(h)) + bias_i`` of each row."""
        signs, bias = self.signs.to(h)[latents], self.bias.to(h)[latents]
        return signs * self._project(h, latents) + bias

    def encode_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``ReLU(sign_i * (u_i . prepare(h)) + bias_i)`` of each row."""
        return torch.relu(self.pre_activation_latents(h, latents))

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Every latent of ``h [..., d_in]``."""
        pre = (self.prepare(h) @ self.directions.to(h).T) * self.signs.to(h) + self.bias.to(h)
        return torch.relu(pre)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z @ U``: the directions weighted by the latents."""
        return z @ self.directions.to(z)


class PreActivation:
    """An SAE seen through its latents' pre-activations (the value before the nonlinearity).

    A randomised model usually silences a trained latent (its ReLU output is 0 with a zero gradient), which
    leaves nothing to explain; the pre-activation stays defined. Where the latent is active, the gradient
    of the two is the same. An SAE without ``pre_activation_latents`` is used as it is.
    """

    def __init__(self, sae: Any) -> None:
        self.sae = sae
        self.d_in, self.d_sae, self.layer = sae.d_in, sae.d_sae, sae.layer
        self.tokens = getattr(sae, "tokens", "all")
        self._read = getattr(sae, "pre_activation_latents", None) or sae.encode_latents

    def encode_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The pre-activation of latent ``latents[i]`` of ``h[i]``."""
        return self._read(h, latents)

    def pre_activation_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The same as :meth:`encode_latents`."""
        return self._read(h, latents)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Every latent of ``h`` (as the SAE computes them)."""
        return self.sae.encode(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The SAE's reconstruction of ``z``."""
        return self.sae.decode(z)

    def to(self, *args: Any, **kwargs: Any) -> "PreActivation":
        self.sae = self.sae.to(*args, **kwargs)
        return self
