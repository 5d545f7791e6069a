"""The scdask store format: version, names, and the conversion :class:`Plan`.

Everything that decides what a store looks like on disk lives here, so that the
writer (:mod:`scdask.conversion`) and the reader (:mod:`scdask.store`) agree by
construction. ``docs/FORMAT.md`` is the prose specification of the same names.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

FORMAT_VERSION = 3
"""Version of the on-disk layout written by this scdask. Readers refuse newer ones.

1: the layout of docs/FORMAT.md without checksums. 2: every chunk of every array ends
with a CRC-32C and is written (all-zero chunks included); Parquet pages carry checksums.
3: ``data`` and ``indices`` are sharded: each chunk of format 2 is a shard of inner
chunks that decode on their own (:mod:`scdask.format.shards`).
"""

# Root group attribute holding the metadata of a complete store.
ROOT_ATTR = "scdask"
# Root group attribute present only while a conversion is in progress.
WIP_ATTR = "scdask_conversion"
# Folder (inside the store) of partition markers and partial results.
WIP_DIR = "wip"

OBS_FILE = "obs.parquet"
VAR_FILE = "var.parquet"
UNS_FILE = "uns.json"
#: Elements only anndata's encoding holds (uns tables, sparse obsm, ...), written by anndata.
ELEMENTS_FILE = "elements.h5"
# Column of obs.parquet / var.parquet holding the AnnData index (obs_names / var_names).
INDEX_COLUMN = "_index"

# Arrays of a matrix group.
DATA = "data"
INDICES = "indices"
COLPTR = "colptr"
INDEX_DTYPE = "uint16"
COLPTR_DTYPE = "int64"
MAX_ROW_GROUP_SIZE = 1 << 16  # cell indices local to a row group must fit uint16

STATS = ("nnz", "sum", "sumsq", "min", "max")
"""Per-cell and per-gene statistics stored at conversion time, in this order."""

MATRIX_ENCODING = "row-group-csc"


def cell_stat_array(stat: str) -> str:
    """Name of the per-cell statistic array inside a matrix group."""
    return f"cell_{stat}"


def gene_stat_array(stat: str) -> str:
    """Name of the per-gene statistic array inside a matrix group."""
    return f"gene_{stat}"


class FormatError(ValueError):
    """A store or source does not have the structure scdask expects."""


def narrow_dtype(dtype: np.dtype | str) -> str:
    """The stored dtype for values of ``dtype`` when they are integer counts up to 65,535."""
    dtype = np.dtype(dtype)
    if dtype.kind in "fiu" and dtype.itemsize > 2:
        return np.dtype(np.uint16).str
    return dtype.str


class LossyDtypeError(FormatError):
    """Values cannot be stored in the narrower dtype chosen for them without loss."""


class FormatVersionError(FormatError):
    """A store was written by a newer scdask than this one."""


def check_version(found: Any, where: str) -> None:
    """Refuse a store whose format version this scdask cannot read.

    Parameters
    ----------
    found
        The ``format_version`` recorded in the store.
    where
        The store path, for the error message.
    """
    if not isinstance(found, int) or found < 1:
        raise FormatError(f"{where}: format_version {found!r} is not a positive integer")
    if found > FORMAT_VERSION:
        raise FormatVersionError(
            f"{where} has scdask format version {found}, but this scdask reads format "
            f"versions up to {FORMAT_VERSION}; upgrade scdask to open it."
        )


@dataclasses.dataclass(frozen=True)
class Codecs:
    """Compression settings for the sparse arrays of a matrix.

    ``data`` (the stored values, read by every query) and the rest (``indices``,
    ``colptr``, statistics) are compressed apart: Blosc's lz4hc decodes a chunk of counts
    3-4× faster than zstd for ~20% more bytes in ``data`` (~5% of a store), and a
    smaller inner chunk of ``data`` serves one gene with less decoding; see
    docs/FORMAT.md for the measurements that chose each default.
    """

    cname: str = "zstd"
    clevel: int = 1
    #: Blosc compressor and level of ``data``
    value_cname: str = "lz4hc"
    value_clevel: int = 1
    #: entries per inner chunk of a shard (format 3) of ``data`` and of ``indices``, at most
    value_chunk: int = 1 << 15
    index_chunk: int = 1 << 16
    delta_indices: bool = True
    #: store integer counts held in a wider dtype (float32, int32, ...) as uint16 when lossless
    narrow: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Codecs:
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class MatrixPlan:
    """How one cell × gene matrix (X, a layer, or raw/X) is laid out in the store.

    Attributes
    ----------
    name
        Path of the matrix group inside the store and the source: ``X``,
        ``layers/<name>`` or ``raw/X``.
    n_obs, n_vars
        Shape of the matrix.
    dtype
        Value dtype, as in the source: what readers return.
    stored_dtype
        Dtype of ``data`` on disk: ``dtype``, or ``uint16`` when the values are
        integer counts (checked losslessly for every row group at conversion).
    source_format
        ``csr``, ``csc`` or ``dense``, as found in the source.
    var
        Store path of the Parquet table describing the columns: ``var.parquet``
        or ``raw/var.parquet``.
    """

    name: str
    n_obs: int
    n_vars: int
    dtype: str
    source_format: str
    var: str
    stored_dtype: str = ""

    def __post_init__(self) -> None:
        if not self.stored_dtype:
            object.__setattr__(self, "stored_dtype", self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MatrixPlan:
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a conversion needs to know, saved in the store before any data.

    A plan is written by :func:`scdask.conversion.convert_init` and read back by every
    partition and by the finaliser, so the three steps can run in different
    processes or on different machines.
    """

    source: str
    n_obs: int
    n_vars: int
    row_group_size: int
    chunk_size: int
    matrices: tuple[MatrixPlan, ...]
    codecs: Codecs = Codecs()
    source_size: int = 0
    source_mtime: float = 0.0
    format_version: int = FORMAT_VERSION
    source_kind: str = "h5ad"  # the reader (scdask.sources.SOURCES); plans before it: h5ad

    @property
    def n_groups(self) -> int:
        """Number of row groups (partitions)."""
        return math.ceil(self.n_obs / self.row_group_size)

    def group_rows(self, group: int) -> tuple[int, int]:
        """First and one-past-last cell of row group ``group``."""
        start = group * self.row_group_size
        return start, min(start + self.row_group_size, self.n_obs)

    def capacity(self, m: MatrixPlan) -> int:
        """Length of one row of ``data``/``indices``: the most non-zeros a group can hold."""
        return max(1, self.row_group_size * m.n_vars)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["matrices"] = [m.to_dict() for m in self.matrices]
        d["codecs"] = self.codecs.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        check_version(d.get("format_version"), d.get("source", "plan"))
        d["matrices"] = tuple(MatrixPlan.from_dict(m) for m in d["matrices"])
        d["codecs"] = Codecs.from_dict(d["codecs"])
        plan = cls(**d)
        plan.validate()
        return plan

    def validate(self) -> None:
        """Raise :class:`ValueError` naming the first option that is out of range."""
        parse_row_group_size(self.row_group_size)
        parse_chunk_size(self.chunk_size)
        if self.n_obs < 0:
            raise ValueError(f"n_obs must be >= 0, got {self.n_obs}")
        names = [m.name for m in self.matrices]
        if len(set(names)) != len(names):
            raise ValueError(f"matrix names repeat: {names}")


def parse_row_group_size(value: int) -> int:
    """Check a row-group size: a positive integer no larger than 65,536."""
    value = int(value)
    if not 1 <= value <= MAX_ROW_GROUP_SIZE:
        raise ValueError(
            f"row_group_size must be between 1 and {MAX_ROW_GROUP_SIZE} (cell indices are "
            f"stored as uint16 within a row group), got {value}"
        )
    return value


def parse_chunk_size(value: int) -> int:
    """Check a chunk size (non-zeros per Zarr chunk): at least 1,024."""
    value = int(value)
    if value < 1024:
        raise ValueError(f"chunk_size must be at least 1024 non-zeros, got {value}")
    return value
