"""LRP attributors built on zennit's composites, for SAE latents of timm ResNets and ConvNeXts."""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
from zennit.core import Composite

from cafe_core.errors import IncompatibleComponentError
from cafe_core.protocols import Attribution, Backbone, RunContext, TargetFunction

from .architectures import canonizers_for, check_canonical, check_supported, extra_rules, unsupported_parts
from .relevance import composite_relevance

__all__ = ["EpsilonAlpha2Beta1LRP", "EpsilonGammaBoxLRP", "EpsilonPlusFlatLRP", "EpsilonPlusLRP", "ZennitLRP"]


class ZennitLRP:
    """What the four attributors share: a zennit composite with the model's canonizers, for one call.

    Subclasses say which composite (:meth:`composite`). Each call checks that every module of the stem and
    stages ``0..layer`` has a rule, registers a fresh composite (canonizers first, then hooks) on the
    backbone's model, checks that every BatchNorm was merged and every residual block canonized, runs one
    forward and one backward pass per chunk of ``context.batch_size`` rows, and removes everything again,
    also when the call raises.

    Parameters
    ----------
    epsilon : float
        Stabiliser of the epsilon rule (``Linear`` layers, LayerNorms), ``> 0``.
    stabilizer : float
        Stabiliser of the denominators of the other rules, ``> 0``.
    """

    needs_grad = True
    conserves_relevance = True

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6) -> None:
        self.epsilon = float(epsilon)
        self.stabilizer = float(stabilizer)

    def check_compatible(self, backbone: Backbone, saes: Sequence[Any] = ()) -> list[str]:
        """Problems that stop this attributor from working on ``backbone`` (``[]`` when none).

        Every module of the stem and of every stage of the backbone's model must have a rule here (see
        :func:`cafe_zennit.architectures.unsupported_parts`, the check each call makes first).
        """
        return unsupported_parts(backbone.model)

    def composite(self, backbone, layer_map: list, canonizers: list) -> Composite:
        """The zennit composite, with ``layer_map`` put before its own rules."""
        raise NotImplementedError

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """Relevance maps of the rows of ``x [B, 3, H, W]`` with respect to ``target``.

        Parameters
        ----------
        target : TargetFunction
            The latent and token of each row; its backbone must wrap a timm ResNet or ConvNeXt read stage by
            stage (the ``timm_conv`` backbone).
        x : torch.Tensor
            Model inputs ``[B, 3, H, W]``.
        context : RunContext
            ``batch_size`` bounds the images per forward and backward pass.

        Returns
        -------
        Attribution
            See :func:`cafe_zennit.relevance.composite_relevance`: the heatmap over the backbone's patches,
            the pixel map, and per row ``z``, ``relevance_sum``, ``absorbed``, ``absorbed_sae``, ``excess``
            and ``conservation_error``.

        Raises
        ------
        cafe_zennit.architectures.UnsupportedModelError
            For a model other than a timm ResNet or ConvNeXt, or one with a module that has no rule here (a
            :class:`cafe_core.errors.IncompatibleComponentError`).
        """
        model = target.backbone.model
        check_supported(model, target.layer)
        composite = self.composite(target.backbone, extra_rules(model, self.epsilon), canonizers_for(model))
        verify = partial(_verify, layer=target.layer)
        return composite_relevance(target, x, composite, context, verify=verify)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon}, stabilizer={self.stabilizer})"


def _verify(model: torch.nn.Module, applied: list, layer: int) -> None:
    check_canonical(model, layer, applied)


class EpsilonPlusLRP(ZennitLRP):
    """zennit's ``EpsilonPlus``: the z+ rule on every convolution, the epsilon rule on ``Linear`` layers.

    z+ (alpha=1, beta=0) passes relevance on through the positive contributions only. On a ResNet every
    layer is a convolution, so ``epsilon`` has no effect there; on a ConvNeXt it applies to the MLPs of
    ``conv_mlp=False`` models (``convnext_tiny``) and to the LayerNorms.

    Parameters
    ----------
    epsilon, stabilizer : float
        See :class:`ZennitLRP`.

    References
    ----------
    S. Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance
    Propagation", PLOS ONE 2015. G. Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019.
    """

    def composite(self, backbone, layer_map: list, canonizers: list) -> Composite:
        """zennit's ``EpsilonPlus`` with the model's canonizers."""
        return EpsilonPlus(epsilon=self.epsilon, stabilizer=self.stabilizer, layer_map=layer_map, canonizers=canonizers)


