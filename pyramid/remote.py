"""Rasters that are not local files: URLs and GDAL virtual file system paths, read by byte ranges.

``http(s)://`` → ``/vsicurl/``, ``s3://`` → ``/vsis3/``, ``gs://`` → ``/vsigs/``, ``az://`` → ``/vsiaz/``; a
``/vsi…/`` path is used as given. GDAL does the I/O (range requests, merged and parallel, a bounded block
cache); the options below are applied with ``rasterio.Env`` around every open and read of a remote dataset,
so local reads are unaffected. Credentials are GDAL's business: environment variables and config files
(``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``), never a command-line argument; URLs
are shown with their user-info and query values masked (presigned URLs carry signatures there).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, urlsplit

import rasterio

from pyramid.errors import (
    CorruptRasterError,
    NotARasterError,
    RasterInputError,
    RasterNotFoundError,
    RemoteAccessError,
    RemoteRasterError,
)
from pyramid.gdal_vsi import file_counters, network_stats, vsi_copy, vsi_size

_SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}
# GDAL virtual file systems that go over the network (their reads are counted and range-checked).
_NETWORK_VSI = (
    "/vsicurl/",
    "/vsis3/",
    "/vsigs/",
    "/vsiaz/",
    "/vsiadls/",
    "/vsioss/",
    "/vsiswift/",
    "/vsihdfs/",
)


@dataclass(frozen=True)
class RemoteOptions:
    """How remote rasters are read. Timeouts bound every request; retries are few, never endless."""

    timeout_s: int = 30  # whole request
    connect_timeout_s: int = 10
    max_retry: int = 2  # on 429/5xx and connection resets only (GDAL's rule)
    retry_delay_s: float = 0.5
    cache_bytes: int = 64 * 2**20  # GDAL's VSI block cache per open file handle

    def gdal_config(self) -> dict[str, str]:
        return {
            # Opening a.tif must not list the folder (one request per sidecar GDAL would look for).
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "GDAL_HTTP_MULTIRANGE": "YES",  # the ranges of one read in parallel
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # adjacent tiles in one request
            "VSI_CACHE": "TRUE",
            "VSI_CACHE_SIZE": str(self.cache_bytes),
            "GDAL_HTTP_TIMEOUT": str(self.timeout_s),
            "GDAL_HTTP_CONNECTTIMEOUT": str(self.connect_timeout_s),
            "GDAL_HTTP_MAX_RETRY": str(self.max_retry),
            "GDAL_HTTP_RETRY_DELAY": str(self.retry_delay_s),
            "CPL_VSIL_NETWORK_STATS_ENABLED": "YES",  # our bytes/requests counters
        }


@dataclass(frozen=True)
class RasterLocation:
    """Where a raster is: a local file (``gdal_path`` is the path) or a GDAL virtual path."""

    given: str  # as the user wrote it
    gdal_path: str  # what rasterio opens
    remote: bool  # over the network (range reads, counters)

    @property
    def display(self) -> str:
        """``given`` with secrets masked: what records, errors and logs show."""
        return redact(self.given)

    @property
    def name(self) -> str:
        """The file name at the end of the path (for a local copy)."""
        path = urlsplit(self.given).path if "://" in self.given else self.given
        return PurePosixPath(path).name or "remote.tif"


def is_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in _SCHEMES and "://" in text


def is_gdal_path(text: str) -> bool:
    return text.startswith("/vsi")


def is_location(value: object) -> bool:
    """True for a URL or a GDAL virtual path: anything that must not go through ``Path()``."""
    return isinstance(value, str) and (is_url(value) or is_gdal_path(value))


def locate(value: str | Path) -> RasterLocation:
    """Map a user's input onto what GDAL opens. Local paths are returned unchanged."""
    if isinstance(value, Path) or not is_location(value):
        return RasterLocation(str(value), str(value), remote=False)
    text = str(value)
    if is_gdal_path(text):
        return RasterLocation(text, text, remote=text.startswith(_NETWORK_VSI))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return RasterLocation(text, "/vsicurl/" + text, remote=True)
    if not parts.netloc:
        raise RemoteRasterError(redact(text), f"{scheme}:// URL has no bucket/container name")
    key = parts.path.lstrip("/")
    return RasterLocation(text, f"{_SCHEMES[scheme]}{parts.netloc}/{key}", remote=True)


