"""JSON round trips of the result dataclasses (ANIL tutorial; Raghu et al., ICLR 2020, arXiv:1909.09157)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any, TypeVar

T = TypeVar("T")


def dataclass_kwargs(cls: type[T], data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of dataclass ``cls``.

    Raises:
        ValueError: naming the required fields of ``cls`` that ``data`` lacks.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"Cannot build {cls.__name__} from a {type(data).__name__}; expected a dict.")
    missing = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in data
    ]
    if missing:
        raise ValueError(f"Cannot build {cls.__name__}: missing fields {missing}.")
    return {f.name: data[f.name] for f in fields(cls) if f.name in data}
