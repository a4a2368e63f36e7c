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

It answers only requests whose Host header names it (localhost, its loopback and bound addresses, the name it was
bound to and the names in ``hosts``, ``--preview-host``), so a page on another name that DNS rebinding pointed here
reads nothing; cross-origin browser requests, requests without the token and slow or vanished clients hold no slot
(edgecls.sinks.dashboard_http has the HTTP side and its guards).
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from edgecls.errors import ConfigError, SinkError
from edgecls.live.stream import StreamResult
from edgecls.sinks.dashboard_http import Connections, Server, make_handler

TOKEN_ENV = "EDGECLS_PREVIEW_TOKEN"
COOKIE = "edgecls_token"
# What a cookie value and a URL query carry as they are: printable ASCII without space, quotes, ';', ',', '\\' (a
# cookie) and '#', '%', '&', '+' (a URL).
TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('"\\;,#%&+')
TOKEN_LENGTH = (8, 256)
HOST_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> str:
    """The dashboard's token, if a cookie and a URL carry it as it is; else ConfigError (which never repeats it)."""
    low, high = TOKEN_LENGTH
    bad = sorted({c for c in token if c not in TOKEN_CHARS})
    if not low <= len(token) <= high or bad:
        shown = ", ".join(repr(c) if c.isprintable() and c.isascii() else f"U+{ord(c):04X}" for c in bad[:5])
        why = f"it holds {shown}" if bad else f"it has {len(token)} characters"
        raise ConfigError(
            f"the preview token cannot be used: {why}. A token needs {low} to {high} printable ASCII "
            "characters without spaces, quotes or any of ;,\\#%&+ (what a cookie and a URL carry as "
            "they are); make one with `openssl rand -hex 16`"
        )
    return token


def check_host_name(name: str) -> str:
    """A name the dashboard answers to besides its addresses (``--preview-host``): a DNS name or an IP address,
    lowercased; else ConfigError."""
    text = name.strip().lower().removesuffix(".")
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    if not HOST_NAME.fullmatch(text):
        raise ConfigError(
            f"--preview-host {name!r}: give a host name (letters, digits, '-' and '.'), e.g. "
            "--preview-host raspberrypi.local, or an IP address"
        )
    return text


class Dashboard:
    """The dashboard sink (see the module docstring). ``stats``: a callable giving the stream's `StreamStats` (the
    CLI passes `Stream.stats`); without it, /api/stats counts the results it was given. ``max_fps``: the video's rate;
    ``max_clients``: requests served at once (video, events and requests together); ``hosts``: more names it
    answers to; ``request_timeout``: seconds a connection has to send a whole request."""

    cookie = COOKIE

    def __init__(
        self,
        port: int = 8080,
        *,
        host: str = "127.0.0.1",
        token: str | None = None,
        quality: int = 80,
        max_fps: float = 10.0,
        max_clients: int = 16,
        hosts: Iterable[str] = (),
        request_timeout: float = 5.0,
        stats: Callable[[], Any] | None = None,
    ) -> None:
        host = host.strip("[]")
        if not is_loopback(host) and not token:
            raise ConfigError(
                f"the preview on {host} is open to the network: give it a token with --preview-token "
                f"or {TOKEN_ENV} (or bind it to 127.0.0.1 and use an SSH tunnel)"
            )
        self.token = check_token(token) if token is not None else None
        self.quality, self.min_interval = quality, 1.0 / max_fps
        self.max_clients, self._stats = max_clients, stats
        self.clients = self.video_viewers = self.event_viewers = 0
        self.refused = self.denied = 0
        self._cond = threading.Condition()
        self._closed = False
        self._latest: StreamResult | None = None
        self._version = 0  # results written
        self._recent: deque[tuple[int, StreamResult]] = deque(maxlen=256)  # for the event streams
        self._jpeg: tuple[int, bytes] | None = None  # (version it shows, bytes)
        self._count = 0
        self._started = time.monotonic()
        self._names = {"localhost", host.lower(), *(check_host_name(h) for h in hosts)}
        self.connections = Connections(4 * max_clients, 2 * max_clients)
        try:
            self._server = Server((host, port), make_handler(self, self.connections, request_timeout), self.connections)
        except (OSError, OverflowError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise SinkError(f"cannot serve the preview on {host}:{port} ({why}); pick another port") from None
        self.host, self.port = self._server.server_address[:2]
        self._names.add(str(self.host).lower())
        self._every_address = ipaddress.ip_address(self.host).is_unspecified  # 0.0.0.0 or ::
        self._threads = [
            threading.Thread(target=self._server.serve_forever, args=(0.1,), name="edgecls-dashboard", daemon=True),
            threading.Thread(target=self._encode_loop, name="edgecls-dashboard-jpeg", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

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
        self.connections.shut_all()
        for thread in self._threads:
            thread.join(2.0)
        deadline = time.monotonic() + 2.0
        while self.connections.counts()[0] and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- the dashboard's own threads ----------------------------------------------------------------------------

    def _encode_loop(self) -> None:
        """Encode the newest frame while someone watches the video, at most max_fps a second."""
        last = 0.0
        while True:
            with self._cond:
                while not self._closed and not (
                    self.video_viewers
                    and self._latest is not None
                    and (self._jpeg is None or self._jpeg[0] != self._version)
                ):
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
            data = {
                "frames_processed": self._count,
                "elapsed_s": round(elapsed, 3),
                "fps": round(self._count / elapsed, 2) if elapsed > 0 else 0.0,
            }
        connections, waiting = self.connections.counts()
        data["dashboard"] = {
            "clients": self.clients,
            "video_viewers": self.video_viewers,
            "event_viewers": self.event_viewers,
            "refused": self.refused,
            "denied": self.denied,
            "max_clients": self.max_clients,
            "connections": connections,
            "waiting": waiting,
        }
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

    def serves_host(self, name: str | None) -> bool:
        """Whether a request's Host names this dashboard (an IP address other than its own only where it listens
        on every address)."""
        if name is None:
            return False
        if name in self._names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self._every_address

    def deny(self) -> None:
        """Count a request refused before it took a slot (wrong Host, cross-origin, no token, bad max_rate)."""
        with self._cond:
            self.denied += 1

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
        from edgecls.sinks.drawing import annotate

        ok, data = cv2.imencode(".jpg", annotate(result), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            return data.tobytes()
    from PIL import Image

    from edgecls.model.images import to_rgb

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(to_rgb(result.frame, result.color))).save(buffer, "JPEG", quality=quality)  # type: ignore[arg-type]
    return buffer.getvalue()
