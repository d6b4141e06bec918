"""Fetching ``hf://owner/repo/path`` checkpoints through the Hugging Face Hub cache.

``huggingface_hub`` is an optional dependency (``pip install cafe-plugin-sae[hub]``), imported only here and only
when such a path is loaded. Files come from the hub's cache (``HF_HUB_CACHE``/``HF_HOME``), so a checkpoint
fetched once loads offline afterwards (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from .errors import SAEFileError
from .location import HubLocation

__all__ = ["fetch"]

# Config files a loader reads beside the weights; fetched with a file so its format can be detected.
_SIBLING_PATTERNS = ("*.json",)


def fetch(location: HubLocation) -> Path:
    """The local path of ``location`` in the hub cache, downloading what is missing.

    A folder is fetched whole; a file together with the JSON config files beside it.

    Raises
    ------
    SAEFileError
        If huggingface_hub is not installed, or the files are neither cached nor downloadable.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise SAEFileError(
            f"loading {location} needs huggingface_hub; install it with `pip install cafe-plugin-sae[hub]`"
        ) from None
    inner = location.path
    parent = str(PurePosixPath(inner).parent) if inner else ""
    patterns = ["*"] if not inner else [inner, f"{inner}/*"] + [
        pattern if parent in ("", ".") else f"{parent}/{pattern}" for pattern in _SIBLING_PATTERNS
    ]
    try:
        snapshot = Path(snapshot_download(location.repo_id, revision=location.revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise SAEFileError(
            f"cannot fetch {location} from the Hugging Face Hub ({type(exc).__name__}: {exc}); check the repository "
            "and path, your network or token, or, offline (HF_HUB_OFFLINE=1), that it was fetched once before"
        ) from None
    local = snapshot / inner if inner else snapshot
    if not local.exists():
        raise SAEFileError(
            f"{location} is not in the repository's snapshot {snapshot} (the path inside the repository is wrong, "
            "or, offline, it was never fetched): check the path"
        )
    return local
