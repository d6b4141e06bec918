"""Insertion and deletion faithfulness metrics for cafe, and where a heatmap puts the cause (cause patches,
non-locality).

The metrics are registered through the ``cafe`` entry point (:mod:`cafe_faithfulness.plugin`); import
:mod:`cafe_faithfulness.curves` directly only to use them without the plugin host.
"""

__version__ = "0.1.0"
