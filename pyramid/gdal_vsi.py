"""The few GDAL C calls rasterio does not expose, through ctypes on the libgdal rasterio already loaded.

Used for remote rasters only: the size of a ``/vsi…/`` file (from GDAL's own cache, no extra request), a
chunked copy of one (``--download-to``), and GDAL's network statistics (bytes and requests per file,
``CPL_VSIL_NETWORK_STATS_ENABLED``). Everything degrades to ``None`` where libgdal cannot be found (a platform
without ``/proc/self/maps`` and no system libgdal): reads still work, only the counters are missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import threading
from collections.abc import Callable
from pathlib import Path

import rasterio  # noqa: F401 - loads libgdal into the process; we bind to that copy

_SEEK_END = 2
_stats_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def libgdal() -> ctypes.CDLL | None:
    """The libgdal rasterio uses (the wheel bundles its own copy: binding another one would be a second
    GDAL with its own caches), or None."""
    path: str | None = None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit(" ", 1)[-1].strip()
                if "/libgdal" in name and ".so" in name:
                    path = name
                    break
    except OSError:
        path = None
    path = path or ctypes.util.find_library("gdal")
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        lib.VSIFOpenL.restype = ctypes.c_void_p
        lib.VSIFOpenL.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.VSIFOpenExL.restype = ctypes.c_void_p
        lib.VSIFOpenExL.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
        lib.VSIFSeekL.restype = ctypes.c_int
        lib.VSIFSeekL.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
        lib.VSIFTellL.restype = ctypes.c_uint64
        lib.VSIFTellL.argtypes = [ctypes.c_void_p]
        lib.VSIFReadL.restype = ctypes.c_size_t
        lib.VSIFReadL.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
        lib.VSIFCloseL.restype = ctypes.c_int
        lib.VSIFCloseL.argtypes = [ctypes.c_void_p]
        lib.VSINetworkStatsGetAsSerializedJSON.restype = ctypes.c_void_p
        lib.VSINetworkStatsGetAsSerializedJSON.argtypes = [ctypes.c_void_p]
        lib.VSIFree.argtypes = [ctypes.c_void_p]
        lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
        lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
        return lib
    except (OSError, AttributeError):  # not a GDAL we can bind (too old, or not found after all)
        return None


def vsi_size(gdal_path: str) -> int | None:
    """Size in bytes of a GDAL virtual file (``/vsicurl/`` answers from its cache after an open)."""
    lib = libgdal()
    if lib is None:
        return None
    handle = lib.VSIFOpenL(gdal_path.encode(), b"rb")
    if not handle:
        return None
    try:
        if lib.VSIFSeekL(handle, 0, _SEEK_END) != 0:
            return None
        return int(lib.VSIFTellL(handle))
    finally:
        lib.VSIFCloseL(handle)


def vsi_copy(
    gdal_path: str, destination: Path, *, chunk: int = 8 << 20, progress: Callable[[int], None] | None = None
) -> int:
    """Copy a GDAL virtual file to ``destination`` in ``chunk``-byte reads; returns the bytes copied.

    Raises OSError with GDAL's last error message when the file cannot be opened or a read falls short of
    the size GDAL announced (a cut transfer)."""
    lib = libgdal()
    if lib is None:
        raise OSError("libgdal cannot be located for a direct copy")
    size = vsi_size(gdal_path)
    lib.CPLErrorReset()
    handle = lib.VSIFOpenExL(gdal_path.encode(), b"rb", 1)  # 1: leave the reason in CPLGetLastErrorMsg
    if not handle:
        raise OSError(_last_error(lib) or "cannot be opened")
    buf = ctypes.create_string_buffer(chunk)
    copied = 0
    try:
        with open(destination, "wb") as out:
            while True:
                n = lib.VSIFReadL(buf, 1, chunk, handle)
                if n == 0:
                    break
                out.write(buf.raw[:n])
                copied += n
                if progress is not None:
                    progress(copied)
    finally:
        lib.VSIFCloseL(handle)
    if size is not None and copied != size:
        raise OSError(
            f"transfer ended after {copied:,} of {size:,} bytes ({_last_error(lib) or 'no detail'})"
        )
    return copied


def vsi_read(gdal_path: str, limit: int) -> bytes:
    """The whole of a small GDAL virtual file (a STAC item); OSError when it cannot be opened or is larger
    than ``limit`` bytes."""
    lib = libgdal()
    if lib is None:
        raise OSError("libgdal cannot be located to read a remote file")
    lib.CPLErrorReset()
    handle = lib.VSIFOpenExL(gdal_path.encode(), b"rb", 1)  # 1: leave the reason in CPLGetLastErrorMsg
    if not handle:
        raise OSError(_last_error(lib) or "cannot be opened")
    try:
        buf = ctypes.create_string_buffer(limit + 1)
        n = lib.VSIFReadL(buf, 1, limit + 1, handle)
    finally:
        lib.VSIFCloseL(handle)
    if n > limit:
        raise OSError(f"larger than {limit:,} bytes")
    return buf.raw[:n]


def _last_error(lib: ctypes.CDLL) -> str:
    msg = lib.CPLGetLastErrorMsg()
    return msg.decode(errors="replace").strip() if msg else ""


def network_stats() -> dict | None:
    """GDAL's network statistics (all files, since the process started), or None where unavailable."""
    lib = libgdal()
    if lib is None:
        return None
    with _stats_lock:
        ptr = lib.VSINetworkStatsGetAsSerializedJSON(None)
        if not ptr:
            return None
        try:
            text = ctypes.string_at(ptr).decode(errors="replace")
        finally:
            lib.VSIFree(ptr)
    try:
        return json.loads(text)
    except ValueError:
        return None


def file_counters(stats: dict | None, gdal_path: str) -> tuple[int, int] | None:
    """(requests, bytes downloaded) GDAL made for one file, from :func:`network_stats`.

    GDAL files each request under the context stack active at the time: reads on an open handle under
    ``handlers.<fs>.files.<path>``, a stat or open probe under
    ``handlers.<fs>.actions.<action>.files.<path>``; the branches are disjoint, so summing them counts every
    request once."""
    if stats is None:
        return None
    requests = downloaded = 0
    for handler in (stats.get("handlers") or {}).values():
        branches = [(handler.get("files") or {}).get(gdal_path)]
        branches += [
            (action.get("files") or {}).get(gdal_path) for action in (handler.get("actions") or {}).values()
        ]
        for branch in branches:
            for method in ((branch or {}).get("methods") or {}).values():
                requests += int(method.get("count", 0))
                downloaded += int(method.get("downloaded_bytes", 0))
    return requests, downloaded


def clear_cache(gdal_path: str | None = None) -> None:
    """Forget what ``/vsicurl/`` (and friends) cached about one file, or about every file."""
    lib = libgdal()
    if lib is None:
        return
    if gdal_path is None:
        lib.VSICurlClearCache()
    else:
        lib.VSICurlPartialClearCache(gdal_path.encode())
