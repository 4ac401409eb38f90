"""Open pyramids kept for reuse: many questions about one image share its header, band plan, stretch,
resampled levels and decoded blocks instead of rebuilding them per question."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from pyramid.dip import DynamicImagePyramid, PyramidOptions
from pyramid.remote import is_location


class PyramidPool:
    """One open :class:`DynamicImagePyramid` per (image, options); close the pool (or use it as a context
    manager) to close them all."""

    def __init__(self) -> None:
        self.opened: dict[tuple[Path | str, PyramidOptions], DynamicImagePyramid] = {}
        self.opens = 0  # pyramids actually opened

    @contextlib.contextmanager
    def lend(self, path: str | Path, options: PyramidOptions | None = None) -> Iterator[DynamicImagePyramid]:
        """The pyramid of ``path``, opened on first use; its tile count restarts so that each borrower
        reports only its own reads. It stays open when the block ends."""
        options = options or PyramidOptions()
        # URLs and /vsi… paths are keys as written: Path() would fold "http://" into "http:/".
        key = (path if is_location(path) else Path(path).resolve(), options)
        dip = self.opened.get(key)
        if dip is None:
            dip = self.opened[key] = DynamicImagePyramid.open(path, options)
            self.opens += 1
        dip.tiles_read = 0
        if dip.transfers is not None:
            dip.transfers.restart()
        yield dip

    def close(self) -> None:
        for dip in self.opened.values():
            dip.close()
        self.opened.clear()

    def __enter__(self) -> PyramidPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
