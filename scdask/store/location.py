"""Where a store lives: a local path or an fsspec URL, seen as Zarr store plus files."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

import fsspec

from scdask.format import FormatError

if TYPE_CHECKING:  # Zarr is imported where a store is read or written through it
    import zarr
    import zarr.abc.store


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
        """The full path of ``relpath``, which must name something inside the root.

        Raises
        ------
        PathOutsideError
            For an absolute path or one with ``..`` (such paths can come from a
            crafted store's metadata).
        """
        if not relpath:
            return self.root
        parts = relpath.replace("\\", "/").split("/")
        if relpath.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise PathOutsideError(f"{self.url}: {relpath!r} names a path outside the store")
        return f"{self.root}/{relpath}"

    def check_inside(self, relpath: str) -> str:
        """:meth:`path`, with symbolic links resolved on a local disk: none may leave the root.

        Folders found not to be links are remembered (a store's reads check the same
        folders again and again); the last component is checked at every call.
        """
        p = self.path(relpath)
        if self.is_local and not self._no_links(relpath):
            root = os.path.realpath(self.root)
            real = os.path.realpath(p)
            if real != root and not real.startswith(root + os.sep):
                raise PathOutsideError(
                    f"{self.url}: {relpath} is a link to {real}, outside the store")
        return p

    def _no_links(self, relpath: str) -> bool:
        """Whether no component of ``relpath`` below the root is a symbolic link."""
        known = self.__dict__.setdefault("_plain_folders", set())
        parts = [q for q in relpath.split("/") if q]
        for i in range(len(parts)):
            sub = "/".join(parts[: i + 1])
            if i < len(parts) - 1 and sub in known:
                continue
            if os.path.islink(f"{self.root}/{sub}"):
                return False
            if i < len(parts) - 1:
                known.add(sub)
        return True

    def zarr_store(self, read_only: bool = False) -> zarr.abc.store.Store:
        """A Zarr store rooted here."""
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self.storage_options, read_only=read_only
        )

    def open_group(self, mode: str = "r", crcs: dict[str, int] | None = None) -> zarr.Group:
        """The root group, as written: for writers, and for reading a store's attributes.

        With ``crcs``, the CRC of every chunk written through the group is noted in it
        (:class:`scdask.store.zarrstores.RecordingStore`).
        """
        store = self.zarr_store(read_only=mode == "r")
        if crcs is not None:
            from scdask.store.zarrstores import RecordingStore

            store = RecordingStore(store, crcs)
        import zarr

        from scdask.format.codecs import implementations

        with implementations():
            return zarr.open_group(store, mode=mode, zarr_format=3)

    def open_checked(self, checksums: bool = True,
                     optional: Callable[[str], bool] | None = None) -> zarr.Group:
        """The root group, read-only, with every chunk read checked (:class:`scdask.store.zarrstores.CheckedStore`).

        Parameters
        ----------
        checksums
            Check each chunk's trailing CRC-32C (stores of format 2 and later).
        optional
            Arrays whose chunks may be missing (read as fill values).
        """
        from scdask.store.zarrstores import CheckedStore

        store = CheckedStore(self.zarr_store(read_only=True), self.url, checksums, optional,
                             self.root if self.is_local else None)
        import zarr

        from scdask.format.codecs import implementations

        with implementations():
            return zarr.open_group(store, mode="r", zarr_format=3)

    def open(self, relpath: str, mode: str = "rb") -> IO[bytes]:
        if "w" in mode and self.is_local:
            os.makedirs(os.path.dirname(self.path(relpath)), exist_ok=True)
            return self.fs.open(self.path(relpath), mode)
        return self.fs.open(self.check_inside(relpath), mode)

    def read(self, relpath: str, missing_ok: bool = False) -> bytes | None:
        """The bytes of file ``relpath`` (links leaving the store refused); ``None`` for a
        missing one when ``missing_ok``. A local file is read without fsspec: opening a
        dataset's arrays over 500 stores reads thousands of small files."""
        try:
            if self.is_local:
                with open(self.check_inside(relpath), "rb") as f:
                    return f.read()
            return bytes(self.fs.cat_file(self.check_inside(relpath)))
        except FileNotFoundError:
            if missing_ok:
                return None
            raise

    def exists(self, relpath: str = "") -> bool:
        if not self.is_local:  # other processes write here: no stale listings
            self.fs.invalidate_cache(self.path(relpath))
        return bool(self.fs.exists(self.path(relpath)))

    @contextlib.contextmanager
    def writer_lock(self, wait: float = 5.0) -> Iterator[None]:
        """Hold the single-writer lock of this destination while the block runs.

        On a local disk, an ``flock`` on ``.<name>.scdask-lock`` beside the store: the
        kernel releases it when its holder dies (with the pool workers it forked, which
        die with their driver), so a killed writer never leaves a stale lock. Reentrant
        within a process. Object storage has no such lock (nothing here keeps two writers
        on two machines apart).

        Parameters
        ----------
        wait
            Seconds to wait for a busy lock (a killed writer's workers exiting).

        Raises
        ------
        WriterBusyError
            Another process holds the lock.
        """
        if not self.is_local or self.root in _HELD:
            yield
            return
        import fcntl
        import socket

        parent, name = os.path.split(os.path.realpath(self.root))
        os.makedirs(parent, exist_ok=True)
        path = os.path.join(parent, f".{name}.scdask-lock")
        deadline = time.monotonic() + wait
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                raise WriterBusyError(
                    f"{self.url}: another scdask process ({holder}) is writing this store; "
                    "wait for it to finish or stop it, then run again"
                ) from None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break  # locked the file that is still there
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed it as we waited: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        _HELD.add(self.root)
        try:
            yield
        finally:
            _HELD.discard(self.root)
            os.unlink(path)
            os.close(fd)

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


_HELD: set[str] = set()  # destinations whose writer lock this process holds


class WriterBusyError(FileExistsError):
    """Another process is writing the destination."""


class PathOutsideError(FormatError):
    """A path read from a store's metadata, or a link in it, leads outside the store."""


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
