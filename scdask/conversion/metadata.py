"""obs, var, obsm, varm, obsp, varp and uns of a source, written to the store.

Each in scdask's own encoding where it has one (Parquet tables, Zarr arrays, ``uns.json``);
the rest (uns tables, sparse obsm, ...) in anndata's encoding (``elements.h5``); only what
anndata cannot write either is reported as not kept.
"""

from __future__ import annotations

from typing import Any

import zarr

from scdask.conversion.arrays import EVERY_CHUNK, compressors
from scdask.conversion.pairwise import write_pairwise
from scdask.format import OBS_FILE, VAR_FILE, FormatError, Plan
from scdask.sources import Source
from scdask.store.location import Location
from scdask.store.metadata import write_elements, write_table, write_uns

#: Rows of obs read and written at a time.
OBS_SLICE = 1 << 18


def write_metadata(src: Source, loc: Location, root: zarr.Group, plan: Plan) -> list[str]:
    """Write obs, var (and raw's), obsm, varm, obsp, varp and uns; return what is not kept."""

    R = plan.row_group_size
    # obs a slice of ~260,000 rows at a time (whole row groups): its strings (cell names,
    # barcodes) are never all in memory; var is as long as the genes.
    write_table(loc, OBS_FILE, src.frame("obs", rows=R * max(1, OBS_SLICE // R)), R)
    write_table(loc, VAR_FILE, src.frame("var"), 1 << 16)
    if any(m.name == "raw/X" for m in plan.matrices):
        write_table(loc, "raw/" + VAR_FILE, src.frame("raw/var"), 1 << 16)
    for key, arr in src.obsm_varm().items():
        axis = key.split("/", 1)[0]
        chunks = (R, *arr.shape[1:]) if axis == "obsm" else arr.shape
        z = root.create_array(
            key, shape=arr.shape, chunks=tuple(max(1, c) for c in chunks), dtype=arr.dtype,
            compressors=compressors(plan.codecs, "shuffle"), config=EVERY_CHUNK,
        )
        step = R if axis == "obsm" else max(1, arr.shape[0])
        for a in range(0, arr.shape[0], step):
            z[a : a + step] = arr[a : a + step]
    for key, element in src.pairwise().items():
        try:
            write_pairwise(root, plan, key, element)
        except FormatError as e:
            raise FormatError(f"{plan.source}: {e}") from None
    uns = src.uns()  # read before asking what was dropped: unreadable elements are among them
    not_kept = src.dropped() + write_uns(loc, uns)
    return _write_elements(src, loc, uns, not_kept)


def _write_elements(src: Source, loc: Location, uns: dict[str, Any], not_kept: list[str]
                    ) -> list[str]:
    """Hand what scdask's own encodings do not hold (uns tables, sparse or table obsm/varm)
    to anndata's writer; return what even it cannot write."""
    elements: dict[str, Any] = {}
    for name in not_kept:
        path = _element_path(name)
        if path.startswith("uns/") and path[4:] in uns:
            elements[path] = uns[path[4:]]  # the whole top-level element
        elif path.startswith(("obsm/", "varm/", "raw/varm/")):
            try:
                elements[path] = src.element(path)
            except Exception:  # noqa: BLE001 - stays named as not kept
                continue
    failed = write_elements(loc, elements)
    kept = set(elements) - {_element_path(f) for f in failed}
    return [n for n in not_kept if _element_path(n) not in kept]


def _element_path(name: str) -> str:
    """The element a not-kept name is about: ``uns/a`` of ``uns/a/b (why)``,
    ``raw/varm/k`` of ``raw/varm/k``."""
    parts = name.split(" ", 1)[0].split("/")
    return "/".join(parts[:3] if parts[0] == "raw" else parts[:2])
