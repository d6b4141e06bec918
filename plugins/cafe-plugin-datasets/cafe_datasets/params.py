"""Parameters of the dataset components."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, DirectoryPath, field_validator

__all__ = ["DEFAULT_EXTENSIONS", "FolderParams"]

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class FolderParams(BaseModel):
    """Parameters of :class:`cafe_datasets.folder.ImageFolder`."""

    model_config = ConfigDict(extra="forbid")

    path: DirectoryPath
    recursive: bool = True
    extensions: list[str] = list(DEFAULT_EXTENSIONS)

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("extensions must name at least one file type, e.g. ['.png']")
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in value]

