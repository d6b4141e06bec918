"""Files of ``cafe interlayer faithfulness``: JSON with everything, CSV of the scores, the figure and a page."""

from __future__ import annotations

import csv
import json
import pathlib
from typing import Any

__all__ = ["write_faithfulness"]

CSV_FIELDS = ("image_id", "latent", "position", "activation", "target", "source", "source_layer", "attributor",
              "insertion", "deletion", "units", "latent_share", "error_share", "conservation_error")


def write_faithfulness(result: dict[str, Any], table: str, out: pathlib.Path) -> list[pathlib.Path]:
    """``interlayer.json``, ``interlayer.csv``, ``curves.png`` and ``index.html`` in ``out``."""
    from cafe_report.jsonable import finite

    from .curve_figure import curves_figure
    from .page import write_faithfulness_page

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "interlayer.json"
    json_path.write_text(json.dumps(finite(result), indent=1, allow_nan=False) + "\n")
    csv_path = out / "interlayer.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])
    png = curves_figure(out / "curves.png", result)
    return [json_path, csv_path, png, write_faithfulness_page(out, result, table)]
