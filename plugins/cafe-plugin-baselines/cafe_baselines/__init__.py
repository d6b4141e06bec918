"""Baseline attributors for cafe: the activation map and gradient x input.

The components are registered through the ``cafe`` entry point (:mod:`cafe_baselines.plugin`); import
their modules directly only to use them without the plugin host.
"""

__version__ = "0.1.0"
