"""The live dashboard of a stream (the ``preview:[HOST:]PORT`` sink): a page for a browser on a headless board, and
endpoints for programs.

- ``/``: the page: the live video, the decided label and score with the smoothing state, the frame's own top
  prediction, frames per second, dropped frames and the latency of each stage, updated live (plain JavaScript,
  nothing fetched from elsewhere).
- ``/stream.mjpg``: the video, annotated where OpenCV is installed, at most ``max_fps`` frames a second.
- ``/snapshot.jpg``: the newest frame, encoded when asked.
- ``/api/latest``: the newest result as JSON (the `--json` schema); ``/api/stats``: the stream's statistics.
- ``/events``: server-sent events: a ``result`` event per result (the same JSON) and a ``stats`` event a second;
  ``/events?max_rate=N`` sends only the newest result, at most N times a second (the page asks for 15: what it can
  show, and a browser on a small machine would otherwise spend its CPU parsing hundreds of events a second).

It never costs the stream much: `write` only keeps a reference to the newest result; frames are encoded in the
dashboard's own thread, only while someone watches the video (or on a snapshot request), at its own modest rate;
the connections at once are bounded (``max_clients``; more get 503). It listens on 127.0.0.1 unless a host is
given; on any other address it needs a ``token`` (``--preview-token`` or EDGECLS_PREVIEW_TOKEN): open
``/?token=TOKEN`` once, and the page's own requests carry it in a cookie; programs send ``Authorization: Bearer
TOKEN``.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import numpy as np

from .errors import ConfigError, SinkError
from .stream import StreamResult

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGECLS_PREVIEW_TOKEN"
COOKIE = "edgecls_token"
PAGE = Path(__file__).with_name("dashboard.html")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The dashboard sink (see the module docstring). ``stats``: a callable giving the stream's `StreamStats` (the
    CLI passes `Stream.stats`); without it, /api/stats counts the results it was given. ``max_fps``: the video's rate;
    ``max_clients``: connections at once (video, events and requests together)."""

    def __init__(self, port: int = 8080, *, host: str = "127.0.0.1", token: str | None = None, quality: int = 80,
                 max_fps: float = 10.0, max_clients: int = 16, stats: Callable[[], Any] | None = None) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(f"the preview on {host} is open to the network: give it a token with --preview-token "
                              f"or {TOKEN_ENV} (or bind it to 127.0.0.1 and use an SSH tunnel)")
        if token is not None and (len(token) < 8 or any(c.isspace() or not c.isprintable() for c in token)):
            raise ConfigError("a preview token needs at least 8 printable characters and no spaces")
        self.token, self.quality, self.min_interval = token, quality, 1.0 / max_fps
        self.max_clients, self._stats = max_clients, stats
        self.clients = self.video_viewers = self.event_viewers = 0
        self.refused = 0
        self._cond = threading.Condition()
        self._closed = False
        self._latest: StreamResult | None = None
        self._version = 0  # results written
        self._recent: deque[tuple[int, StreamResult]] = deque(maxlen=256)  # for the event streams
        self._jpeg: tuple[int, bytes] | None = None  # (version it shows, bytes)
        self._count = 0
        self._started = time.monotonic()
        try:
            self._server = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise SinkError(f"cannot serve the preview on {host}:{port} ({exc.strerror}); pick another port") from None
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._threads = [threading.Thread(target=self._server.serve_forever, name="edgecls-dashboard", daemon=True),
                         threading.Thread(target=self._encode_loop, name="edgecls-dashboard-jpeg", daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def viewers(self) -> int:
        return self.video_viewers

    def announce(self) -> str:
        """The line the CLI prints at start (the token itself is never printed)."""
        where = self.url
        if self.token:
            return f"preview: {where} (on the network, token required: open {where}?token=YOUR_TOKEN once)"
        return f"preview: {where}"

    # -- the stream's side: cheap --------------------------------------------------------------------------------

    def write(self, result: StreamResult) -> None:
        with self._cond:
            self._version += 1
            self._count += 1
            self._latest = result
            self._recent.append((self._version, result))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(2.0)

    # -- the dashboard's own threads ----------------------------------------------------------------------------

    def _encode_loop(self) -> None:
        """Encode the newest frame while someone watches the video, at most max_fps a second."""
        last = 0.0
        while True:
            with self._cond:
                while not self._closed and not (self.video_viewers and self._latest is not None
                                                and (self._jpeg is None or self._jpeg[0] != self._version)):
                    self._cond.wait(0.5)
                if self._closed:
                    return
            wait = last + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            last = time.monotonic()
            self.snapshot()

    def snapshot(self) -> bytes | None:
        """The newest frame as JPEG (encoded now unless it already is); None before the first frame."""
        with self._cond:
            version, result, cached = self._version, self._latest, self._jpeg
        if cached is not None and cached[0] == version:
            return cached[1]
        if result is None or result.frame is None:
            return cached[1] if cached else None
        data = encode_jpeg(result, self.quality)
        with self._cond:
            if self._jpeg is None or self._jpeg[0] < version:
                self._jpeg = (version, data)
            self._cond.notify_all()
        return data

    def next_jpeg(self, seen: int, timeout: float = 1.0) -> tuple[int, bytes | None]:
        """A JPEG newer than version ``seen`` (waits up to ``timeout``), with its version."""
        with self._cond:
            if (self._jpeg is None or self._jpeg[0] == seen) and not self._closed:
                self._cond.wait(timeout)
            return (self._jpeg[0], self._jpeg[1]) if self._jpeg else (seen, None)

    def version(self) -> int:
        with self._cond:
            return self._version

    def latest(self) -> dict[str, Any] | None:
        with self._cond:
            result = self._latest
        return None if result is None else result.to_dict()

    def results_since(self, seen: int, timeout: float = 1.0) -> tuple[int, list[StreamResult]]:
        """The results after version ``seen`` still held (waits up to ``timeout`` for one), and the newest version."""
        with self._cond:
            if self._version == seen and not self._closed:
                self._cond.wait(timeout)
            return self._version, [r for v, r in self._recent if v > seen]

    def stats(self) -> dict[str, Any]:
        if self._stats is not None:
            data = self._stats().to_dict()
        else:
            elapsed = time.monotonic() - self._started
            data = {"frames_processed": self._count, "elapsed_s": round(elapsed, 3),
                    "fps": round(self._count / elapsed, 2) if elapsed > 0 else 0.0}
        data["dashboard"] = {"clients": self.clients, "video_viewers": self.video_viewers,
                             "event_viewers": self.event_viewers, "refused": self.refused,
                             "max_clients": self.max_clients}
        return data

    # -- connections --------------------------------------------------------------------------------------------

    def admit(self) -> bool:
        with self._cond:
            if self.clients >= self.max_clients:
                self.refused += 1
                return False
            self.clients += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self.clients -= 1

    def watching(self, kind: str, delta: int) -> None:
        with self._cond:
            setattr(self, kind, getattr(self, kind) + delta)
            self._cond.notify_all()

    def authorised(self, headers: Any, query: dict[str, list[str]]) -> bool:
        if not self.token:
            return True
        given = [*query.get("token", [])]
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given.append(auth[7:])
        for part in headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                given.append(value)
        return any(hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    @property
    def closed(self) -> bool:
        return self._closed


def encode_jpeg(result: StreamResult, quality: int) -> bytes:
    """The result's frame as JPEG: annotated with OpenCV where it is installed, else the plain frame (Pillow)."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        from .drawing import annotate

        ok, data = cv2.imencode(".jpg", annotate(result), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            return data.tobytes()
    from PIL import Image

    from .collect import to_rgb

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(to_rgb(result.frame, result.color))).save(buffer, "JPEG", quality=quality)  # type: ignore[arg-type]
    return buffer.getvalue()


def _rate(query: dict[str, list[str]]) -> float | None:
    """``/events?max_rate=N``: at most N result events a second (N > 0), else every result."""
    try:
        rate = float(query.get("max_rate", [""])[0])
    except ValueError:
        return None
    return rate if 0 < rate < 1000 else None


def _handler(board: Dashboard) -> type:
    page = PAGE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
            log.debug("dashboard: " + format, *args)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if not board.admit():
                self._send(503, "text/plain", b"too many viewers; try again later")
                return
            try:
                self._route()
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass
            finally:
                board.leave()

        def _route(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if not board.authorised(self.headers, query):
                self._send(401, "text/plain", b"token required: open /?token=TOKEN")
                return
            extra = {}
            if board.token and query.get("token"):  # the page's own requests then carry it in a cookie
                extra["Set-Cookie"] = f"{COOKIE}={board.token}; HttpOnly; SameSite=Strict; Path=/"
            path = url.path
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", page, extra)
            elif path == "/api/latest":
                latest = board.latest()
                self._json(latest) if latest is not None else self._send(503, "application/json", b'{"error": "no result yet"}')
            elif path == "/api/stats":
                self._json(board.stats())
            elif path == "/snapshot.jpg":
                jpeg = board.snapshot()
                self._send(200, "image/jpeg", jpeg) if jpeg else self._send(503, "text/plain", b"no frame yet")
            elif path == "/stream.mjpg":
                self._video()
            elif path == "/events":
                self._events(_rate(query))
            else:
                self._send(404, "text/plain", b"not found")

        def _send(self, code: int, kind: str, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, data: Any) -> None:
            self._send(200, "application/json", json.dumps(data).encode())

        def _open_stream(self, kind: str) -> None:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Cache-Control", "no-store")
            self.end_headers()

        def _video(self) -> None:
            self._open_stream("multipart/x-mixed-replace; boundary=frame")
            board.watching("video_viewers", +1)
            seen = -1
            try:
                while not board.closed:
                    version, jpeg = board.next_jpeg(seen)
                    if jpeg is None or version == seen:
                        continue
                    seen = version
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
                    self.wfile.write(jpeg + b"\r\n")
            finally:
                board.watching("video_viewers", -1)

        def _events(self, max_rate: float | None) -> None:
            """Every result (or, with ``max_rate``, the newest at most that many times a second: what a page can
            show) and the statistics once a second."""
            self._open_stream("text/event-stream")
            board.watching("event_viewers", +1)
            seen, next_stats, next_result = board.version() - 1, 0.0, 0.0  # from the newest result on
            try:
                self.wfile.write(b"retry: 1000\n\n")
                while not board.closed:
                    if max_rate is not None:
                        time.sleep(max(0.0, next_result - time.monotonic()))
                        next_result = time.monotonic() + 1.0 / max_rate
                    seen, results = board.results_since(seen, timeout=0.5)
                    if max_rate is not None:
                        results = results[-1:]
                    chunks = [b"event: result\ndata: " + json.dumps(r.to_dict()).encode() + b"\n\n" for r in results]
                    if time.monotonic() >= next_stats:
                        next_stats = time.monotonic() + 1.0
                        chunks.append(b"event: stats\ndata: " + json.dumps(board.stats()).encode() + b"\n\n")
                    if chunks:
                        self.wfile.write(b"".join(chunks))
                        self.wfile.flush()
            finally:
                board.watching("event_viewers", -1)

    return Handler
