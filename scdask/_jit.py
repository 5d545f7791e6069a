"""Compiled kernels, cached in the user's cache directory, never inside the installed package.

numba's ``cache=True`` writes beside the source file (``site-packages/scdask/__pycache__``):
files pip does not remove on uninstall (the leftover folder then shadows a reinstall as a
namespace package) and that a read-only shared environment cannot take. :func:`jit` is
``numba.njit`` with each kernel's cache located by scdask instead, for scdask's kernels only
(numba's settings for anyone else's functions are left alone):

1. ``NUMBA_CACHE_DIR``, when the user set it (numba's own rule);
2. ``SCDASK_CACHE_DIR``, else ``$XDG_CACHE_HOME/scdask``, else ``~/.cache/scdask``
   (``%LOCALAPPDATA%\\scdask`` on Windows), under ``numba/``;
3. a folder of the user's in the temporary directory, when 2 cannot be written.

When none can be written, kernels compile in each process and are not cached.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numba


def cache_dir() -> str:
    """Where scdask keeps its compiled kernels (see the module's docstring)."""
    root = os.environ.get("SCDASK_CACHE_DIR")
    if not root:
        if sys.platform == "win32":
            base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~")
        else:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                    ".cache")
        root = os.path.join(base, "scdask")
    return os.path.join(root, "numba")


def _temp_dir() -> str:
    user = os.environ.get("USER") or str(getattr(os, "getuid", lambda: "user")())
    return os.path.join(tempfile.gettempdir(), f"scdask-{user}", "numba")


def _cache_class() -> Any:
    """numba's function cache with scdask's locators, or None where numba lacks the hooks."""
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - numba without its caching module
        return None
    base = getattr(caching, "UserProvidedCacheLocator", None) or getattr(
        caching, "_UserProvidedCacheLocator", None)
    impl = getattr(caching, "CompileResultCacheImpl", None)
    cache = getattr(caching, "FunctionCache", None)
    if base is None or impl is None or cache is None:  # pragma: no cover - another numba
        return None

    class _Locator(base):  # type: ignore[misc, valid-type]
        root: Callable[[], str] = staticmethod(cache_dir)

        def __init__(self, py_func: Any, py_file: str) -> None:
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(self.root(), self.get_suitable_cache_subpath(py_file))

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            # the mixin's rule: the source file exists and the folder can be written
            return super(base, cls).from_function(py_func, py_file)

    class _TempLocator(_Locator):
        root = staticmethod(_temp_dir)

    class _Impl(impl):  # type: ignore[misc, valid-type]
        _locator_classes = [base, _Locator, _TempLocator]  # base: only with NUMBA_CACHE_DIR

    class _Cache(cache):  # type: ignore[misc, valid-type]
        _impl_class = _Impl

    return _Cache


_CACHE = _cache_class()


def jit(**options: Any) -> Callable[[Any], Any]:
    """``numba.njit(**options)``, cached where :func:`cache_dir` says.

    Parameters
    ----------
    **options
        numba's options (``nogil``, ``parallel``, ``inline``...); ``cache`` is set here.
    """

    def wrap(fn: Any) -> Any:
        dispatcher = numba.njit(**options)(fn)
        if _CACHE is not None:
            try:
                dispatcher._cache = _CACHE(dispatcher.py_func)
            except RuntimeError:  # no folder can be written: compiled in each process
                pass
        return dispatcher

    return wrap
