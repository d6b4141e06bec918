"""Gradient attributors for cafe built on Captum: integrated gradients, saliency, input x gradient and
GradientSHAP, each explaining one SAE latent as a heatmap over input patches.

The components are registered through the ``cafe`` entry point (:mod:`cafe_captum.plugin`); import their
modules directly only to use them without the plugin host. Captum loads only when a component is built.
"""

__version__ = "0.1.0"
