"""Interlayer attributors: gradient x input, integrated gradients, AttnLRP/CP-LRP, and two references.

Each explains a :class:`~cafe_interlayer.readout.LatentReadout` at layer ``L`` by the latents of a source SAE
at ``L' < L`` through the SAE path (:mod:`cafe_interlayer.splice`), returning an
:class:`~cafe_interlayer.attribution.InterlayerAttribution`. With ``g`` the (possibly rule-modified) gradient
of the target at the spliced hidden state ``h_hat = recon(z') + e``:

* latent ``j`` at token ``t``: ``z'_tj * (dh_hat/dz'_tj . g)`` (the decoder is affine, so this is LRP-0 on it),
* the error at token ``t``: ``e_t . g``, the decoder bias: ``recon(0)_t . g``, an unread token ``u``: ``u . g``,

which add up to ``h_hat . g``, the relevance LRP gives the hidden state itself.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cafe_core.protocols import RunContext

from .attribution import InterlayerAttribution, concatenate
from .errors import InterlayerError
from .path_gradients import PathGradients, Rules, path_gradients, path_values
from .readout import LatentReadout
from .splice import Source, splice_problem

__all__ = [
    "COUNTERPARTS",
    "METHODS",
    "Activation",
    "GradientXInput",
    "IntegratedGradients",
    "InterlayerAttnLRP",
    "InterlayerCPLRP",
    "RandomRanking",
    "build_method",
]


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntegratedGradientsParams(BaseModel):
    """Parameters of :class:`IntegratedGradients`: ``n_steps``, the Gauss-Legendre points of the path integral."""

    model_config = ConfigDict(extra="forbid")

    n_steps: int = Field(32, ge=1)


class LRPParams(BaseModel):
    """Parameters of the LRP attributors: ``gamma`` of the blocks' ``Linear`` layers (0: LRP-0)."""

    model_config = ConfigDict(extra="forbid")

    gamma: float = Field(0.0, ge=0.0, allow_inf_nan=False)


def _relevance(g: PathGradients, absorbed: torch.Tensor, covered: list[int], others: list[int],
               original: torch.Tensor) -> InterlayerAttribution:
    """Gradient x input at every node of the path (see the module's description)."""
    return InterlayerAttribution(
        latents=(g.latents * g.latents_grad).detach(),
        activations=original.detach(),
        error=(g.error * g.error_grad).sum(-1).detach(),
        bias=(g.bias * g.error_grad).flatten(1).sum(1).detach(),
        uncovered=(g.uncovered * g.uncovered_grad).sum(-1).detach(),
        absorbed=absorbed.detach(),
        value=g.value,
        covered=covered,
        uncovered_positions=others,
    )


class _Method:
    """Chunking shared by every method: rows in chunks of ``context.batch_size`` images."""

    name = ""
    conserves_relevance = False
    needs_grad = True

    def check_compatible(self, source: Source) -> list[str]:
        """Problems that stop this method from explaining through ``source``'s path (``[]`` when none)."""
        problem = splice_problem(source.backbone, source.sae, source.layer)
        return [problem] if problem else []

    def attribute(self, source: Source, readout: LatentReadout, x: torch.Tensor,
                  context: RunContext) -> InterlayerAttribution:
        """Relevance of each row's readout over the source latents and the path's other nodes.

        Parameters
        ----------
        source : Source
            The source SAE at an earlier layer than ``readout.layer``.
        readout : LatentReadout
            The target of each row.
        x : torch.Tensor
            Model inputs ``[N, 3, H, W]``.
        context : RunContext
            ``batch_size`` bounds the images of a pass; ``seed`` seeds the random reference.

        Returns
        -------
        InterlayerAttribution
            With ``info["conservation_error"]``.
        """
        if len(readout) != len(x):
            raise ValueError(f"input has {len(x)} rows but the readout has {len(readout)}")
        parts = [self._chunk(source, readout.select(rows), x[rows], context) for rows in context.chunks(len(x))]
        return concatenate(parts).with_conservation()

    def _chunk(self, source, readout, x, context) -> InterlayerAttribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GradientXInput(_Method):
    """Gradient x input at the source latents: ``z' * dz/dz'`` (plain gradients through blocks ``L'+1..L``)."""

    name = "gradient_x_input"
    _rules: Rules | None = None

    def _chunk(self, source, readout, x, context):
        g = path_gradients(source, readout, x, rules=self._rules)
        covered, others = source.positions
        return _relevance(g, g.probe_grad + g.readout_absorbed, covered, others, g.original)


