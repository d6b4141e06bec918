"""Checkpoint formats cafe reads, one module each, and the detection of a checkpoint's format from its path.

================================  =================================================================
format                            what is on disk
================================  =================================================================
``cafe``                          ``*.safetensors`` with a ``cafe_sae`` config (cafe's own format)
``saelens``                       folder with ``cfg.json`` and ``sae_weights.safetensors``
``saev``                          ``sae.pt``: a JSON header line, then ``torch.save`` of the state dict
``prisma``                        ``config.json`` and a ``.pt`` holding ``{"cfg": ..., "state_dict": ...}``
``dictionary_learning``           ``config.json`` (``trainer.dict_class``) and ``ae.pt``
``overcomplete``                  a bare state dict with ``dictionary._weights``
``state_dict``                    a bare state dict in cafe's or the ``W_enc``/``W_dec`` layout
================================  =================================================================

Importing this package imports neither torch nor any format module.
"""

from __future__ import annotations

__all__ = ["FORMAT_NAMES"]

FORMAT_NAMES = ("cafe", "saelens", "saev", "prisma", "dictionary_learning", "overcomplete", "state_dict")