def redact(text: str) -> str:
    """Mask user-info and query values of a URL (also inside a ``/vsicurl/`` path)."""
    prefix = ""
    if text.startswith("/vsi") and "://" in text:
        cut = text.index("/", 5) + 1  # "/vsicurl/" and friends
        prefix, text = text[:cut], text[cut:]
    if "://" not in text:
        return prefix + text
    parts = urlsplit(text)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if "@" in parts.netloc:
        netloc = "***@" + netloc
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    url = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    return prefix + url


@contextlib.contextmanager
def gdal_env(location: RasterLocation, options: RemoteOptions | None) -> Iterator[None]:
    """``rasterio.Env`` with the remote options for a remote location; nothing for a local one."""
    if not location.remote:
        yield
        return
    with rasterio.Env(**(options or RemoteOptions()).gdal_config()):
        yield


# -------------------------------------------------------------------------------------------- errors
_HTTP_CODE = re.compile(r"HTTP (?:response )?code:?\s*(\d{3})", re.IGNORECASE)


def classify_open_error(location: RasterLocation, message: str) -> RasterInputError:
    """One typed, one-line error from GDAL's message about a remote open that failed."""
    where = location.display
    first = " ".join(redact(message).split())[:200]
    code = _HTTP_CODE.search(message)
    if code is not None:
        status = int(code.group(1))
        if status == 404:
            return RasterNotFoundError(where, "no such remote file (HTTP 404)")
        if status in (401, 403):
            return RemoteAccessError(
                where,
                f"access denied (HTTP {status}): set the credentials GDAL reads from the environment "
                "(see README, 'Remote rasters and STAC')",
            )
        return RemoteRasterError(where, f"the server answered HTTP {status}")
    lowered = message.lower()
    if "range downloading not supported" in lowered:
        return RemoteRasterError(where, "server does not support range requests (HTTP Range)")
    if "curl error" in lowered or "timed out" in lowered or "could not resolve" in lowered:
        return RemoteRasterError(where, f"cannot reach the server ({first})")
    if "does not exist" in lowered or "no such file" in lowered:
        return RasterNotFoundError(where, "no such remote file")
    if "access denied" in lowered or "forbidden" in lowered or "credentials" in lowered:
        return RemoteAccessError(where, f"access denied ({first}); see README, 'Remote rasters and STAC'")
    if "not recognized as being in a supported file format" in lowered:
        return NotARasterError(where, "not a raster format GDAL can read")
    if "read failed" in lowered or "truncat" in lowered or "short read" in lowered:
        return CorruptRasterError(where, f"remote file is truncated or the transfer was cut ({first})")
    return RemoteRasterError(where, f"cannot be opened ({first})")


# --------------------------------------------------------------------------------------- counters
@dataclass
class TransferCounter:
    """Requests and bytes GDAL made for one remote file since this counter started (GDAL's statistics are
    process-wide and cumulative, so a counter keeps the values at its start and reports the difference)."""

    location: RasterLocation
    file_size: int | None = None
    downloaded_to: str | None = None  # --download-to: where the local copy that was read lies
    _start: tuple[int, int] = field(default=(0, 0))

    def __post_init__(self) -> None:
        self.restart()

    def _now(self) -> tuple[int, int] | None:
        return file_counters(network_stats(), self.location.gdal_path)

    def restart(self) -> None:
        self._start = self._now() or (0, 0)

    def report(self) -> dict[str, object]:
        now = self._now()
        requests, fetched = (
            (None, None) if now is None else (now[0] - self._start[0], now[1] - self._start[1])
        )
        share = fetched / self.file_size if fetched is not None and self.file_size else None
        return {
            "url": self.location.display,
            "gdal_path": redact(self.location.gdal_path),
            "file_size": self.file_size,
            "bytes_fetched": fetched,
            "requests": requests,
            "fraction_fetched": None if share is None else round(share, 6),
            **({"downloaded_to": self.downloaded_to} if self.downloaded_to is not None else {}),
        }


def remote_size(location: RasterLocation, options: RemoteOptions | None) -> int | None:
    with gdal_env(location, options):
        return vsi_size(location.gdal_path)


def download(location: RasterLocation, folder: str | Path, options: RemoteOptions | None = None) -> Path:
    """A local copy of a remote raster in ``folder`` (reused when a file of the same size is there)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RemoteRasterError(location.display, f"--download-to {folder} is not a folder")
    dest = folder / location.name
    size = remote_size(location, options)
    if dest.is_file() and size is not None and dest.stat().st_size == size:
        return dest
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with gdal_env(location, options):
            vsi_copy(location.gdal_path, tmp)
        tmp.replace(dest)
    except OSError as exc:
        raise classify_open_error(location, f"download failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest
