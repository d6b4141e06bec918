"""What every SAE of this plugin shares: the parameters, the affine maps, the input normalisation, the loss and
the decoder normalisation.

Notation (as in the paper)::

    x     = norm(h)                      # input normalisation; the identity for most SAEs
    pre   = W_e (x - b_d) + b_e          # pre-activation, [..., d_sae]
    z     = sigma(pre)                   # sigma = ReLU, TopK, JumpReLU (gated SAEs differ, see cafe_sae.gated)
    x_hat = W_d z + b_h                  # reconstruction in the normalised space, [..., d_in]
    L     = ||h - h_hat||^2 + lambda * ||z||_1      with h_hat = norm^-1(x_hat)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .normalization import denormalize, normalize

__all__ = ["DEFAULT_SITE", "TOKEN_SETS", "BaseSAE", "SAELoss"]

TOKEN_SETS = ("patch", "cls", "all")
"""Which tokens of an image an SAE reads: the patch tokens, the class token, or every token."""

DEFAULT_SITE = "resid_post"
"""The hook point within a block: the block's output (the residual stream after it)."""


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
    """A sparse autoencoder ``z = sigma(W_e (norm(h) - b_d) + b_e)``, ``x_hat = W_d z + b_h``.

    Subclasses set :attr:`architecture` and implement :meth:`_activate` (the nonlinearity ``sigma`` on
    full pre-activations) and :meth:`_activate_latents` (its value for one latent per row).

    Parameters
    ----------
    d_in : int
        Width of the activations it reads.
    d_sae : int
        Number of latents.
    layer : int or None
        Block it reads, when known.
    tokens : {"patch", "cls", "all"}
        Tokens it was trained on.
    site : str
        Hook point within the block: ``"resid_post"`` (the block's output, what cafe's backbones provide) or
        another point a foreign checkpoint records (``"resid_pre"``, ``"mlp_out"``, ``"attn_out"``...).
    normalization : str
        Input normalisation (see :mod:`cafe_sae.normalization`).
    input_scalar : float, optional
        Divisor of ``"shift_scale"`` normalisation (whose mean is the buffer ``input_mean``).
    extra : dict, optional
        Free JSON-serialisable information kept with the checkpoint (training data, backbone name...).
    device, dtype : optional
        Where and how the (zero-initialised) tensors are allocated.

    Attributes
    ----------
    W_e : torch.nn.Parameter
        Encoder ``[d_sae, d_in]``; row ``j`` reads latent ``j``.
    b_e : torch.nn.Parameter
        Encoder bias ``[d_sae]``.
    b_d : torch.nn.Parameter
        Bias subtracted from the (normalised) input ``[d_in]``.
    W_d : torch.nn.Parameter
        Decoder ``[d_in, d_sae]``; column ``j`` is the direction of latent ``j``.
    b_h : torch.nn.Parameter
        Bias added to the reconstruction ``[d_in]``.
    input_mean : torch.Tensor
        ``[d_in]`` buffer, only with ``normalization = "shift_scale"``.
    """

    architecture: ClassVar[str] = ""
    parameter_names: ClassVar[tuple[str, ...]] = ("W_e", "b_e", "b_d", "W_d", "b_h")

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        layer: int | None = None,
        tokens: str = "patch",
        site: str = DEFAULT_SITE,
        normalization: str = "none",
        input_scalar: float | None = None,
        extra: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if site in TOKEN_SETS:
            warnings.warn(
                f"site={site!r} names a token set; that argument is now called `tokens` (`site` is the hook point "
                f"within the block, {DEFAULT_SITE!r} by default): pass tokens={site!r}",
                DeprecationWarning,
                stacklevel=3,
            )
            tokens, site = site, DEFAULT_SITE
        self.d_in = int(d_in)
        self.d_sae = int(d_sae)
        self.layer = None if layer is None else int(layer)
        self.tokens = tokens
        self.site = site
        self.normalization = normalization
        self.input_scalar = None if input_scalar is None else float(input_scalar)
        self.extra: dict[str, Any] = dict(extra or {})
        factory = {"device": device, "dtype": dtype}
        for name, shape in self._parameter_shapes().items():
            setattr(self, name, nn.Parameter(torch.zeros(shape, **factory)))
        if normalization == "shift_scale":
            self.register_buffer("input_mean", torch.zeros(self.d_in, **factory))

    def _parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each parameter, in the order of :attr:`parameter_names`."""
        d_in, d_sae = self.d_in, self.d_sae
        shapes = {"W_e": (d_sae, d_in), "b_d": (d_in,), "W_d": (d_in, d_sae), "b_h": (d_in,)}
        shapes.update((name, (d_sae,)) for name in self.parameter_names if name not in shapes)  # latent-wise vectors
        return {name: shapes[name] for name in self.parameter_names}

    @property
    def nonlinearity(self) -> str:
        """Name of the nonlinearity applied to the pre-activation (``"relu"``, ``"topk"``, ...)."""
        return self.architecture

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """Names of every tensor a checkpoint of this SAE holds: the parameters, then any buffer."""
        return self.parameter_names + (("input_mean",) if self.normalization == "shift_scale" else ())

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def random_init(
        cls,
        d_in: int,
        d_sae: int,
        *,
        seed: int = 0,
        layer: int | None = None,
        tokens: str = "patch",
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
        layer, tokens : optional
            As in the constructor.
        **kwargs
            Further constructor arguments (``k`` for :class:`~cafe_sae.topk.TopKSAE`, ``dtype``...).
        """
        sae = cls(d_in, d_sae, layer=layer, tokens=tokens, **kwargs)
        generator = torch.Generator().manual_seed(int(seed))
        encoder = torch.randn(sae.d_sae, sae.d_in, generator=generator) * math.sqrt(2.0 / sae.d_in)
        decoder = encoder.t() / encoder.norm(dim=1).clamp_min(torch.finfo(encoder.dtype).tiny)
        with torch.no_grad():
            sae.W_e.copy_(encoder)
            sae.W_d.copy_(decoder)
        return sae

    # -- the function ---------------------------------------------------------------------------------------

    def normalize_input(self, h: torch.Tensor) -> torch.Tensor:
        """``norm(h)``: the input as the encoder reads it, before ``b_d`` is subtracted."""
        return normalize(h, self.normalization, getattr(self, "input_mean", None), self.input_scalar)[0]

    def pre_activation(self, h: torch.Tensor) -> torch.Tensor:
        """What the nonlinearity reads: all pre-activations ``[..., d_sae]`` of ``h [..., d_in]``."""
        return F.linear(self.normalize_input(h) - self.b_d, self.W_e, self.b_e)

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
        """``W_d z + b_h``: the reconstruction ``[..., d_in]`` of latents ``z [..., d_sae]``.

        It lies in the normalised space the encoder reads (the space of ``h`` itself when ``normalization`` is
        ``"none"``); :meth:`forward` maps it back to the scale of its input.
        """
        return F.linear(z, self.W_d, self.b_h)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h_hat, z)``: the reconstruction ``[..., d_in]`` in the scale of ``h``, and the latents."""
        z = self.encode(h)
        statistics = normalize(h, self.normalization, getattr(self, "input_mean", None), self.input_scalar)[1]
        return denormalize(self.decode(z), statistics), z

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
        scale = self._decoder_norms_or_one()
        self.W_d.div_(scale)
        self.W_e.mul_(scale[:, None])
        self.b_e.mul_(scale)
        return self

    def _decoder_norms_or_one(self) -> torch.Tensor:
        norms = self.W_d.norm(dim=0)
        return torch.where(norms > 0, norms, torch.ones_like(norms))

    def _encoder_input_rows(self, h: torch.Tensor) -> torch.Tensor:
        return self.normalize_input(h) - self.b_d

    def _pre_activation_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        rows = self.W_e.index_select(0, latents)
        return torch.einsum("nd,nd->n", self._encoder_input_rows(h), rows) + self.b_e.index_select(0, latents)

    # -- to implement -------------------------------------------------------------------------------------

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _activate_latents(self, h: torch.Tensor, latents: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- checkpoint config --------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The JSON config stored with a checkpoint (see :mod:`cafe_sae.config`)."""
        from .config import FORMAT_VERSION

        normalization: dict[str, Any] = {"normalization": self.normalization}
        if self.normalization == "shift_scale":
            normalization["input_scalar"] = self.input_scalar
        return {
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "layer": self.layer,
            "site": self.site,
            "tokens": self.tokens,
            "nonlinearity": self.nonlinearity,
            **self._config_fields(),
            **normalization,
            "extra": dict(self.extra),
        }

    def _config_fields(self) -> dict[str, Any]:
        """Architecture-specific config entries (and constructor arguments)."""
        return {}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each stored tensor, by name."""
        return {name: tuple(getattr(self, name).shape) for name in self.tensor_names}

    def extra_repr(self) -> str:
        fields = "".join(f", {k}={v}" for k, v in self._config_fields().items())
        norm = "" if self.normalization == "none" else f", normalization={self.normalization!r}"
        return (
            f"d_in={self.d_in}, d_sae={self.d_sae}{fields}{norm}, layer={self.layer}, site={self.site!r}, "
            f"tokens={self.tokens!r}"
        )

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
