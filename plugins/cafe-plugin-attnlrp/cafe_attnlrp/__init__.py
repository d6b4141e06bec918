"""AttnLRP and CP-LRP attributors for cafe.

The components are registered through the ``cafe`` entry point (:mod:`cafe_attnlrp.plugin`); import
:mod:`cafe_attnlrp.attributor` directly only to use them without the plugin host.
"""

__version__ = "0.1.0"
