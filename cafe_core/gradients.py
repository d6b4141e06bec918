"""Per-row input gradients of a target function, with one forward pass shared by the rows of one image.

Gradient x input and the LRP family explain a latent by one backward pass from it to the input. When a batch
explains many latents of the same image, the forward pass to the SAE's layer is the same for all of them,
and the map from the cotangent at the target token to the input gradient is linear. :func:`input_gradients`
uses both facts:

* ``"rows"``: every row on its own (the image repeated once per latent): one batched forward and backward.
* ``"shared"``: one forward per distinct image, then the vector-Jacobian products of its ``K`` rows in one
  batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``).
* ``"jacobian"``: one forward per distinct image; for each token, the ``D`` vector-Jacobian products of
  the unit cotangents (the token's Jacobian, ``D`` its width) are computed once, and each latent's gradient
  is its cotangent times that Jacobian. This beats ``"shared"`` when more than about ``D`` latents of one
  image are read at the same token.
* ``"auto"``: on a CPU, ``"rows"`` for images with fewer rows in the batch than :func:`shared_from` says,
  ``"shared"`` for the others, and the Jacobian for a token that more than :data:`JACOBIAN_FROM` times ``D``
  of an image's rows read. On a GPU, ``"rows"``: there a batch of repeated images runs at the device's
  throughput while the batched backward pass of ``"shared"`` costs about 3x as much per latent (measured on
  an H200, benchmarks/README.md).

All strategies return the same numbers up to floating-point rounding. Rows whose cotangent is zero (an
inactive ReLU latent) need no backward pass and get a zero gradient.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .batching import BATCHING, check_batching
from .context import RunContext
from .geometry import layer_grid, layer_width
from .target import TargetFunction

__all__ = [
    "BATCHING", "JACOBIAN_FROM", "RowGradients", "frozen", "identical_rows", "input_gradients", "shared_from"
]

# "auto" shares an image's forward once it has enough rows for the batched backward's fixed cost per op to pay
# off: from 2 rows when a layer's activation ([tokens, width]) has LARGE_ACTIVATION elements or more, from
# SMALL_MODEL_SHARED_FROM rows below (measured by the "latents per image" benchmarks: vit_small, 197 x 384,
# gains 1.2x at 2 rows per image; the embedded default, 65 x 128, still loses 1.07x at 16).
LARGE_ACTIVATION = 2**15
SMALL_MODEL_SHARED_FROM = 32

# "auto" switches a token to its Jacobian when more than JACOBIAN_FROM * D rows of one image read it: the
# crossover measured by the benchmarks (benchmarks/README.md).
JACOBIAN_FROM = 1.0

_SAME_SIZE_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

# Extra leaves a caller wants gradients of: called with the number of images of a forward pass, before it.
ExtraLeaves = Callable[[int], Sequence[torch.Tensor]]


@dataclass
class RowGradients:
    """What :func:`input_gradients` returns, one row per target row.

    Attributes
    ----------
    z : torch.Tensor
        ``[B]`` the target latents.
    inputs : torch.Tensor
        ``[B, 3, H, W]`` gradient of each row's latent with respect to its image.
    extras : list of torch.Tensor
        For each leaf made by ``extra_leaves``, the gradient of each row's latent with respect to its
        image's slice of that leaf, ``[B, *leaf.shape[1:]]``.
    token : torch.Tensor
        ``[B, D]`` the activation at each row's token.
    token_grad : torch.Tensor
        ``[B, D]`` the gradient of each row's latent with respect to that activation (the cotangent that
        the backward pass carries into the model).
    """

    z: torch.Tensor
    inputs: torch.Tensor
    extras: list[torch.Tensor]
    token: torch.Tensor
    token_grad: torch.Tensor


def identical_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Group the rows of ``x`` that hold exactly the same values.

    Parameters
    ----------
    x : torch.Tensor
        ``[B, ...]``.

    Returns
    -------
    first : torch.Tensor
        ``[U]`` index of the first row of each group, in order of first appearance.
    group : torch.Tensor
        ``[B]`` the group of each row: ``x[i]`` equals ``x[first[group[i]]]`` element for element.
    """
    flat = x.detach().reshape(len(x), -1)
    # A random projection of the raw bits finds candidate duplicates in one pass (integer sums wrap around
    # exactly, so a row's fingerprint does not depend on where it sits); candidates are compared exactly.
    bits = flat.contiguous().view(_SAME_SIZE_INTEGER[flat.element_size()]).to(torch.int64)
    weights = torch.randint(-(2**62), 2**62, (flat.shape[1],), generator=torch.Generator().manual_seed(0))
    fingerprint = (bits * weights.to(flat.device)).sum(1).tolist()
    first: list[int] = []
    group: list[int] = []
    seen: dict[int, list[int]] = {}
    for i, key in enumerate(fingerprint):
        for g in seen.get(key, []):
            if torch.equal(flat[i], flat[first[g]]):
                group.append(g)
                break
        else:
            seen.setdefault(key, []).append(len(first))
            group.append(len(first))
            first.append(i)
    return torch.tensor(first, dtype=torch.long), torch.tensor(group, dtype=torch.long)