class _LRP(GradientXInput):
    """LRP through the blocks between the two layers with the rules of cafe-plugin-attnlrp."""

    attention_rule = "attnlrp"

    def __init__(self, gamma: float = 0.0) -> None:
        self.gamma = float(gamma)

    def check_compatible(self, source: Source) -> list[str]:
        """As :meth:`_Method.check_compatible`, plus blocks with an LRP rule (cafe-plugin-attnlrp's check)."""
        problems = super().check_compatible(source)
        try:
            from cafe_attnlrp.patching import unsupported_parts
        except ImportError:
            return problems + [f"{self.name} needs cafe-plugin-attnlrp: pip install cafe-plugin-attnlrp"]
        return problems + unsupported_parts(source.backbone.model, layer=None, who=self.attention_rule)

    def _rules(self, source: Source, layer: int):
        from cafe_attnlrp.patching import lrp_rules

        trailing = getattr(source.backbone, "trailing_modules", None)
        names = tuple(trailing(layer)) if callable(trailing) else ()
        return lrp_rules(source.backbone.model, layer, self.attention_rule, self.gamma, names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gamma={self.gamma})"


class InterlayerAttnLRP(_LRP):
    """AttnLRP from the target latent to the source latents (rules of cafe-plugin-attnlrp; not conservative
    through the softmax: ``info["conservation_error"]`` says by how much)."""

    name = "attnlrp"
    attention_rule = "attnlrp"


class InterlayerCPLRP(_LRP):
    """CP-LRP from the target latent to the source latents: relevance is conserved exactly across the source
    latents, the error node, the decoder bias, the unread tokens and the biases of the blocks between the two
    layers and of the target SAE's encoder (``absorbed``)."""

    name = "cp_lrp"
    attention_rule = "cp_lrp"
    conserves_relevance = True


class IntegratedGradients(_Method):
    """Integrated gradients along ``(z', e) -> (a z', a e)``, ``a`` from 0 to 1 (Gauss-Legendre).

    The path starts at the reconstruction of no latents and no error (the decoder bias at every token the
    source SAE reads; unread tokens keep their value and get no relevance), so the latents and the error
    share ``f(x) - f(start)`` (completeness, up to the quadrature's error: ``info["delta"]``); ``absorbed``
    holds ``f(start)``.

    Parameters
    ----------
    n_steps : int
        Points of the quadrature.
    """

    name = "integrated_gradients"

    def __init__(self, n_steps: int = 32) -> None:
        self.n_steps = int(n_steps)

    def _chunk(self, source, readout, x, context):
        nodes, weights = np.polynomial.legendre.leggauss(self.n_steps)
        alphas = torch.as_tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device)
        weights = torch.as_tensor(weights / 2, dtype=torch.float64)
        value, leaves = path_values(source, readout, x)
        start, _ = path_values(source, readout, x, edit=lambda z, e: (torch.zeros_like(z), torch.zeros_like(e)))
        latents_grad = torch.zeros(leaves.latents.shape, dtype=torch.float64, device=x.device)
        error_grad = torch.zeros(leaves.error.shape, dtype=torch.float64, device=x.device)
        n, s = len(x), self.n_steps
        for items in RunContext(batch_size=context.batch_size).chunks(n * s):
            index = torch.arange(n * s)[items]
            rows, steps = index // s, index % s
            alpha = alphas[steps.to(x.device)][:, None, None]
            g = path_gradients(source, readout.select(rows), x[rows], edit=lambda z, e: (z * alpha, e * alpha))
            w = weights[steps].to(x.device)[:, None, None]
            latents_grad.index_add_(0, rows.to(x.device), w * g.latents_grad.double())
            error_grad.index_add_(0, rows.to(x.device), w * g.error_grad.double())
        covered, others = source.positions
        latents = (leaves.original.double() * latents_grad).to(x.dtype)
        error = (leaves.original_error.double() * error_grad).sum(-1).to(x.dtype)
        attribution = InterlayerAttribution(
            latents=latents, activations=leaves.original, error=error, bias=torch.zeros_like(value),
            uncovered=value.new_zeros(n, len(others)), absorbed=start, value=value, covered=covered,
            uncovered_positions=others,
        )
        change = value - start
        delta = latents.flatten(1).sum(1) + error.sum(1) - change
        relative = torch.where(change.abs() > 0, delta.abs() / change.abs().clamp_min(1e-300),
                               torch.full_like(delta, float("nan")))
        attribution.info.update(delta=delta, relative_delta=relative, start_value=start)
        return attribution

    def __repr__(self) -> str:
        return f"IntegratedGradients(n_steps={self.n_steps})"


