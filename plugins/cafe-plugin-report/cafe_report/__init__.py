"""Reports of cafe runs: HTML pages with figures, feature pages, and the non-locality analysis.

The commands are registered through the ``cafe`` entry point (:mod:`cafe_report.plugin`); from Python,
``cafe_core.report(run_dir)`` writes a run's report.
"""

__version__ = "0.1.0"
