"""anndata's on-disk elements, decoded with h5py where the encoding is a plain one.

obs, var and uns are mostly columns of numbers, strings and categories. Decoding
those few encodings here, exactly as anndata's registered readers do, spares a
conversion worker anndata's import (about a second on two cores: it imports
``dask.array``). Every other element (other encodings, other versions, elements
without encoding metadata) goes to anndata's own reader, so a file still decodes
as ``anndata.read_h5ad`` decodes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h5py


def read_elem(elem: h5py.Dataset | h5py.Group, rows: slice | None = None) -> Any:
    """Read one anndata element, as ``anndata.io.read_elem`` would.

    Parameters
    ----------
    elem
        An HDF5 dataset or group carrying anndata's ``encoding-type`` and
        ``encoding-version`` attributes.
    rows
        Only these rows of a column (:func:`sliceable` elements).

    Returns
    -------
    Any
        A numpy array, pandas extension array or ``Categorical``, a dict, or a scalar.
    """
    key = (isinstance(elem, h5py.Group), _attr(elem, "encoding-type"),
           _attr(elem, "encoding-version"))
    reader = _READERS.get(key)
    if rows is not None:
        if key not in _COLUMNS:
            raise ValueError(f"{elem.name}: rows of a {key[1]!r} element are not read in slices")
        return _COLUMNS[key](elem, rows)
    if reader is None:
        from anndata.io import read_elem as anndata_read_elem

        return anndata_read_elem(elem)
    return reader(elem)


def sliceable(elem: h5py.Dataset | h5py.Group) -> bool:
    """Whether ``elem`` is a 1-D column :func:`read_elem` reads in row slices (its type
    then follows from its encoding and dtype, never from the values of a slice)."""
    key = (isinstance(elem, h5py.Group), _attr(elem, "encoding-type"),
           _attr(elem, "encoding-version"))
    if key not in _COLUMNS:
        return False
    data = elem if isinstance(elem, h5py.Dataset) else elem.get("codes", elem.get("values"))
    return isinstance(data, h5py.Dataset) and data.ndim == 1


def _attr(elem: h5py.HLObject, name: str) -> Any:
    value = elem.attrs.get(name, "")
    return value.decode() if isinstance(value, bytes) else value


def _categorical(elem: h5py.Group, rows: slice | None = None) -> Any:
    import pandas as pd

    return pd.Categorical.from_codes(
        codes=read_elem(elem["codes"], rows),
        categories=read_elem(elem["categories"]),
        ordered=bool(elem.attrs["ordered"]),  # required, as anndata requires it
    )


def _nullable(kind: str) -> Callable[..., Any]:
    def read(elem: h5py.Group, rows: slice | None = None) -> Any:
        import pandas as pd

        array_type = pd.arrays.IntegerArray if kind == "integer" else pd.arrays.BooleanArray
        return array_type(read_elem(elem["values"], rows), mask=read_elem(elem["mask"], rows))

    return read


_READERS: dict[tuple[bool, str, str], Callable[[Any], Any]] = {
    (False, "array", "0.2.0"): lambda d: d[()],
    (False, "string-array", "0.2.0"): lambda d: d.asstr()[()],
    (False, "numeric-scalar", "0.2.0"): lambda d: d[()].item(),
    (False, "string", "0.2.0"): lambda d: d.asstr()[()],
    (True, "categorical", "0.2.0"): _categorical,
    (True, "nullable-integer", "0.1.0"): _nullable("integer"),
    (True, "nullable-boolean", "0.1.0"): _nullable("boolean"),
    (True, "dict", "0.1.0"): lambda g: {k: read_elem(v) for k, v in g.items()},
}

# Columns read in row slices (a multi-million-row obs is converted a slice at a time).
_COLUMNS: dict[tuple[bool, str, str], Callable[[Any, slice], Any]] = {
    (False, "array", "0.2.0"): lambda d, rows: d[rows],
    (False, "string-array", "0.2.0"): lambda d, rows: d.asstr()[rows],
    (True, "categorical", "0.2.0"): _categorical,
    (True, "nullable-integer", "0.1.0"): _nullable("integer"),
    (True, "nullable-boolean", "0.1.0"): _nullable("boolean"),
}
