"""The model and images of a run, rebuilt from the spec its run store keeps, through the core's resolver."""

from __future__ import annotations

import pathlib
import warnings
from typing import Any, Iterable

import numpy as np

from cafe_core.store import RunStore

from .errors import ReportError

__all__ = ["display_images", "find_items", "prepare_spec", "stored_spec"]


def stored_spec(run_dir: str | pathlib.Path) -> dict[str, Any]:
    """The canonical spec a run directory's store was written with.

    Raises
    ------
    ReportError
        If the store holds no spec (a run that never started).
    """
    with RunStore.open_existing(run_dir) as store:
        spec = store.get_meta("spec")
    if spec is None:
        raise ReportError(f"{run_dir} holds no run spec yet; run `cafe run SPEC --out {run_dir}` first")
    return spec


def prepare_spec(spec: Any, base_dir: pathlib.Path | None = None, device: str | None = None, host: Any = None):
    """Build every component of a spec (a dict, a TOML path or a ``RunSpec``) with the core's resolver.

    Parameters
    ----------
    spec : dict, path or RunSpec
        The spec.
    base_dir : path, optional
        The folder relative paths in the spec are taken from (a TOML file's own folder by default, else the
        working directory).
    device : str, optional
        Overrides ``run.device`` (``"cpu"``, ``"cuda"``, ``"auto"``).
    host : PluginHost, optional
        The plugins; all installed ones by default.

    Returns
    -------
    cafe_core.plan.RunPlan
    """
    import torch

    from cafe_core.plan import prepare
    from cafe_core.plugins import get_host
    from cafe_core.spec import load_spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a run stored before a spec key was renamed
        loaded, spec_dir = load_spec(spec, host)
    if device is not None:
        loaded = loaded.model_copy(update={"run": loaded.run.model_copy(update={"device": device})})
    torch.manual_seed(loaded.run.seed)  # as a run does, so randomly initialised components are the same
    return prepare(loaded, host or get_host(), base_dir or spec_dir)


def find_items(dataset: Any, image_ids: Iterable[str], limit: int | None = None,
               known: dict[str, int] | None = None) -> dict[str, Any]:
    """The dataset items with these ids: read at their ``known`` dataset index (as a run store records them)
    when it still holds them, else found by one pass over the dataset that stops when all are found.

    Raises
    ------
    ReportError
        If some ids are not in the dataset (its files changed since the run).
    """
    wanted = set(image_ids)
    found: dict[str, Any] = {}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for image_id in sorted(wanted):
        index = (known or {}).get(image_id)
        if index is not None and 0 <= index < len(dataset):
            item = dataset[index]
            if item.image_id == image_id:
                found[image_id] = item
    for index in range(n):
        if len(found) == len(wanted):
            break
        item = dataset[index]
        if item.image_id in wanted:
            found[item.image_id] = item
    missing = sorted(wanted - set(found))
    if missing:
        raise ReportError(
            f"images {missing[:3]}{'...' if len(missing) > 3 else ''} of the run are not in its dataset any more; "
            "restore the dataset the run was made with, or pass --base-dir if its path is relative"
        )
    return found


def display_images(backbone: Any, x: Any) -> np.ndarray:
    """Model inputs ``[B, 3, H, W]`` as the model saw them, as displayable RGB ``[B, H, W, 3]`` in ``[0, 1]``.

    The backbone's normalisation (``mean`` and ``std``, where it exposes them) is undone; otherwise each
    image is scaled to its own range.
    """
    import torch

    x = x.detach().to("cpu", torch.float32)
    mean, std = getattr(backbone, "mean", None), getattr(backbone, "std", None)
    if mean is not None and std is not None:
        mean = torch.as_tensor(mean, dtype=torch.float32).cpu().reshape(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).cpu().reshape(1, -1, 1, 1)
        pixels = x * std + mean
    else:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        pixels = (x - low) / (high - low).clamp_min(1e-12)
    return pixels.clamp(0, 1).permute(0, 2, 3, 1).numpy()
