"""Caches: a byte-bounded in-memory LRU for decoded blocks, and content keys for the on-disk cache."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

V = TypeVar("V")

_SAMPLE_BYTES = 64 * 1024
_SAMPLES = 64


def nbytes_of(value: object) -> int:
    """Bytes held by a cached value (numpy arrays and tuples of them)."""
    if isinstance(value, np.ndarray) or hasattr(value, "nbytes"):
        return int(value.nbytes)  # type: ignore[attr-defined]
    if isinstance(value, tuple):
        return sum(nbytes_of(v) for v in value)
    return 0 if value is None else 64


class ByteLRUCache(Generic[V]):
    """Thread-safe LRU cache bounded by the bytes of its values (not by a count).

    ``on_evict`` is called with each value the bound pushes out (or a ``put`` replaces), outside the lock."""

    def __init__(self, max_bytes: int, on_evict: Callable[[V], None] | None = None) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def current_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        size = nbytes_of(value)
        evicted: list[V] = []
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
                evicted.append(old[0])
            if size <= self.max_bytes:  # never let one oversized value evict everything and still not fit
                self._items[key] = (value, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (gone, gone_size) = self._items.popitem(last=False)
                    self._bytes -= gone_size
                    evicted.append(gone)
        if self._on_evict is not None:
            for gone in evicted:
                self._on_evict(gone)

    def evict_oldest(
        self, match: Callable[[V], bool], evictable: Callable[[V], bool], scan: int = 64
    ) -> bool:
        """Evict, oldest first among the ``scan`` least recently used, every ``evictable`` value up to and
        including the first that ``match``es (what LRU order would evict first anyway); False if none does."""
        gone: list[V] = []
        found = False
        with self._lock:
            keys = []
            for i, (key, (value, _)) in enumerate(self._items.items()):
                if i >= scan:
                    break
                if evictable(value):
                    keys.append(key)
                    if match(value):
                        found = True
                        break
            if found:
                for key in keys:
                    value, size = self._items.pop(key)
                    self._bytes -= size
                    gone.append(value)
        if self._on_evict is not None:
            for value in gone:
                self._on_evict(value)
        return found

    def get_or_load(self, key: Hashable, load: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = load()
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def content_key(path: str | Path) -> str:
    """A key that follows the file's content, not its name or mtime.

    Hashes the size plus 64 evenly spaced 64 KiB samples (first and last included): about 4 MiB read for
    any file, so keying a 2 GB image costs milliseconds while a renamed or copied file still hits.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with open(p, "rb") as f:
        if size <= _SAMPLE_BYTES * _SAMPLES:
            h.update(f.read())
        else:
            step = (size - _SAMPLE_BYTES) // (_SAMPLES - 1)
            for i in range(_SAMPLES):
                h.update(os.pread(f.fileno(), _SAMPLE_BYTES, i * step))
    return h.hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("LRS_VQA_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lrs-vqa" / "pyramids"
