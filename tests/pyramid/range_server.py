"""A loopback HTTP server for the remote-raster tests and ``bench/remote_bench.py``: serves files from one
folder with byte ranges (read from the file by seek, streamed in 1 MiB pieces), keeps its own log of requests
and bytes sent (what the tests assert against), and can misbehave on demand."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
CHUNK = 1 << 20  # bytes read from the file and written to the socket at a time


@dataclass
class ServerLog:
    requests: int = 0
    bytes_sent: int = 0
    paths: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)  # the Range header of each request ("" for none)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str, sent: int, asked: str = "") -> None:
        with self.lock:
            self.requests += 1
            self.bytes_sent += sent
            self.paths.append(path)
            self.ranges.append(asked)

    def unsend(self, nbytes: int) -> None:
        with self.lock:
            self.bytes_sent -= nbytes

    def reset(self) -> None:
        with self.lock:
            self.requests, self.bytes_sent = 0, 0
            self.paths.clear()
            self.ranges.clear()


class RangeServer(ThreadingHTTPServer):
    """``mode``: ``ok`` | ``404`` | ``403`` | ``no-range`` (answers 200 with the whole file to every GET)
    | ``truncated`` (declares the full size but serves only the first half of the file)."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.mode = "ok"
        self.log = ServerLog()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


class _Handler(BaseHTTPRequestHandler):
    server: RangeServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real object stores

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the tests read ServerLog

    def _file(self) -> Path | None:
        name = self.path.split("?", 1)[0].lstrip("/")
        path = (self.server.root / name).resolve()
        if not path.is_relative_to(self.server.root.resolve()) or not path.is_file():
            return None
        return path

    def _write(self, body: bytes) -> None:
        """Log, then send: the client may go on as soon as it has the bytes, so a request logged after
        the write could land in the next test's log."""
        self.server.log.add(self.path, len(body), self.headers.get("Range", ""))
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.server.log.unsend(len(body))

    def _write_file(self, path: Path, start: int, count: int) -> None:
        """``count`` bytes of ``path`` from ``start``, logged first (as ``_write``), read and sent in
        ``CHUNK`` pieces: a range never reads the rest of the file, a whole-file GET never holds it all."""
        self.server.log.add(self.path, count, self.headers.get("Range", ""))
        left = count
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                while left > 0:
                    piece = fh.read(min(CHUNK, left))
                    if not piece:
                        break
                    self.wfile.write(piece)
                    left -= len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if left:
            self.server.log.unsend(left)

    def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._write(b"" if head else body)

    def _serve(self, head: bool) -> None:
        mode = self.server.mode
        if mode in ("404", "403"):
            body = b"denied" if mode == "403" else b"not found"
            self._send(int(mode), body, {"Content-Type": "text/plain"}, head)
            return
        path = self._file()
        if path is None:
            self._send(404, b"not found", {"Content-Type": "text/plain"}, head)
            return
        size = path.stat().st_size
        served = size // 2 if mode == "truncated" else size  # the bytes this server really has
        rng = _RANGE.match(self.headers.get("Range", "").strip())
        if rng is None or mode == "no-range" or head:
            # HEAD and plain GETs: the whole file (a truncated server still declares the full size).
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Type", "image/tiff")
            if mode != "no-range":
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.close_connection = not head and served < size
            self._write_file(path, 0, 0 if head else served)
            return
        first, last = rng.group(1), rng.group(2)
        if first == "":  # suffix range: the last N bytes
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._write(b"")
            return
        count = max(0, min(end + 1, served) - start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end + 1 - start))
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        # Fewer bytes than declared (the truncated mode): close, so the client sees a short read.
        self.close_connection = count < end + 1 - start
        self._write_file(path, start, count)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)


@contextlib.contextmanager
def serve(root: Path) -> Iterator[RangeServer]:
    server = RangeServer(root)
    thread = threading.Thread(target=server.serve_forever, name="range-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
