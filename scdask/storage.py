"""Where a store lives: a local path or an fsspec URL, seen as Zarr store plus files."""

from __future__ import annotations

import dataclasses
import os
from typing import IO, Any

import fsspec
import zarr
import zarr.storage


@dataclasses.dataclass
class Location:
    """A store root: a local folder or an fsspec URL (``s3://bucket/plate.zarr``).

    Parameters
    ----------
    url
        Local path or URL of the store root.
    storage_options
        Passed to fsspec for URLs (credentials, ``endpoint_url`` …).
    """

    url: str
    storage_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.url = os.fspath(self.url).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(self.storage_options or {}))
        self.is_local = "file" in _protocols(self.fs)
        if self.is_local:
            self.root = os.path.abspath(self.root)

    def __str__(self) -> str:
        return self.url

    def path(self, relpath: str = "") -> str:
        return f"{self.root}/{relpath}" if relpath else self.root

    def zarr_store(self, read_only: bool = False) -> zarr.abc.store.Store:
        """A Zarr store rooted here."""
        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self.storage_options, read_only=read_only
        )

    def open_group(self, mode: str = "r") -> zarr.Group:
        return zarr.open_group(self.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3)

    def open(self, relpath: str, mode: str = "rb") -> IO[bytes]:
        if "w" in mode and self.is_local:
            os.makedirs(os.path.dirname(self.path(relpath)), exist_ok=True)
        return self.fs.open(self.path(relpath), mode)

    def exists(self, relpath: str = "") -> bool:
        if not self.is_local:  # other processes write here: no stale listings
            self.fs.invalidate_cache(self.path(relpath))
        return bool(self.fs.exists(self.path(relpath)))

    def remove(self, relpath: str = "") -> None:
        """Delete ``relpath`` (a file or a folder) if it exists."""
        p = self.path(relpath)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    def listdir(self, relpath: str = "") -> list[str]:
        p = self.path(relpath)
        if not self.exists(relpath):
            return []
        return [os.path.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False)]

    def size(self) -> int:
        """Bytes stored under the root."""
        return int(self.fs.du(self.root, total=True)) if self.exists() else 0


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


class DestinationError(ValueError):
    """A destination scdask refuses to write: it is, holds or lies inside a source."""


def check_destination(dst: Location, sources: list[str | Location], what: str) -> None:
    """Refuse ``dst`` when it is, contains, or lies inside one of ``sources``.

    Parameters
    ----------
    dst
        Where ``what`` would be written (and, with ``overwrite``, what would be replaced).
    sources
        Paths or URLs that are read to write it: never replaced, never written into.
    what
        What is written, for the message (``"the store"``, ``"the export"``).

    Raises
    ------
    DestinationError
        Naming the destination and the source it would destroy.
    """
    here = _resolved(dst)
    for src in sources:
        there = _resolved(src if isinstance(src, Location) else Location(src))
        if here[0] != there[0]:
            continue  # different file systems
        a, b = here[1], there[1]
        if a == b or b.startswith(a.rstrip("/") + "/"):
            raise DestinationError(
                f"{dst}: {what} cannot be written here: this path "
                f"{'is' if a == b else 'contains'} its source {src}; choose another destination"
            )
        if a.startswith(b.rstrip("/") + "/"):
            raise DestinationError(
                f"{dst}: {what} cannot be written inside its source {src}; choose another "
                "destination"
            )


def _resolved(loc: Location) -> tuple[str, str]:
    """(file system, canonical path): symbolic links resolved on local paths."""
    if loc.is_local:
        return "file", os.path.realpath(loc.root)
    return _protocols(loc.fs)[0], loc.root.rstrip("/")
