"""Parameter models of the zennit attributors (validated before torch or zennit is imported)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EpsilonAlpha2Beta1Params", "EpsilonGammaBoxParams", "EpsilonPlusFlatParams", "EpsilonPlusParams"]


class EpsilonPlusParams(BaseModel):
    """Parameters of :class:`cafe_zennit.attributor.EpsilonPlusLRP`.

    Attributes
    ----------
    epsilon : float
        Stabiliser of the epsilon rule (dense layers and LayerNorms), ``> 0``.
    stabilizer : float
        Stabiliser of the denominators of every other rule, ``> 0``.
    """

    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(default=1e-6, gt=0.0, allow_inf_nan=False, description="epsilon of the epsilon rule")
    stabilizer: float = Field(default=1e-6, gt=0.0, allow_inf_nan=False, description="stabiliser of the other rules")


class EpsilonPlusFlatParams(EpsilonPlusParams):
    """Parameters of :class:`cafe_zennit.attributor.EpsilonPlusFlatLRP` (as :class:`EpsilonPlusParams`)."""


class EpsilonAlpha2Beta1Params(EpsilonPlusParams):
    """Parameters of :class:`cafe_zennit.attributor.EpsilonAlpha2Beta1LRP` (as :class:`EpsilonPlusParams`)."""


class EpsilonGammaBoxParams(EpsilonPlusParams):
    """Parameters of :class:`cafe_zennit.attributor.EpsilonGammaBoxLRP`.

    Attributes
    ----------
    epsilon, stabilizer : float
        As in :class:`EpsilonPlusParams`.
    gamma : float
        Weight of the positive parts in the gamma rule of the convolutions after the first, ``>= 0``.
    """

    gamma: float = Field(default=0.25, ge=0.0, allow_inf_nan=False, description="gamma of the gamma rule")