class Activation(_Method):
    """The naive view: each source latent's relevance is its own activation ``z'`` (no backward pass)."""

    name = "activation"
    needs_grad = False

    def _chunk(self, source, readout, x, context):
        value, leaves = path_values(source, readout, x)
        covered, others = source.positions
        zeros = value.new_zeros(len(x))
        return InterlayerAttribution(
            latents=leaves.original.clone(), activations=leaves.original, error=zeros.new_zeros(len(x), len(covered)),
            bias=zeros, uncovered=zeros.new_zeros(len(x), len(others)), absorbed=zeros, value=value,
            covered=covered, uncovered_positions=others,
        )


class RandomRanking(Activation):
    """A random ranking: uniform values on the active (latent, token) pairs, seeded by the run's seed."""

    name = "random"

    def attribute(self, source, readout, x, context):
        """As :meth:`_Method.attribute`; the values are drawn in row order from ``context.generator()``."""
        self._generator = context.generator()
        return super().attribute(source, readout, x, context)

    def _chunk(self, source, readout, x, context):
        out = super()._chunk(source, readout, x, context)
        noise = torch.rand(out.activations.shape, generator=self._generator).to(out.activations)
        out.latents = torch.where(out.activations > 0, noise, torch.zeros_like(noise))
        return out


METHODS: dict[str, tuple[type, type[BaseModel]]] = {
    "gradient_x_input": (GradientXInput, _NoParams),
    "integrated_gradients": (IntegratedGradients, IntegratedGradientsParams),
    "attnlrp": (InterlayerAttnLRP, LRPParams),
    "cp_lrp": (InterlayerCPLRP, LRPParams),
    "activation": (Activation, _NoParams),
    "random": (RandomRanking, _NoParams),
}
"""Interlayer attributors by name, with their params models."""

COUNTERPARTS: dict[str, tuple[str, Sequence[str]]] = {
    "activation_map": ("activation", ()),
    "gradient_x_input": ("gradient_x_input", ()),
    "input_x_gradient": ("gradient_x_input", ()),
    "integrated_gradients": ("integrated_gradients", ("n_steps",)),
    "attnlrp": ("attnlrp", ("gamma",)),
    "cp_lrp": ("cp_lrp", ("gamma",)),
    "random": ("random", ()),
}
"""A run spec's attributor (registered name) -> its interlayer counterpart and the params carried over."""


def build_method(name: str, params: dict[str, Any] | None = None) -> Any:
    """The interlayer attributor ``name`` built with validated ``params``.

    Raises
    ------
    InterlayerError
        For an unknown name or invalid params.
    """
    if name not in METHODS:
        raise InterlayerError(f"unknown interlayer attributor {name!r}; available: {', '.join(METHODS)}")
    factory, model = METHODS[name]
    try:
        checked = model(**(params or {}))
    except Exception as exc:  # pydantic's ValidationError, shown as one line
        raise InterlayerError(f"interlayer attributor {name!r}: {exc}".replace("\n", " ")) from None
    return factory(**checked.model_dump())
