"""Conversion between HDF5 attributes and plain Python values.

HDF5 attributes cannot hold ``None`` or dictionaries, and h5py hands back numpy scalars and
bytes; these helpers keep attribute dictionaries JSON-friendly in both directions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

IDENTIFYING_KEY_PARTS = ("patient", "birth", "accession", "physician", "operator", "institution")
"""Attribute names containing these are dropped on read: results must not carry identities."""


def is_identifying(key: str) -> bool:
    """True for attribute names that may hold a person's identity (e.g. fastMRI ``patient_id``)."""
    lowered = key.lower()
    return any(part in lowered for part in IDENTIFYING_KEY_PARTS)


def to_python(value: Any) -> Any:
    """An h5py attribute value as a plain Python value (str, bool, int, float or list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return to_python(value.item())
    if isinstance(value, np.ndarray):
        return [to_python(item) for item in value.tolist()]
    if isinstance(value, list):
        return [to_python(item) for item in value]
    return value


def read_attrs(attrs: h5py.AttributeManager, drop_identifying: bool = True) -> dict[str, Any]:
    """All attributes of an HDF5 object as plain values, identifying ones dropped."""
    return {
        key: to_python(attrs[key])
        for key in attrs
        if not (drop_identifying and is_identifying(key))
    }


def to_h5_value(key: str, value: Any) -> Any:
    """A value HDF5 can store: dicts become JSON text, sequences arrays, scalars stay."""
    if isinstance(value, Mapping):
        return json.dumps(value, default=str, sort_keys=True)
    if isinstance(value, str | bytes | bool | int | float | np.generic):
        return value
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list | tuple):
        if all(isinstance(item, str) for item in value):
            return np.array(value, dtype=h5py.string_dtype())
        return np.asarray(value)
    raise TypeError(f"attribute {key!r}: cannot store a {type(value).__name__} in HDF5")


def write_attrs(attrs: h5py.AttributeManager, values: Mapping[str, Any]) -> None:
    """Store ``values`` as attributes; ``None`` means absent and is skipped, never faked."""
    for key, value in values.items():
        if value is None:
            continue
        attrs[key] = to_h5_value(key, value)