@contextmanager
def frozen(*modules: object) -> Iterator[None]:
    """Turn off ``requires_grad`` on the modules' parameters for a while, and restore it exactly.

    A backward pass to the input alone then skips every weight gradient, which a parameter that requires
    grad would otherwise cost. Objects that are not ``torch.nn.Module`` are ignored.
    """
    params = [
        p for m in modules if isinstance(m, torch.nn.Module) for p in m.parameters() if p.requires_grad
    ]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def shared_from(target: TargetFunction, device: torch.device | None = None) -> int | float:
    """Rows of one image from which ``"auto"`` batching shares its forward pass (see :data:`LARGE_ACTIVATION`).

    Infinite on a CUDA ``device``, where repeating the image is faster for any number of rows.
    """
    if device is not None and device.type == "cuda":
        return float("inf")
    gh, gw = layer_grid(target.backbone, target.layer)
    elements = (len(target.backbone.prefix_tokens) + gh * gw) * layer_width(target.backbone, target.layer)
    return 2 if elements >= LARGE_ACTIVATION else SMALL_MODEL_SHARED_FROM


def _no_extras(n: int) -> list[torch.Tensor]:
    return []


class _Gradients:
    """Accumulates the rows of a :class:`RowGradients` as the strategies fill them in."""

    def __init__(self, x: torch.Tensor, width: int) -> None:
        self.z = x.new_zeros(len(x))
        self.inputs = torch.zeros_like(x)
        self.extras: list[torch.Tensor] = []
        self.token = x.new_zeros(len(x), width)
        self.token_grad = x.new_zeros(len(x), width)

    def allocate_extras(self, leaves: Sequence[torch.Tensor]) -> None:
        """Zero rows for the gradients of the caller's extra leaves (once, from the first forward's)."""
        if not self.extras:
            self.extras = [leaf.new_zeros(len(self.z), *leaf.shape[1:]) for leaf in leaves]

    def put(self, rows: torch.Tensor, inputs: torch.Tensor, extras: Sequence[torch.Tensor]) -> None:
        self.inputs[rows] = inputs.to(self.inputs)
        for target, value in zip(self.extras, extras):
            target[rows] = value.to(target)

    def result(self) -> RowGradients:
        return RowGradients(self.z, self.inputs, self.extras, self.token, self.token_grad)


def _token_cotangents(target: TargetFunction, h: torch.Tensor, rows: torch.Tensor):
    """``(z, token, dz/dtoken)`` of ``rows`` of the target, all reading image 0 of ``h [1, T, D]``."""
    token = h.detach()[0, target.positions[rows].to(h.device)].clone().requires_grad_(True)
    with torch.enable_grad():
        z = target.sae.encode_latents(token, target.latents[rows].to(h.device))
        (cotangent,) = torch.autograd.grad(z.sum(), token)
    return z.detach(), token.detach(), cotangent


