"""One forward and backward pass through the SAE path: the gradients of a readout at the source leaves."""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch

from cafe_core.gradients import frozen

from .readout import LatentReadout
from .splice import Edit, Source, SourceLeaves, sae_path

__all__ = ["PathGradients", "Rules", "path_gradients", "path_values"]

Rules = Callable[[Source, int], ContextManager[Any]]
"""``(source, target_layer) -> context manager`` that patches the model with modified backward rules while it
is open and yields an object whose ``tensor`` attribute may hold a relevance probe (LRP), or ``None``."""


@dataclass
class PathGradients:
    """Values and gradients of one pass (rows as given).

    Attributes
    ----------
    value : torch.Tensor
        ``[N]`` the readout.
    latents, latents_grad : torch.Tensor
        ``[N, Tc, d_sae]`` the source latents as spliced in, and the readout's gradient at them.
    error, error_grad : torch.Tensor
        ``[N, Tc, D]`` the error as spliced in, and the gradient (that of the spliced hidden state).
    uncovered, uncovered_grad : torch.Tensor
        ``[N, Tu, D]`` the tokens the SAE does not read, and their gradient.
    bias : torch.Tensor
        ``[N, Tc, D]`` the reconstruction of no latents.
    original : torch.Tensor
        ``[N, Tc, d_sae]`` the latents before any edit.
    readout_absorbed : torch.Tensor
        ``[N]`` ``f - sum(h_L * df/dh_L)``: what the target SAE's encoder biases take under LRP-0.
    probe_grad : torch.Tensor
        ``[N]`` the relevance the rules' probe recorded (zeros without one).
    """

    value: torch.Tensor
    latents: torch.Tensor
    latents_grad: torch.Tensor
    error: torch.Tensor
    error_grad: torch.Tensor
    uncovered: torch.Tensor
    uncovered_grad: torch.Tensor
    bias: torch.Tensor
    original: torch.Tensor
    readout_absorbed: torch.Tensor
    probe_grad: torch.Tensor


def path_gradients(source: Source, readout: LatentReadout, x: torch.Tensor, *, edit: Edit | None = None,
                   rules: Rules | None = None) -> PathGradients:
    """Gradients of ``readout`` at the source leaves, for the rows of ``x [N, 3, H, W]`` in one pass.

    The model's and both SAEs' parameters do not require grad during the call (no weight gradient is
    computed); the hook and any patch are removed on exit.
    """
    if readout.layer <= source.layer:
        raise ValueError(f"the target's layer ({readout.layer}) must come after the source's ({source.layer})")
    backbone = source.backbone
    with ExitStack() as stack:
        stack.enter_context(frozen(getattr(backbone, "model", None), source.sae, readout.sae))
        made = stack.enter_context(sae_path(source, edit))
        probe = stack.enter_context(rules(source, readout.layer) if rules is not None else nullcontext())
        if probe is not None:
            probe.tensor = x.new_zeros(len(x), requires_grad=True)
        with torch.enable_grad():
            h = backbone.forward_to(x.detach(), readout.layer)
            value = readout(h)
        leaves = made[-1]
        inputs = [leaves.latents, leaves.error, leaves.uncovered, h]
        if probe is not None:
            inputs.append(probe.tensor)
        grads = torch.autograd.grad(value.sum(), inputs, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)]
    readout_absorbed = value.detach() - (h.detach() * grads[3]).flatten(1).sum(1)
    probe_grad = grads[4].detach() if probe is not None else torch.zeros_like(value.detach())
    return PathGradients(
        value=value.detach(), latents=leaves.latents.detach(), latents_grad=grads[0],
        error=leaves.error.detach(), error_grad=grads[1], uncovered=leaves.uncovered.detach(),
        uncovered_grad=grads[2], bias=leaves.bias, original=leaves.original,
        readout_absorbed=readout_absorbed, probe_grad=probe_grad,
    )


def path_values(source: Source, readout: LatentReadout, x: torch.Tensor, *,
                edit: Edit | None = None) -> tuple[torch.Tensor, SourceLeaves]:
    """The readout ``[N]`` of the rows of ``x`` with the SAE path spliced in (and edited), without gradients,
    and the leaves of that pass."""
    with torch.no_grad(), sae_path(source, edit, requires_grad=False) as made:
        value = readout(source.backbone.forward_to(x, readout.layer))
    return value, made[-1]
