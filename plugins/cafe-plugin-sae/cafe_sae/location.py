"""Where a checkpoint is: a local file or folder, or ``hf://owner/repo[@revision]/path`` on the Hugging Face Hub.

:func:`check_location` is the one check of a checkpoint path; the params models and :func:`cafe_sae.io.load`
both call it. Importing this module imports neither torch nor huggingface_hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import SAEFileError

__all__ = ["HUB_PREFIX", "HubLocation", "check_location", "hub_location"]

HUB_PREFIX = "hf://"
_REPO_PART = re.compile(r"^[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class HubLocation:
    """A path inside a Hugging Face Hub model repository.

    Attributes
    ----------
    repo_id : str
        ``"owner/name"``.
    path : str
        File or folder inside the repository (``""`` for its root).
    revision : str, optional
        Branch, tag or commit (the default branch when None).
    """

    repo_id: str
    path: str
    revision: str | None = None

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"{HUB_PREFIX}{self.repo_id}{revision}/{self.path}".rstrip("/")


def hub_location(uri: str) -> HubLocation:
    """Parse ``hf://owner/repo[@revision][/path]``.

    Raises
    ------
    SAEFileError
        If it does not name an owner and a repository.
    """
    parts = uri[len(HUB_PREFIX):].strip("/").split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SAEFileError(
            f"{uri!r} does not name a Hub repository; write hf://owner/repo/path/inside/it (optionally "
            "hf://owner/repo@revision/path)"
        )
    owner, repo = parts[0], parts[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    if not (_REPO_PART.match(owner) and _REPO_PART.match(repo)) or revision == "":
        raise SAEFileError(f"{uri!r} does not name a Hub repository: {owner}/{repo} is not a valid repository id")
    path = "/".join(parts[2:])
    if ".." in PurePosixPath(path).parts:
        raise SAEFileError(f"{uri!r}: a path inside a Hub repository cannot contain '..'")
    return HubLocation(f"{owner}/{repo}", path, revision)


def check_location(value: str | Path) -> str | Path:
    """The checkpoint location ``value`` names: an ``hf://`` URI (parsed, not fetched) or an existing local path.

    Raises
    ------
    SAEFileError
        For a malformed URI, or a local path that does not exist.
    """
    text = str(value)
    path = Path(text).expanduser()
    if text.startswith(HUB_PREFIX):
        return str(hub_location(text))
    if not path.exists():
        raise SAEFileError(
            f"SAE checkpoint {path} does not exist; check the path (in a spec file, relative paths start at the spec "
            "file's folder)"
        )
    return path
