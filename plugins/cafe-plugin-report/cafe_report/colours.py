"""Colours of every figure, chosen to stay readable for colour-blind readers.

Signed relevance uses ColorBrewer's diverging red-blue map (centred on zero: red causes the latent, blue
works against it), activations the perceptually uniform ``cividis`` map designed for colour-vision
deficiency, and curves the Okabe-Ito palette together with a distinct line style per series, so no series
depends on hue alone.
"""

from __future__ import annotations

__all__ = [
    "ACTIVATION_CMAP",
    "CAUSE_EDGE",
    "FIRED_EDGE",
    "RELEVANCE_CMAP",
    "SERIES_COLOURS",
    "SERIES_STYLES",
    "series_style",
]

RELEVANCE_CMAP = "RdBu_r"
ACTIVATION_CMAP = "cividis"

SERIES_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442")
SERIES_STYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)), (0, (3, 1, 1, 1, 1, 1)))

CAUSE_EDGE = ("#000000", "#FFFFFF")
"""Cause patches: a black outline with a white halo."""

FIRED_EDGE = ("#F0E442", "#000000")
"""The fired token's patch: a dotted yellow outline with a black halo."""


def series_style(index: int) -> dict:
    """Colour and line style of the ``index``-th series of a plot."""
    return {
        "color": SERIES_COLOURS[index % len(SERIES_COLOURS)],
        "linestyle": SERIES_STYLES[index % len(SERIES_STYLES)],
    }
