"""Ask every question about one image while that image's pyramid stays open.

Benchmarks ask several questions per image (LRS-VQA: 7,333 questions over 1,228 images). Grouping them keeps
one :class:`~pyramid.dip.DynamicImagePyramid` open per image, so its header, band plan, stretch, resampled
levels and decoded blocks are built once, not once per question.

``answer(..., pyramids=pool)`` borrows the open pyramid from a :class:`~pyramid.pool.PyramidPool`; the
per-question tile count is reset on each loan so every answer's ``tiles_read`` counts only its own reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from pyramid.pool import PyramidPool

T = TypeVar("T")


def group_by_image(items: Sequence[T], key: Callable[[T], object]) -> list[list[T]]:
    """Items grouped by image in order of each image's first appearance; order kept inside a group."""
    groups: dict[object, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


@contextlib.contextmanager
def shared_pyramid(image: str | Path) -> Iterator[PyramidPool]:
    """A pool for the questions about ``image``: pass it to ``answer(..., pyramids=pool)``; closed at the
    end of the block."""
    del image  # the pool opens what it is asked for; the argument names the group for readers
    with PyramidPool() as pool:
        yield pool
