"""The ``[interlayer]`` table's model: settings of ``cafe graph`` and ``cafe interlayer`` (see :mod:`.section`).

It imports nothing heavy, so that the core can check the table whenever it reads a spec; the attributor names
are checked against :data:`cafe_interlayer.methods.METHODS` only when the table names some.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["InterlayerSection", "MethodEntry", "SaeRef"]

SaeRef = Union[int, str]


class MethodEntry(BaseModel):
    """An interlayer attributor: ``name``, optional ``label``, and its params as extra keys."""

    model_config = ConfigDict(extra="allow")

    name: str
    label: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        """Everything but ``name`` and ``label``."""
        return dict(self.model_extra or {})


class InterlayerSection(BaseModel):
    """The ``[interlayer]`` table (see the module's description for every key)."""

    model_config = ConfigDict(extra="forbid")

    target: SaeRef | None = None
    source: SaeRef | list[SaeRef] | None = None
    attributors: list[Union[str, MethodEntry]] | None = None
    error: Literal["keep", "drop"] = "keep"
    unit: Literal["pair", "latent"] = "pair"
    points: int = Field(21, ge=2)
    clip: bool = True
    share: float = Field(0.8, gt=0, le=1)
    max_nodes: int | None = Field(12, ge=1)

    @field_validator("attributors")
    @classmethod
    def _known(cls, value: list[Union[str, MethodEntry]] | None) -> list[MethodEntry] | None:
        if value is None:
            return None
        from .methods import METHODS

        entries = [MethodEntry(name=v) if isinstance(v, str) else v for v in value]
        unknown = [e.name for e in entries if e.name not in METHODS]
        if unknown:
            raise ValueError(f"unknown interlayer attributors {unknown}; available: {', '.join(METHODS)}")
        labels = [e.label or e.name for e in entries]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"attributors {repeated} appear more than once; give each a distinct `label`")
        if not entries:
            raise ValueError("name at least one attributor")
        return entries
