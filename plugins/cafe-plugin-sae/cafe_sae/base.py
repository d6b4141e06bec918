"""What ReLU and TopK SAEs share: the parameters, the affine maps, the loss and the decoder normalisation.

Notation (as in the paper)::

    pre   = W_e (h - b_d) + b_e          # pre-activation, [..., d_sae]
    z     = sigma(pre)                   # sigma = ReLU, or ReLU after TopK
    h_hat = W_d z + b_h                  # reconstruction, [..., d_in]
    L     = ||h - h_hat||^2 + lambda * ||z||_1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SITES", "BaseSAE", "SAELoss"]

SITES = ("patch", "cls", "all")


@dataclass
class SAELoss:
    """The terms of the training loss, each a scalar tensor averaged over rows.

    Attributes
    ----------
    mse : torch.Tensor
        ``mean_i ||h_i - h_hat_i||^2``: squared L2 norm of each row's error, summed over the ``d_in``
        features and averaged over rows (so it grows with ``d_in``; it is not a per-element mean).
    l1 : torch.Tensor
        ``mean_i ||z_i||_1``: L1 norm of each row's latents, averaged over rows.
    total : torch.Tensor
        ``mse + l1_coefficient * l1``.
    """

    mse: torch.Tensor
    l1: torch.Tensor
    total: torch.Tensor


class BaseSAE(nn.Module):
    """A sparse autoencoder ``z = sigma(W_e (h - b_d) + b_e)``, ``h_hat = W_d z + b_h``.

    Subclasses set :attr:`architecture` and implement :meth:`_activate` (the nonlinearity ``sigma`` on
    full pre-activations) and :meth:`_activate_latents` (its value for one latent per row).

    Parameters
    ----------
    d_in : int
        Width of the activations it reads.
    d_sae : int
        Number of latents.
    layer : int or None
        Block whose output it reads, when known.
    site : {"patch", "cls", "all"}
        Tokens it was trained on.
    extra : dict, optional
        Free JSON-serialisable information kept with the checkpoint (training data, backbone name...).
    device, dtype : optional
        Where and how the (zero-initialised) parameters are allocated.

    Attributes
    ----------
    W_e : torch.nn.Parameter
        Encoder ``[d_sae, d_in]``; row ``j`` reads latent ``j``.
    b_e : torch.nn.Parameter
        Encoder bias ``[d_sae]``.
    b_d : torch.nn.Parameter
        Bias subtracted from the input ``[d_in]``.
    W_d : torch.nn.Parameter
        Decoder ``[d_in, d_sae]``; column ``j`` is the direction of latent ``j``.
    b_h : torch.nn.Parameter
        Bias added to the reconstruction ``[d_in]``.
    """

    architecture: ClassVar[str] = ""
    parameter_names: ClassVar[tuple[str, ...]] = ("W_e", "b_e", "b_d", "W_d", "b_h")

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        layer: int | None = None,
        site: str = "patch",
        extra: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if int(d_in) < 1 or int(d_sae) < 1:
            raise ValueError(f"d_in and d_sae must be positive, got d_in={d_in}, d_sae={d_sae}")
        if site not in SITES:
            raise ValueError(f"site must be one of {SITES}, got {site!r}")
        if layer is not None and int(layer) < 0:
            raise ValueError(f"layer must be a block index >= 0 or None, got {layer}")
        self.d_in = int(d_in)
        self.d_sae = int(d_sae)
        self.layer = None if layer is None else int(layer)
        self.site = site
        self.extra: dict[str, Any] = dict(extra or {})
        factory = {"device": device, "dtype": dtype}
        self.W_e = nn.Parameter(torch.zeros(self.d_sae, self.d_in, **factory))
        self.b_e = nn.Parameter(torch.zeros(self.d_sae, **factory))
        self.b_d = nn.Parameter(torch.zeros(self.d_in, **factory))
        self.W_d = nn.Parameter(torch.zeros(self.d_in, self.d_sae, **factory))
        self.b_h = nn.Parameter(torch.zeros(self.d_in, **factory))

    @property
    def activation(self) -> str:
        """Name of the nonlinearity applied to the pre-activation (``"relu"`` or ``"topk"``)."""
        return self.architecture

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def random_init(
        cls,
        d_in: int,
        d_sae: int,
        *,
        seed: int = 0,
        layer: int | None = None,
        site: str = "patch",
        **kwargs: Any,
    ) -> "BaseSAE":
        """A randomly initialised SAE, reproducible from ``seed``.

        The encoder is Kaiming-normal (``std = sqrt(2 / d_in)``), the decoder is the encoder's transpose
        with unit-norm columns, and all biases are zero.

        Parameters
        ----------
        d_in, d_sae : int
            Sizes.
        seed : int
            Seed of the CPU generator the weights are drawn from.
        layer, site : optional
            As in the constructor.
        **kwargs
            Further constructor arguments (``k`` for :class:`~cafe_sae.topk.TopKSAE`, ``dtype``...).
        """
        sae = cls(d_in, d_sae, layer=layer, site=site, **kwargs)
        generator = torch.Generator().manual_seed(int(seed))
        encoder = torch.randn(sae.d_sae, sae.d_in, generator=generator) * math.sqrt(2.0 / sae.d_in)
        decoder = encoder.t() / encoder.norm(dim=1).clamp_min(torch.finfo(encoder.dtype).tiny)
        with torch.no_grad():
            sae.W_e.copy_(encoder)
            sae.W_d.copy_(decoder)
        return sae

    # -- the function ---------------------------------------------------------------------------------------

    def pre_activation(self, h: torch.Tensor) -> torch.Tensor:
        """``W_e (h - b_d) + b_e``: all pre-activations ``[..., d_sae]`` of ``h [..., d_in]``."""
        return F.linear(h - self.b_d, self.W_e, self.b_e)

    def pre_activation_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Pre-activation of latent ``latents[i]`` at ``h[i]``, reading only those rows of ``W_e``.

        Parameters
        ----------
        h : torch.Tensor
            ``[N, d_in]`` activations.
        latents : torch.Tensor
            ``[N]`` integer latent indices in ``[0, d_sae)``.

        Returns
        -------
        torch.Tensor
            ``[N]``, equal to ``pre_activation(h)[i, latents[i]]`` and differentiable with respect to ``h``.
        """
        return self._pre_activation_latents(h, self._check_latents(h, latents))

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """All latents ``z [..., d_sae]`` of activations ``h [..., d_in]``."""
        return self._activate(self.pre_activation(h))

    def encode_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Latent ``latents[i]`` of ``h[i]``: ``[N, d_in]``, ``[N]`` -> ``[N]``.

        Equal to ``encode(h)[i, latents[i]]`` and differentiable with respect to ``h``; the value and its
        gradient flow through the selected rows of ``W_e`` only.

        Raises
        ------
        IndexError
            For a latent outside ``[0, d_sae)`` (checking costs one device synchronisation per call).
        TypeError, ValueError
            For non-integer latents, or shapes other than ``[N, d_in]`` and ``[N]``.
        """
        latents = self._check_latents(h, latents)
        return self._activate_latents(h, latents, self._pre_activation_latents(h, latents))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``W_d z + b_h``: the reconstruction ``[..., d_in]`` of latents ``z [..., d_sae]``."""
        return F.linear(z, self.W_d, self.b_h)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h_hat, z)``: the reconstruction ``[..., d_in]`` and the latents ``[..., d_sae]``."""
        z = self.encode(h)
        return self.decode(z), z

    def loss(self, h: torch.Tensor, l1_coefficient: float) -> SAELoss:
        """The training loss ``||h - h_hat||^2 + lambda * ||z||_1``, averaged over rows.

        Parameters
        ----------
        h : torch.Tensor
            ``[..., d_in]`` activations; all leading dimensions are rows.
        l1_coefficient : float
            ``lambda`` (use ``0`` for a TopK SAE, whose sparsity is fixed by ``k``).

        Returns
        -------
        SAELoss
            ``mse``, ``l1`` and ``total``; see :class:`SAELoss` for the normalisation.
        """
        h_hat, z = self(h)
        mse = (h - h_hat).pow(2).sum(dim=-1).mean()
        l1 = z.abs().sum(dim=-1).mean()
        return SAELoss(mse=mse, l1=l1, total=mse + l1_coefficient * l1)

    @torch.no_grad()
    def normalize_decoder_(self) -> "BaseSAE":
        """Give every decoder column unit norm, in place, rescaling the encoder to compensate.

        Column ``j`` of ``W_d`` is divided by its norm ``n_j`` and row ``j`` of ``W_e`` and ``b_e[j]`` are
        multiplied by it, so latent ``j`` grows by ``n_j`` and ``decode(encode(h))`` is unchanged (ReLU is
        positively homogeneous). Zero columns are left as they are. Returns ``self``.
        """
        norms = self.W_d.norm(dim=0)
        scale = torch.where(norms > 0, norms, torch.ones_like(norms))
        self.W_d.div_(scale)
        self.W_e.mul_(scale[:, None])
        self.b_e.mul_(scale)
        return self

    def _pre_activation_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        rows = self.W_e.index_select(0, latents)
        return torch.einsum("nd,nd->n", h - self.b_d, rows) + self.b_e.index_select(0, latents)

    # -- to implement -------------------------------------------------------------------------------------

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _activate_latents(self, h: torch.Tensor, latents: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- checkpoint config --------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The JSON config stored with a checkpoint (see :mod:`cafe_sae.io`)."""
        return {
            "format_version": 1,
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "layer": self.layer,
            "site": self.site,
            "activation": self.activation,
            **self._config_fields(),
            "extra": dict(self.extra),
        }

    def _config_fields(self) -> dict[str, Any]:
        """Architecture-specific config entries (and constructor arguments)."""
        return {}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each parameter, by name."""
        return {name: tuple(getattr(self, name).shape) for name in self.parameter_names}

    def extra_repr(self) -> str:
        fields = "".join(f", {k}={v}" for k, v in self._config_fields().items())
        return f"d_in={self.d_in}, d_sae={self.d_sae}{fields}, layer={self.layer}, site={self.site!r}"

    def _check_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = torch.as_tensor(latents, device=h.device)
        if latents.is_floating_point() or latents.is_complex() or latents.dtype == torch.bool:
            raise TypeError(f"latents must be an integer tensor, got dtype {latents.dtype}")
        if h.dim() != 2 or h.shape[-1] != self.d_in:
            raise ValueError(f"h must have shape [N, {self.d_in}], got {list(h.shape)}")
        if latents.shape != h.shape[:1]:
            raise ValueError(f"latents must have shape [{h.shape[0]}] (one per row of h), got {list(latents.shape)}")
        latents = latents.long()
        # index_select fails with an opaque message (a device-side assert on CUDA) for bad indices
        if latents.numel() and (int(latents.min()) < 0 or int(latents.max()) >= self.d_sae):
            raise IndexError(
                f"latent indices must lie in [0, {self.d_sae}), got min {int(latents.min())} and "
                f"max {int(latents.max())}"
            )
        return latents
