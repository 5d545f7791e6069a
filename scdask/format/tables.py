"""The obs/var table codec: pandas frames to Arrow tables and back, dtypes kept exactly.

Categoricals keep their categories, order and ``ordered`` flag (schema metadata
``scdask_categoricals``), the index is column ``_index`` and its name is schema metadata
``scdask_index_name`` (docs/FORMAT.md, "obs, var, uns").
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from scdask.format import INDEX_COLUMN

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


class ArrowFrameBuilder:
    """Assemble an Arrow table one pandas column at a time, keeping pandas dtypes."""

    def __init__(self, index: pd.Index) -> None:
        import numpy as np
        import pandas as pd

        self.arrays: list[pa.Array] = []
        self.names: list[str] = []
        self.pandas_columns: list[dict[str, Any]] = []
        self.categoricals: dict[str, dict[str, Any]] = {}
        self.index_name = index.name
        self.add(INDEX_COLUMN, pd.Series(np.asarray(index, dtype=object)))

    def add(self, name: str, values: Any) -> None:
        import pandas as pd
        import pyarrow as pa

        dtype = getattr(values, "dtype", None)
        if isinstance(dtype, pd.CategoricalDtype):
            # Parquet keeps only string dictionaries; record the categories exactly.
            cats = dtype.categories
            self.categoricals[name] = {
                "categories": cats.tolist(),
                "dtype": cats.dtype.str if cats.dtype != object else "object",
                "ordered": bool(dtype.ordered),
            }
        table = pa.Table.from_pandas(pd.DataFrame({name: values}), preserve_index=False)
        self.arrays.append(table.column(0).combine_chunks())
        self.names.append(name)
        meta = json.loads(table.schema.metadata[b"pandas"])
        self.pandas_columns.append(meta["columns"][0])
        self._pandas_meta = meta

    def finish(self) -> pa.Table:
        import pyarrow as pa

        meta = dict(self._pandas_meta)
        meta["columns"] = self.pandas_columns
        meta["index_columns"] = []
        meta["column_indexes"] = []
        schema_meta = {
            b"pandas": json.dumps(meta).encode(),
            b"scdask_categoricals": json.dumps(self.categoricals).encode(),
        }
        if self.index_name is not None:
            schema_meta[b"scdask_index_name"] = str(self.index_name).encode()
        return pa.table(self.arrays, names=self.names).replace_schema_metadata(schema_meta)


def dataframe_to_arrow(df: pd.DataFrame) -> pa.Table:
    """A pandas frame as an Arrow table with its index in column ``_index``."""
    builder = ArrowFrameBuilder(df.index)
    for col in df.columns:
        builder.add(str(col), df[col].values)
    return builder.finish()


def frame_to_dataframe(table: pa.Table, deduplicate: bool = True) -> pd.DataFrame:
    """Arrow table written by scdask back to pandas, index restored.

    ``deduplicate=False`` skips Arrow's sharing of equal strings (half the time for a
    var of unique gene names).
    """
    import json

    import pandas as pd

    from scdask.format import INDEX_COLUMN

    df = table.to_pandas(deduplicate_objects=deduplicate)
    meta = table.schema.metadata or {}
    for col, c in json.loads(meta.get(b"scdask_categoricals", b"{}")).items():
        if col in df.columns:
            cats = pd.Index(c["categories"], dtype=None if c["dtype"] == "object" else c["dtype"])
            if not len(cats):
                cats = pd.Index([], dtype=object)
            values = df[col]
            if isinstance(values.dtype, pd.CategoricalDtype) and values.cat.categories.dtype == cats.dtype:
                df[col] = values.cat.set_categories(cats, ordered=c["ordered"])
            else:
                df[col] = pd.Categorical(values, categories=cats, ordered=c["ordered"])
    index = df.pop(INDEX_COLUMN)
    df.index = index.astype(object) if index.dtype != object else index
    name = (table.schema.metadata or {}).get(b"scdask_index_name")
    df.index.name = name.decode() if name else None
    return df
