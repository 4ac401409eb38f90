"""Bad input → the right typed error with a one-line message, from the API and from the CLI (exit 2)."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lrs_vqa.cli import main
from pyramid.dip import DynamicImagePyramid
from pyramid.errors import (
    CorruptRasterError,
    EmptyFileError,
    NotAFileError,
    NotARasterError,
    RasterInputError,
    RasterNotFoundError,
    RasterTooLargeError,
    UnsupportedRasterError,
)
from pyramid.source import inspect_raster
from tests.pyramid.rasters import Raster, make_options, smooth, write_tiff

pytestmark = pytest.mark.usefixtures("isolated_default_cache")  # the CLI uses the default cache dir


def _rgb(h: int = 600, w: int = 800) -> np.ndarray:
    return np.round(smooth(3, h, w, seed=5)).astype(np.uint8)


def truncated(tmp: Path, name: str, write: Callable[[Path], object], keep: float = 0.6) -> Path:
    full = tmp / f"full-{name}"
    write(full)
    data = full.read_bytes()
    out = tmp / name
    out.write_bytes(data[: int(len(data) * keep)])
    return out


def absurd_tiff(path: Path, width: int = 200_000, height: int = 200_000) -> Path:
    """A valid 16×16 TIFF whose ImageWidth/ImageLength tags are patched to declare a huge image."""
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        where = {code: (tags[code].valueoffset, tags[code].dtype) for code in (256, 257)}
    blob = bytearray(path.read_bytes())
    for code, value in ((256, width), (257, height)):
        offset, dtype = where[code]
        fmt = {3: "<H", 4: "<I", 16: "<Q"}[int(dtype)]
        struct.pack_into(fmt, blob, offset, value)
    path.write_bytes(bytes(blob))
    with tifffile.TiffFile(path) as tif:  # the patch took
        assert tif.pages[0].shape[:2] == (height, width)
    return path


# name → (builder(tmp_path) -> path, expected error type)
def _missing(tmp: Path) -> Path:
    return tmp / "does-not-exist.tif"


def _directory(tmp: Path) -> Path:
    d = tmp / "a-folder.tif"
    d.mkdir()
    return d


def _empty(tmp: Path) -> Path:
    p = tmp / "empty.tif"
    p.touch()
    return p


def _text(tmp: Path) -> Path:
    p = tmp / "notes.tif"
    p.write_text("this is not an image\n" * 50)
    return p


def _trunc_striped(tmp: Path) -> Path:
    return truncated(tmp, "striped.tif", lambda p: write_tiff(p, _rgb(), tiled=False, compress="lzw"))


def _trunc_tiled(tmp: Path) -> Path:
    return truncated(
        tmp,
        "tiled.tif",
        lambda p: write_tiff(p, _rgb(), tiled=True, blockxsize=256, blockysize=256, compress="deflate"),
    )


def _trunc_cog(tmp: Path) -> Path:
    def write(p: Path) -> None:
        write_tiff(p, _rgb(), tiled=True, blockxsize=256, blockysize=256, compress="deflate", overviews=(2,))

    return truncated(tmp, "cog.tif", write)


def _trunc_png(tmp: Path) -> Path:
    return truncated(tmp, "image.png", lambda p: Image.fromarray(_rgb().transpose(1, 2, 0)).save(p))


def _trunc_jpeg(tmp: Path) -> Path:
    return truncated(
        tmp, "image.jpg", lambda p: Image.fromarray(_rgb().transpose(1, 2, 0)).save(p, quality=90)
    )


def _garbage_tiff(tmp: Path) -> Path:
    p = tmp / "garbage.tif"
    p.write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(8000))
    return p


def _garbage_bigendian_tiff(tmp: Path) -> Path:
    p = tmp / "garbage-mm.tif"
    p.write_bytes(b"MM\x00*" + np.random.default_rng(1).bytes(8000))
    return p


def _complex(tmp: Path) -> Path:
    return write_tiff(tmp / "complex.tif", (np.ones((1, 64, 64)) + 1j).astype(np.complex64))


def _absurd(tmp: Path) -> Path:
    return absurd_tiff(tmp / "absurd.tif")


CASES: dict[str, tuple[Callable[[Path], Path], type[RasterInputError]]] = {
    "missing": (_missing, RasterNotFoundError),
    "directory": (_directory, NotAFileError),
    "empty": (_empty, EmptyFileError),
    "text": (_text, NotARasterError),
    "truncated-striped-tiff": (_trunc_striped, CorruptRasterError),
    "truncated-tiled-tiff": (_trunc_tiled, CorruptRasterError),
    "truncated-cog": (_trunc_cog, CorruptRasterError),
    "truncated-png": (_trunc_png, CorruptRasterError),
    "truncated-jpeg": (_trunc_jpeg, CorruptRasterError),
    "garbage-after-tiff-magic": (_garbage_tiff, CorruptRasterError),
    "garbage-after-bigendian-magic": (_garbage_bigendian_tiff, CorruptRasterError),
    "complex64": (_complex, UnsupportedRasterError),
    "absurd-dimensions": (_absurd, RasterTooLargeError),
}


@pytest.mark.parametrize("case", list(CASES))
def test_inspect_raster_typed_error(case: str, tmp_path: Path) -> None:
    build, err_type = CASES[case]
    path = build(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(err_type) as info:
        inspect_raster(path)
    assert time.perf_counter() - t0 < 5  # fails fast: headers and offsets only
    err = info.value
    assert type(err) is err_type
    assert "\n" not in str(err) and "\r" not in str(err)
    assert str(err).startswith(f"{path}: ") and err.path == str(path)
    assert len(err.reason) > 5


@pytest.mark.parametrize("case", list(CASES))
def test_pyramid_open_typed_error(case: str, tmp_path: Path) -> None:
    build, err_type = CASES[case]
    path = build(tmp_path)
    with pytest.raises(err_type) as info:
        DynamicImagePyramid.open(path, make_options(tmp_path, cache_min_pixels=1000))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()  # nothing built for a bad file


@pytest.mark.parametrize("case", list(CASES))
def test_cli_inspect_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build, _ = CASES[case]
    path = build(tmp_path)
    capsys.readouterr()
    rc = main(["inspect", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert str(path) in lines[0] or os.path.basename(path) in lines[0]
    assert "Traceback" not in err


def test_cli_error_line_is_not_wrapped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A long path plus a reason with spaces is well past 80 columns; it must still be one line."""
    deep = tmp_path / ("a long folder name with spaces " * 3).strip()
    deep.mkdir()
    path = _trunc_striped(deep)
    rc = main(["inspect", str(path)])
    _, err = capsys.readouterr()
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and len(err) > 120


