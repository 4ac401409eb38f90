"""STAC items as input: pick the item's raster asset and carry its id, datetime and bbox along.

An item is a ``.json`` file, local or at a URL (read through GDAL like the rasters, so the same timeouts and
credentials apply). The asset is the one named, else the first with role ``visual``, then ``data``, then the
first GeoTIFF by media type or file name; its href (resolved against the item's own location) is what the
pyramid opens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from pyramid.errors import StacItemError
from pyramid.gdal_vsi import vsi_read
from pyramid.remote import RemoteOptions, classify_open_error, gdal_env, is_location, locate, redact

_MAX_ITEM_BYTES = 16 * 2**20
_RASTER_SUFFIXES = (".tif", ".tiff", ".gtiff", ".geotiff", ".jp2", ".vrt")


@dataclass(frozen=True)
class StacAsset:
    item: str  # where the item was read (secrets masked)
    item_id: str
    datetime: str | None  # ISO 8601; the item's start/end when it has a range instead
    bbox: list[float] | None  # WGS84 lon/lat
    asset: str  # the asset's key in the item
    href: str  # absolute: a local path or a URL
    media_type: str | None

    def describe(self) -> dict[str, object]:
        return {
            "item": self.item,
            "id": self.item_id,
            "datetime": self.datetime,
            "bbox": self.bbox,
            "asset": self.asset,
            "href": redact(self.href),
            "media_type": self.media_type,
        }


def is_stac_item(value: object) -> bool:
    """A ``.json`` path or URL: the only JSON we open as an image is a STAC item."""
    if not isinstance(value, str | Path):
        return False
    text = str(value)
    path = urlsplit(text).path if is_location(text) and "://" in text else text
    return PurePosixPath(path).suffix.lower() == ".json"


def _read(item: str | Path, remote: RemoteOptions | None) -> tuple[dict, str]:
    """The item's JSON and its absolute location (what relative asset hrefs are resolved against)."""
    text = str(item)
    if is_location(text):
        location = locate(text)
        try:
            with gdal_env(location, remote):
                raw = vsi_read(location.gdal_path, _MAX_ITEM_BYTES)
        except OSError as exc:
            raise classify_open_error(location, str(exc)) from None
        where = text
    else:
        p = Path(text)
        if not p.is_file():
            raise StacItemError(p, "no such STAC item file")
        raw = p.read_bytes()[: _MAX_ITEM_BYTES + 1]
        where = str(p.resolve())
    if len(raw) > _MAX_ITEM_BYTES:
        raise StacItemError(redact(text), f"larger than {_MAX_ITEM_BYTES // 2**20} MB: not a STAC item")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StacItemError(redact(text), f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("type") != "Feature" or "stac_version" not in data:
        raise StacItemError(redact(text), "not a STAC item (a JSON Feature with stac_version)")
    return data, where


def _is_raster(asset: object) -> bool:
    media = (getattr(asset, "media_type", None) or "").lower()
    href = urlsplit(getattr(asset, "href", "")).path.lower()
    return "image/tiff" in media or "geotiff" in media or href.endswith(_RASTER_SUFFIXES)


def resolve_stac(
    item: str | Path, asset: str | None = None, remote: RemoteOptions | None = None
) -> StacAsset:
    """The raster asset of a STAC item (by key ``asset``, else by role and media type)."""
    import pystac  # only STAC input needs it

    data, where = _read(item, remote)
    shown = redact(str(item))
    try:
        parsed = pystac.Item.from_dict(data, href=where, preserve_dict=True)
    except Exception as exc:  # pystac's errors are varied (KeyError, STACTypeError, ValueError...)
        raise StacItemError(shown, f"not a readable STAC item ({type(exc).__name__}: {exc})") from None
    assets = parsed.assets
    if asset is not None:
        if asset not in assets:
            raise StacItemError(shown, f"has no asset {asset!r} (assets: {', '.join(assets) or 'none'})")
        key = asset
    else:
        by_role = [
            k
            for role in ("visual", "data")
            for k, a in assets.items()
            if role in (a.roles or []) and _is_raster(a)
        ]
        rasters = [k for k, a in assets.items() if _is_raster(a)]
        if not by_role and not rasters:
            raise StacItemError(shown, f"has no raster asset (assets: {', '.join(assets) or 'none'})")
        key = (by_role or rasters)[0]
    chosen = assets[key]
    href = chosen.get_absolute_href() or chosen.href
    if href.startswith("file://"):
        href = urlsplit(href).path
    start = parsed.properties.get("start_datetime")
    end = parsed.properties.get("end_datetime")
    when = parsed.datetime.isoformat() if parsed.datetime is not None else None
    if when is None and (start or end):
        when = f"{start or '..'}/{end or '..'}"
    return StacAsset(
        item=shown,
        item_id=parsed.id,
        datetime=when,
        bbox=[float(v) for v in parsed.bbox] if parsed.bbox else None,
        asset=key,
        href=href,
        media_type=chosen.media_type,
    )
