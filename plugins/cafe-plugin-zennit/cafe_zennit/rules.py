"""An LRP rule zennit does not have: the epsilon rule on a LayerNorm with its standard deviation held constant.

zennit's composites give no rule to ``LayerNorm``, so its plain gradient would be passed on as if it were
relevance. With the standard deviation treated as a constant (the identity rule of normalisation used by
LXT and AttnLRP), a LayerNorm is an affine map of its input, ``y = C x / s * w + b`` with ``C`` the mean
subtraction, and the epsilon rule applies to it like to any linear layer: the bias ``b`` and the stabiliser
absorb relevance, the rest is passed on.
"""

from __future__ import annotations

import torch
from torch import nn
from zennit.core import Hook, stabilize

__all__ = ["LayerNormEpsilon", "linearised_layer_norm"]


def linearised_layer_norm(norm: nn.LayerNorm, x: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """``norm(x)`` computed with the standard deviation detached from the graph.

    Parameters
    ----------
    norm : torch.nn.LayerNorm
        The module (``normalized_shape``, ``eps``, ``weight``, ``bias``).
    x : torch.Tensor
        Its input.
    channels_first : bool
        Normalise over dimension 1 of ``[B, C, H, W]`` (timm's ``LayerNorm2d``) rather than over the last
        ``len(normalized_shape)`` dimensions.

    Returns
    -------
    torch.Tensor
        The module's output, whose gradient treats the standard deviation as a constant.
    """
    dims = (1,) if channels_first else tuple(range(-len(norm.normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = centred.pow(2).mean(dim=dims, keepdim=True).add(norm.eps).sqrt()
    out = centred / std.detach()
    shape = (-1, 1, 1) if channels_first else tuple(norm.normalized_shape)
    if norm.weight is not None:
        out = out * norm.weight.reshape(shape)
    if norm.bias is not None:
        out = out + norm.bias.reshape(shape)
    return out


class LayerNormEpsilon(Hook):
    """Epsilon rule on a LayerNorm linearised at its input (standard deviation held constant).

    ``R_in = x * J^T (R_out / (y + epsilon * sign(y)))`` with ``J`` the Jacobian of the linearised norm: the
    relevance of the output is shared among the inputs in proportion to their contributions, and the bias
    keeps its share.

    Parameters
    ----------
    epsilon : float
        Stabiliser of the denominator.
    channels_first : bool
        The norm runs over dimension 1 of ``[B, C, H, W]`` (timm's ``LayerNorm2d``).
    """

    def __init__(self, epsilon: float = 1e-6, channels_first: bool = False) -> None:
        super().__init__()
        self.epsilon = float(epsilon)
        self.channels_first = bool(channels_first)

    def copy(self) -> "LayerNormEpsilon":
        """A fresh hook with the same settings (zennit copies one per module)."""
        return LayerNormEpsilon(self.epsilon, self.channels_first)

    def forward(self, module: nn.Module, input: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        """Keep the input for the backward pass."""
        self.stored_tensors["input"] = input

    def backward(self, module: nn.Module, grad_input, grad_output) -> tuple[torch.Tensor]:
        """The relevance of the input, from the relevance ``grad_output`` of the output."""
        x = self.stored_tensors["input"][0].detach().requires_grad_(True)
        with torch.enable_grad():
            out = linearised_layer_norm(module, x, self.channels_first)
            (grad,) = torch.autograd.grad(out, x, grad_output[0] / stabilize(out.detach(), self.epsilon))
        return (x.detach() * grad,)