def test_max_pixels(tmp_path: Path) -> None:
    path = write_tiff(
        tmp_path / "ok.tif", _rgb(), tiled=True, blockxsize=256, blockysize=256, compress="deflate"
    )
    assert inspect_raster(path).pixels == 600 * 800
    for call in (
        lambda: inspect_raster(path, max_pixels=600 * 800 - 1),
        lambda: DynamicImagePyramid.open(path, make_options(tmp_path, max_pixels=1000)),
    ):
        with pytest.raises(RasterTooLargeError) as info:
            call()
        assert "\n" not in str(info.value) and "800x600" in str(info.value)
    # exactly at the limit is fine
    with DynamicImagePyramid.open(path, make_options(tmp_path, max_pixels=600 * 800)) as dip:
        assert dip.info.width == 800


def test_header_dimensions_inconsistent_with_strip_table(tmp_path: Path) -> None:
    """A header declaring 60000×60000 (3.6 Gpx, under the 4 Gpx default limit) whose strip table holds
    one 256-byte strip instead of the 3750 the dimensions require: the offsets table is truncated, so
    this is a corrupt file and must be refused at open — not read as 3.6 Gpx of zeros (its first coarse
    read would otherwise stream all 3.6 Gpx through libvips to build a disk cache)."""
    path = absurd_tiff(tmp_path / "big.tif", 60_000, 60_000)
    t0 = time.perf_counter()
    with pytest.raises(CorruptRasterError) as info:
        DynamicImagePyramid.open(path, make_options(tmp_path))
    assert "\n" not in str(info.value)
    assert time.perf_counter() - t0 < 5


def test_corrupt_tile_data_raises_on_read(tmp_path: Path) -> None:
    """A complete file whose first tile's bytes are garbage: the header is fine, the read is not."""
    path = write_tiff(
        tmp_path / "bad-tile.tif", _rgb(), tiled=True, blockxsize=256, blockysize=256, compress="deflate"
    )
    with tifffile.TiffFile(path) as tif:
        off, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    blob = bytearray(path.read_bytes())
    blob[off + 8 : off + count] = np.random.default_rng(3).bytes(count - 8)
    path.write_bytes(bytes(blob))
    inspect_raster(path)  # offsets are all in the file
    for direct in (True, False):
        with DynamicImagePyramid.open(path, make_options(tmp_path, direct_decode=direct)) as dip:
            dip.tile(0, 1, 1)  # a tile outside the broken block still reads
            with pytest.raises(CorruptRasterError) as info:
                dip.tile(0, 0, 0)
            assert "\n" not in str(info.value)
            with pytest.raises(CorruptRasterError):
                list(dip.stream(dip.all_tiles(0)))


def test_paletted_raster_is_unsupported(tmp_path: Path) -> None:
    p = tmp_path / "palette.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64) % 7, "L").convert("P").save(p)
    img = Image.open(p)
    assert img.mode == "P"
    with pytest.raises(UnsupportedRasterError) as info:
        DynamicImagePyramid.open(p, make_options(tmp_path))
    assert "\n" not in str(info.value)


def test_good_file_via_cli_is_exit_0(cog_tif: Raster, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(cog_tif.path)]) == 0
    _, err = capsys.readouterr()
    assert "error" not in err