class EpsilonPlusFlatLRP(ZennitLRP):
    """zennit's ``EpsilonPlusFlat``: :class:`EpsilonPlusLRP` with the flat rule on the first convolution.

    The flat rule spreads each first-layer neuron's relevance uniformly over its receptive field, whatever
    the pixel values: maps are smoother and do not follow the input's texture.

    Parameters
    ----------
    epsilon, stabilizer : float
        See :class:`ZennitLRP`.

    References
    ----------
    S. Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really learn",
    Nature Communications 2019.
    """

    def composite(self, backbone, layer_map: list, canonizers: list) -> Composite:
        """zennit's ``EpsilonPlusFlat`` with the model's canonizers."""
        return EpsilonPlusFlat(
            epsilon=self.epsilon, stabilizer=self.stabilizer, layer_map=layer_map, canonizers=canonizers
        )


class EpsilonAlpha2Beta1LRP(ZennitLRP):
    """zennit's ``EpsilonAlpha2Beta1``: the alpha=2, beta=1 rule on every convolution, epsilon on ``Linear``.

    Positive contributions get twice the relevance and negative ones minus once; a neuron whose
    contributions are all of one sign passes on ``2 R`` or ``-R`` instead of ``R``, so the rule does not
    conserve relevance exactly. That difference is reported per row as ``info["excess"]`` and the attributor
    does not claim conservation.

    Parameters
    ----------
    epsilon, stabilizer : float
        See :class:`ZennitLRP`.
    """

    conserves_relevance = False

    def composite(self, backbone, layer_map: list, canonizers: list) -> Composite:
        """zennit's ``EpsilonAlpha2Beta1`` with the model's canonizers."""
        return EpsilonAlpha2Beta1(
            epsilon=self.epsilon, stabilizer=self.stabilizer, layer_map=layer_map, canonizers=canonizers
        )


class EpsilonGammaBoxLRP(ZennitLRP):
    """zennit's ``EpsilonGammaBox``: z-box on the first convolution, gamma on the others, epsilon on ``Linear``.

    The z-box rule needs the bounds of the model's input: they are the images of the pixel values 0 and 1
    under the backbone's normalisation, ``low = -mean / std`` and ``high = (1 - mean) / std`` per channel.

    Parameters
    ----------
    epsilon, stabilizer : float
        See :class:`ZennitLRP`.
    gamma : float
        Weight of the positive parts in the gamma rule, ``>= 0`` (``0`` is LRP-0 on those layers).

    Raises
    ------
    cafe_core.errors.IncompatibleComponentError
        At call time, if the backbone has no ``mean`` and ``std`` to derive the input bounds from.
    """

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, gamma: float = 0.25) -> None:
        super().__init__(epsilon, stabilizer)
        self.gamma = float(gamma)

    def check_compatible(self, backbone: Backbone, saes: Sequence[Any] = ()) -> list[str]:
        """The problems of :meth:`ZennitLRP.check_compatible`, and a backbone without input bounds."""
        missing = missing_input_bounds(backbone)
        return super().check_compatible(backbone, saes) + ([missing] if missing else [])

    def composite(self, backbone, layer_map: list, canonizers: list) -> Composite:
        """zennit's ``EpsilonGammaBox`` with the input bounds of the backbone's normalisation."""
        low, high = input_bounds(backbone)
        return EpsilonGammaBox(
            low=low,
            high=high,
            epsilon=self.epsilon,
            gamma=self.gamma,
            stabilizer=self.stabilizer,
            layer_map=layer_map,
            canonizers=canonizers,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epsilon={self.epsilon}, stabilizer={self.stabilizer}, gamma={self.gamma})"


def missing_input_bounds(backbone: Backbone) -> str | None:
    """Why the z-box rule has no input bounds for ``backbone`` (no ``mean`` and ``std``), or ``None``."""
    if getattr(backbone, "mean", None) is not None and getattr(backbone, "std", None) is not None:
        return None
    kind = type(backbone)
    return (
        f"lrp_epsilon_gamma_box needs the input bounds of the z-box rule, but the backbone {kind.__name__} "
        f"({kind.__module__}) has no mean and std; use a backbone that normalises pixels in [0, 1] as "
        "(pixels - mean) / std and exposes them (the 'timm_conv' backbone does), or another zennit attributor"
    )


def input_bounds(backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)``, each ``[1, 3, 1, 1]``: pixel values 0 and 1 in the model's input space.

    Raises
    ------
    cafe_core.errors.IncompatibleComponentError
        If the backbone has no ``mean`` and ``std`` (:func:`missing_input_bounds`).
    """
    missing = missing_input_bounds(backbone)
    if missing:
        raise IncompatibleComponentError(missing)
    mean = torch.as_tensor(backbone.mean).reshape(1, -1, 1, 1)
    std = torch.as_tensor(backbone.std).reshape(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std
