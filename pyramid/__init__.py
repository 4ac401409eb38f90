"""The Dynamic Image Pyramid: tiles and overviews streamed out of giant rasters with bounded memory."""

from pyramid.dip import THUMBNAIL, DynamicImagePyramid, PyramidOptions, Tile, TileKey
from pyramid.errors import (
    CorruptRasterError,
    EmptyFileError,
    NotAFileError,
    NotARasterError,
    RasterInputError,
    RasterNotFoundError,
    RasterTooLargeError,
    RemoteAccessError,
    RemoteLayoutError,
    RemoteRasterError,
    StacItemError,
    UnsupportedRasterError,
)
from pyramid.geometry import Georef, TileGeometry
from pyramid.levels import Level, PixelBox, PyramidSpec, plan_levels, plan_thumbnail
from pyramid.source import Layout, RasterInfo, inspect_raster

__all__ = [
    "THUMBNAIL",
    "CorruptRasterError",
    "DynamicImagePyramid",
    "EmptyFileError",
    "Georef",
    "Layout",
    "Level",
    "NotAFileError",
    "NotARasterError",
    "PixelBox",
    "PyramidOptions",
    "PyramidSpec",
    "RasterInfo",
    "RasterInputError",
    "RasterNotFoundError",
    "RasterTooLargeError",
    "RemoteAccessError",
    "RemoteLayoutError",
    "RemoteRasterError",
    "StacItemError",
    "Tile",
    "TileGeometry",
    "TileKey",
    "UnsupportedRasterError",
    "inspect_raster",
    "plan_levels",
    "plan_thumbnail",
]
