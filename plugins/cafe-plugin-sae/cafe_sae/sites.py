"""Hook point names of TransformerLens-style models (SAELens, ViT-Prisma) as cafe's (layer, site).

cafe's layer ``L`` is the output of block ``L`` (0-based), the residual stream after it: site ``"resid_post"``.
In TransformerLens and ViT-Prisma's ``HookedViT`` the hook ``blocks.L.hook_resid_post`` is that same tensor
(``resid_post = resid_mid + mlp_out`` of block ``L``), and ``blocks.L.hook_resid_pre`` is the input of block
``L``, i.e. the output of block ``L - 1``. So:

==============================  ===================================================
hook                            cafe (layer, site)
==============================  ===================================================
``blocks.9.hook_resid_post``    ``(9, "resid_post")``
``blocks.9.hook_resid_pre``     ``(8, "resid_post")`` (the same tensor)
``blocks.0.hook_resid_pre``     ``(0, "resid_pre")`` (the embeddings: not a block output)
``blocks.9.hook_mlp_out``       ``(9, "mlp_out")``
``blocks.9.hook_attn_out``      ``(9, "attn_out")``
``blocks.9.hook_resid_mid``     ``(9, "resid_mid")``
``blocks.9.attn.hook_z``        ``(9, "attn_z")``
``blocks.9.ln2.hook_normalized``  ``(9, "ln2_normalized")``
``hook_embed``                  ``(None, "embed")``
==============================  ===================================================

Any other hook keeps its name with the ``hook_`` prefixes dropped and dots turned into underscores.
"""

from __future__ import annotations

import re

__all__ = ["site_of_hook"]

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def site_of_hook(hook: str) -> tuple[int | None, str]:
    """The cafe ``(layer, site)`` of a TransformerLens hook name (see the module documentation)."""
    match = _BLOCK_HOOK.match(hook.strip())
    if match is None:
        return None, _site_name(hook.strip())
    layer, site = int(match.group(1)), _site_name(match.group(2))
    if site == "resid_pre" and layer > 0:
        return layer - 1, "resid_post"
    return layer, site


def _site_name(suffix: str) -> str:
    parts = [part[len("hook_"):] if part.startswith("hook_") else part for part in suffix.split(".")]
    return "_".join(part for part in parts if part)
