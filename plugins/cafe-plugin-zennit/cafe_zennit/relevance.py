"""Relevance of SAE latents with a zennit composite applied to the backbone for the duration of one call.

How relevance flows
-------------------
1. The SAE part: ``z`` is a function of the token ``h_k`` read at the target position; its relevance is
   passed to the tokens by gradient x input on the encoder row (LRP-0), ``R_h = h * dz/dh``. What does not
   reach the tokens is absorbed by the encoder's biases (``b_e`` and the centering ``b_d``).
2. The backbone part: with zennit's hooks in place, the tensor autograd carries backward between hooked
   modules *is* the relevance (each rule returns ``R_in`` for its input), so ``R_h`` is fed as the gradient of
   the tokens and the gradient that arrives at the input is the pixel relevance (not input x gradient).
3. Bookkeeping: every rule's backward is wrapped to record, per row, the relevance that enters it minus the
   relevance it passes on. Modules without a hook (max pooling, reindexing, identities) pass relevance on
   unchanged, so ``z = pixels.sum() + absorbed - excess`` holds exactly when every residual sum and scaling is
   canonized; a missing canonizer shows up as a conservation error.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn
from zennit.core import Composite
from zennit.rules import AlphaBeta

from cafe_core.patches import pixels_to_patches
from cafe_core.protocols import Attribution, RunContext, TargetFunction

__all__ = ["RelevanceLedger", "composite_relevance", "registered"]

# Models with a composite registered by this module: registering a second one would stack the rules.
_ACTIVE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class RelevanceLedger:
    """Per-row relevance kept back by the rules of a registered composite during one backward pass.

    Attributes
    ----------
    absorbed : torch.Tensor or None
        ``[B]`` relevance that entered rules and was not passed on (biases, stabilisers), float64.
    excess : torch.Tensor or None
        ``[B]`` relevance created by rules that do not conserve it (alpha-beta: ``alpha * R`` where a neuron
        has no negative contribution), float64; may be negative.
    """

    def __init__(self, composite: Composite) -> None:
        self.absorbed: torch.Tensor | None = None
        self.excess: torch.Tensor | None = None
        self._recording = False
        for hook in list(composite.hook_refs):
            hook.backward = self._wrap(hook.backward, isinstance(hook, AlphaBeta))

    def start(self, rows: int, device: torch.device) -> None:
        """Start recording for a backward pass over ``rows`` rows."""
        self.absorbed = torch.zeros(rows, dtype=torch.float64, device=device)
        self.excess = torch.zeros(rows, dtype=torch.float64, device=device)
        self._recording = True

    def stop(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stop recording; returns ``(absorbed, excess)``."""
        self._recording = False
        return self.absorbed, self.excess

    def _wrap(self, backward: Callable, creates: bool) -> Callable:
        def recorded(module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
            result = backward(module, grad_input, grad_output)
            if self._recording and result is not None:
                parts = result if isinstance(result, tuple) else (result,)
                entering = _row_sums(grad_output[0])
                leaving = sum(_row_sums(r) for r in parts if r is not None)
                if creates:
                    self.excess += leaving - entering
                else:
                    self.absorbed += entering - leaving
            return result

        return recorded


def _row_sums(t: torch.Tensor) -> torch.Tensor:
    return t.detach().flatten(1).sum(1, dtype=torch.float64)


@contextmanager
def registered(model: nn.Module, composite: Composite) -> Iterator[RelevanceLedger]:
    """Register ``composite`` (its canonizers and hooks) on ``model`` for the ``with`` block.

    The canonizers are reverted and the hooks removed on exit, also when the block (or the registration)
    raises.

    Yields
    ------
    RelevanceLedger
        The bookkeeping of the composite's rules.

    Raises
    ------
    RuntimeError
        If the model already has a composite registered through this function.
    """
    if model in _ACTIVE:
        raise RuntimeError("the model already has an LRP composite registered; composites cannot be nested")
    _ACTIVE.add(model)
    try:
        composite.register(model)
        yield RelevanceLedger(composite)
    finally:
        composite.remove()
        _ACTIVE.discard(model)


def composite_relevance(
    target: TargetFunction,
    x: torch.Tensor,
    composite: Composite,
    context: RunContext,
    verify: Callable[[nn.Module, list[Any]], None] | None = None,
) -> Attribution:
    """Explain the rows of ``x`` with ``composite`` registered on the backbone's model for this call only.

    Parameters
    ----------
    target : TargetFunction
        The latent and position of each row; only the backbone's blocks ``0..layer`` run.
    x : torch.Tensor
        Model inputs ``[B, 3, H, W]``.
    composite : zennit.core.Composite
        A fresh composite (rules and canonizers); it is registered on ``target.backbone.model`` and removed
        before returning.
    context : RunContext
        ``batch_size`` bounds the rows per forward and backward pass.
    verify : callable, optional
        ``verify(model, applied_canonizers)``, called once the composite is registered (to refuse a model the
        canonizers did not fully reach).

    Returns
    -------
    Attribution
        ``heatmap [B, gh, gw]`` (pixel relevance summed over channels and within each patch of the
        backbone's ``patch_size``), ``pixels [B, H, W]``, and per row in ``info``: ``z``; ``relevance_sum``
        (of the heatmap); ``absorbed`` (by the SAE encoder's biases, the backbone's biases and the
        stabilisers); ``absorbed_sae`` (the SAE's part of it); ``excess`` (created by alpha-beta rules, 0
        for the others); ``conservation_error = z - relevance_sum - absorbed + excess``.
    """
    backbone = target.backbone
    model = backbone.model
    columns: dict[str, list[torch.Tensor]] = {key: [] for key in ("pixels", "z", "sae", "absorbed", "excess")}
    with registered(model, composite) as ledger:
        if verify is not None:
            verify(model, list(composite.handles))
        for rows in context.chunks(len(x)):
            part = target.select(rows)
            leaf = x[rows].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                tokens = part.tokens(leaf)
                held = tokens.detach().requires_grad_(True)
                z = part.from_tokens(held)
                (grad_tokens,) = torch.autograd.grad(z.sum(), held)
                into_tokens = held.detach() * grad_tokens
                ledger.start(len(leaf), leaf.device)
                (pixels,) = torch.autograd.grad(tokens, leaf, grad_outputs=into_tokens)
                absorbed, excess = ledger.stop()
            z = z.detach()
            columns["pixels"].append(pixels.detach().sum(dim=1))
            columns["z"].append(z)
            columns["sae"].append(z - into_tokens.flatten(1).sum(1).to(z))
            columns["absorbed"].append(absorbed.to(z))
            columns["excess"].append(excess.to(z))
    pixels = torch.cat(columns["pixels"])
    z, absorbed_sae = torch.cat(columns["z"]), torch.cat(columns["sae"])
    absorbed = torch.cat(columns["absorbed"]) + absorbed_sae
    excess = torch.cat(columns["excess"])
    relevance_sum = pixels.flatten(1).sum(1).to(z)
    return Attribution(
        heatmap=pixels_to_patches(pixels, backbone.patch_size),
        pixels=pixels,
        info={
            "z": z,
            "relevance_sum": relevance_sum,
            "absorbed": absorbed,
            "absorbed_sae": absorbed_sae,
            "excess": excess,
            "conservation_error": z - relevance_sum - absorbed + excess,
        },
    )