def _batched_vjp(
    h: torch.Tensor, leaves: list[torch.Tensor], seeds: Callable[[int, int], torch.Tensor], n: int, chunk: int
) -> list[torch.Tensor]:
    """Vector-Jacobian products of ``h`` for ``n`` cotangents, made ``chunk`` at a time by ``seeds(start, stop)``."""
    parts: list[list[torch.Tensor]] = [[] for _ in leaves]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        grads = torch.autograd.grad(
            h, leaves, seeds(start, stop), retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        for i, (grad, leaf) in enumerate(zip(grads, leaves)):
            parts[i].append(grad if grad is not None else leaf.new_zeros(stop - start, *leaf.shape))
    return [torch.cat(p) for p in parts]


def _shared_image(
    target: TargetFunction, x: torch.Tensor, rows: torch.Tensor, out: _Gradients, extra_leaves: ExtraLeaves,
    jacobian_from: float | None, chunk: int,
) -> None:
    """One forward of image ``x [1, 3, H, W]`` and the gradients of all its ``rows``."""
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        extras = list(extra_leaves(1))
        h = target.tokens(leaf)
    out.allocate_extras(extras)
    z, token, cotangent = _token_cotangents(target, h, rows)
    out.z[rows], out.token[rows], out.token_grad[rows] = z.to(out.z), token.to(out.token), cotangent.to(out.token)
    cotangent = cotangent.to(h)
    active = (cotangent.abs().sum(1) > 0).cpu()  # rows of an inactive latent have a zero gradient: no backward
    positions = target.positions[rows]
    leaves = [leaf, *extras]
    width = h.shape[-1]
    direct = torch.zeros(len(rows), dtype=torch.bool)
    for position in positions[active].unique().tolist():
        members = torch.nonzero(active & (positions == position)).flatten()
        if jacobian_from is None or len(members) <= jacobian_from * width:
            direct[members] = True
            continue

        def units(start: int, stop: int, position: int = position) -> torch.Tensor:
            seeds = h.new_zeros(stop - start, *h.shape)
            channels = torch.arange(start, stop)
            seeds[channels - start, 0, position, channels] = 1
            return seeds

        # The token's Jacobian, one unit cotangent per channel, serves every latent read there.
        jacobians = _batched_vjp(h, leaves, units, width, chunk)
        weights = cotangent[members]
        values = [(weights @ j.flatten(1)).reshape(len(members), *j.shape[2:]) for j in jacobians]
        out.put(rows[members], values[0], values[1:])
    members = torch.nonzero(direct).flatten()

    def seeds(start: int, stop: int) -> torch.Tensor:
        part = members[start:stop]
        seeds = h.new_zeros(len(part), *h.shape)
        seeds[torch.arange(len(part)), 0, positions[part]] = cotangent[part]
        return seeds

    if len(members):
        grads = _batched_vjp(h, leaves, seeds, len(members), chunk)
        out.put(rows[members], grads[0][:, 0], [g[:, 0] for g in grads[1:]])


def _separate_rows(
    target: TargetFunction, x: torch.Tensor, rows: torch.Tensor, out: _Gradients, extra_leaves: ExtraLeaves,
    chunk: int,
) -> None:
    """Every row its own forward and backward, ``chunk`` rows per batched pass."""
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        function = target.select(part)
        leaf = x[part].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            extras = list(extra_leaves(len(part)))
            h = function.tokens(leaf)
            token = h[torch.arange(len(part), device=h.device), function.positions.to(h.device)]
            z = target.sae.encode_latents(token, function.latents.to(h.device))
            grads = torch.autograd.grad(z.sum(), [leaf, *extras, token], allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [leaf, *extras, token])]
        out.allocate_extras(extras)
        out.z[part], out.token[part], out.token_grad[part] = z.detach(), token.detach(), grads[-1]
        out.put(part, grads[0], grads[1:-1])


def input_gradients(
    target: TargetFunction,
    x: torch.Tensor,
    context: RunContext,
    *,
    batching: str = "auto",
    extra_leaves: ExtraLeaves | None = None,
) -> RowGradients:
    """The gradient of each row's latent with respect to its image, sharing work among rows of one image.

    Parameters
    ----------
    target : TargetFunction
        The latent and token of each row.
    x : torch.Tensor
        ``[B, 3, H, W]``; rows that hold the same image (found by :func:`identical_rows`) share one forward.
    context : RunContext
        ``batch_size`` bounds the images of a forward pass and the cotangents of a batched backward pass.
    batching : {"auto", "rows", "shared", "jacobian"}
        How rows are batched (see the module's description); every choice gives the same gradients.
    extra_leaves : callable, optional
        Called with the number of images of each forward pass right before it, returns tensors
        ``[n, ...]`` that take part in the forward (an LRP probe, say); their per-row gradients are
        returned in ``extras``.

    Returns
    -------
    RowGradients
        The latents, the input gradients and the cotangents at the tokens.

    Notes
    -----
    The backbone's and the SAE's parameters do not require grad during the call (see :func:`frozen`), so
    no weight gradient is computed; their flags are restored afterwards.
    """
    check_batching(batching)
    extra_leaves = extra_leaves or _no_extras
    out = _Gradients(x, target.sae.d_in)
    chunk = context.batch_size
    if batching == "rows":
        first, group = torch.arange(len(x)), torch.arange(len(x))
        alone = torch.ones(len(x), dtype=torch.bool)
    else:
        first, group = identical_rows(x)
        least = shared_from(target, x.device) if batching == "auto" else 1
        alone = torch.bincount(group, minlength=len(first))[group] < least
    if batching == "auto":
        jacobian_from: float | None = JACOBIAN_FROM
    else:
        jacobian_from = 0.0 if batching == "jacobian" else None
    with frozen(getattr(target.backbone, "model", None), target.sae):
        if alone.any():
            _separate_rows(target, x, torch.nonzero(alone).flatten(), out, extra_leaves, chunk)
        for g in group[~alone].unique().tolist():
            rows = torch.nonzero(group == g).flatten()
            image = x[first[g] : first[g] + 1]
            _shared_image(target, image, rows, out, extra_leaves, jacobian_from, chunk)
    return out.result()
