"""A Ray executor for cafe: the units of a run computed on the workers of a Ray cluster.

The executor is registered through the ``cafe`` entry point (:mod:`cafe_ray.plugin`) and picked by a spec's
``[run] executor = "ray"``; Ray itself is imported only when a run uses it.
"""

__version__ = "0.1.0"
