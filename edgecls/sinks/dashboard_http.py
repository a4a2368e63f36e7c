"""The live dashboard's HTTP side (edgecls.sinks.dashboard is the dashboard itself): a threading server whose connections
are bounded and timed, and the request handler with its guards.

A request passes these, in order, before it is served:

- its connection: at most ``4 * max_clients`` open at once (more are closed at once with a 503, without a thread);
  a request head must arrive whole within ``request_timeout`` seconds of the connection (or of the previous
  response), however slowly it trickles in; of the connections still sending one, at most ``2 * max_clients`` are
  kept, and a new one drops the oldest (a real browser sends its request at once);
- a Host header that names the dashboard (see `Dashboard`): any other gets 403, so a page whose name DNS rebinding
  pointed at this machine reads nothing;
- no cross-origin browser request: an Origin that is not the dashboard's own, or ``Sec-Fetch-Site`` cross-site or
  same-site (other than a link to the page itself) gets 403; the page is never shown in a frame;
- the token where one is needed: 401; a valid ``/events?max_rate=N`` (0.1 to 1000): 400;
- only then does it take one of ``max_clients`` slots (503 when none is free).

A stream looks every ``TICK`` seconds whether its client went away (even while no result comes) and frees its slot;
a write that cannot go out for ``WRITE_TIMEOUT`` seconds ends it. A client that goes away is logged at debug level,
never as a traceback.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from email.message import Message

    from edgecls.sinks.dashboard import Dashboard

log = logging.getLogger("edgecls.sinks.dashboard")

PAGE = Path(__file__).with_name("dashboard.html")
PAGE_PATHS = ("/", "/index.html")
TICK = 0.2  # how often a stream looks for a client that went away
WRITE_TIMEOUT = 10.0  # a viewer whose network takes longer to take a write is let go
MAX_RATE = (0.1, 1000.0)  # /events?max_rate=N: result events a second
GONE_ERRNOS = {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ESHUTDOWN, errno.EBADF}


def went_away(exc: BaseException | None) -> bool:
    """Whether an exception only says that the client went away (or was let go)."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or (isinstance(exc, OSError) and exc.errno in GONE_ERRNOS)


def client_gone(sock: socket.socket) -> bool:
    """Whether the client closed or reset its side (it sends nothing while it watches a stream)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return False
        elif not select.select([sock], [], [], 0)[0]:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Connections:
    """The open connections: at most ``limit``; of them, those waiting for a request head at most ``waiting_limit``
    (a new one drops the oldest)."""

    def __init__(self, limit: int, waiting_limit: int) -> None:
        self.limit, self.waiting_limit = limit, waiting_limit
        self.refused = self.dropped = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._waiting: dict[socket.socket, None] = {}  # oldest first

    def open(self, sock: socket.socket) -> bool:
        drop = None
        with self._lock:
            if len(self._open) >= self.limit:
                self.refused += 1
                return False
            if len(self._waiting) >= self.waiting_limit:
                drop = next(iter(self._waiting))
                del self._waiting[drop]
                self.dropped += 1
            self._open.add(sock)
            self._waiting[sock] = None
        if drop is not None:
            _shut(drop)  # its thread sees the end of its request and ends
        return True

    def waiting(self, sock: socket.socket, waiting: bool) -> None:
        with self._lock:
            self._waiting.pop(sock, None)
            if waiting and sock in self._open:
                self._waiting[sock] = None

    def close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
            self._waiting.pop(sock, None)

    def shut_all(self) -> None:
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            _shut(sock)

    def counts(self) -> tuple[int, int]:
        """(open connections, of them waiting for a request head)"""
        with self._lock:
            return len(self._open), len(self._waiting)


class Server(ThreadingHTTPServer):
    """A thread per connection, within the bounds of `Connections`; errors of clients that went away stay quiet."""

    daemon_threads = True
    block_on_close = False  # Dashboard.close shuts the connections and waits for them
    request_queue_size = 128  # connections not yet accepted (5 dropped a burst, whose clients then waited 1 s)

    def __init__(self, address: tuple[str, int], handler: type, connections: Connections) -> None:
        self.connections = connections
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.open(request):
            try:
                request.setblocking(False)
                request.send(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
                    b"Connection: close\r\n\r\ntoo many connections\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread could be started
            self.connections.close(request)
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.close(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if went_away(exc):
            log.debug("dashboard: %s went away (%s)", client_address[0], exc)
        else:
            log.error("dashboard: a request from %s failed", client_address[0], exc_info=exc)


class _HeadReader(io.RawIOBase):
    """The connection's reading side, with a deadline for the whole request head: a client that sends nothing, or a
    byte at a time, is let go when it passes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no whole request in time")
            self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Refuse(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_max_rate(query: dict[str, list[str]]) -> float | None:
    """``/events?max_rate=N``: at most N result events a second; None (every result) when not given."""
    values = query.get("max_rate")
    if not values:
        return None
    try:
        rate = float(values[0])
    except ValueError:
        rate = math.nan
    if not MAX_RATE[0] <= rate <= MAX_RATE[1]:
        raise _Refuse(
            400,
            f"max_rate must be a number of events a second from {MAX_RATE[0]:g} to {MAX_RATE[1]:g}, "
            "e.g. /events?max_rate=15",
        )
    return rate


def host_name(value: str) -> str | None:
    """The name in a Host header, lowercased, without its port (and an IPv6 address without brackets); None when
    the header is not a host[:port]."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
    else:
        name, colon, port = value.partition(":")
        if colon and not port.isdigit():
            return None
    return name.removesuffix(".") or None


def check_request(
    board: Dashboard, path: str, query: dict[str, list[str]], headers: Message, version: str
) -> float | None:
    """Why a request is refused (raises _Refuse), in the order the module's docstring gives: its target, its Host,
    its origin, its token, its max_rate; else its max_rate (None for every path but /events, and when not given)."""
    if not path.startswith("/"):
        raise _Refuse(400, "bad request target")
    hosts = headers.get_all("Host") or []
    if len(hosts) > 1 or (not hosts and version != "HTTP/1.0"):
        raise _Refuse(400, "one Host header is needed")
    if hosts and not board.serves_host(host_name(hosts[0])):
        raise _Refuse(
            403,
            "unknown host name: open the dashboard by its address or localhost, or give the name with --preview-host",
        )
    if cross_origin(headers, path, hosts[0] if hosts else ""):
        raise _Refuse(403, "cross-origin request refused")
    if not board.authorised(headers, query):
        raise _Refuse(401, "token required: open /?token=TOKEN")
    return parse_max_rate(query) if path == "/events" else None


def cross_origin(headers: Message, path: str, host: str) -> bool:
    """Whether a browser sent this request from another site: an Origin other than ``host``'s own, or
    ``Sec-Fetch-Site`` cross-site or same-site (except a link that opens the page itself)."""
    origin = headers.get("Origin")
    if origin is not None and _origin_key(origin) != _origin_key("http://" + host):
        return True
    site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
    if site not in ("cross-site", "same-site"):
        return False
    # a link from elsewhere may open the page itself (the page's own requests are then same-origin)
    return not (
        path in PAGE_PATHS
        and (headers.get("Sec-Fetch-Mode") or "").lower() == "navigate"
        and (headers.get("Sec-Fetch-Dest") or "document").lower() == "document"
    )


def _origin_key(origin: str) -> str:
    """An origin, comparable: lowercased, without the default port."""
    origin = origin.strip().lower()
    return origin[:-3] if origin.startswith("http://") and origin.endswith(":80") else origin


class DashboardHandler(BaseHTTPRequestHandler):
    """One connection: its request heads read against a deadline, each request checked (`check_request`), given
    a viewer slot, and answered with the page, a JSON endpoint, a snapshot or a stream. `make_handler` binds it to a
    dashboard."""

    protocol_version = "HTTP/1.1"
    board: Dashboard
    connections: Connections
    timeout: float  # seconds a request head may take to arrive whole (StreamRequestHandler also sets it on the socket)
    page: bytes

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard: " + format, *args)

    # -- the connection: a request head in time, then writes that may take WRITE_TIMEOUT ---------------------------

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self._reader = _HeadReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self.connections.waiting(self.connection, True)
        self._reader.deadline = time.monotonic() + self.timeout
        try:
            super().handle_one_request()
        except OSError as exc:
            if not went_away(exc):
                raise
            log.debug("dashboard: %s went away (%s)", self.client_address[0], exc)
            self.close_connection = True

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.connections.waiting(self.connection, False)
        self._reader.deadline = None
        self.connection.settimeout(WRITE_TIMEOUT)
        return ok

    # -- a request: checked, given a slot, routed ------------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        self._body = body
        path, _, query_text = self.path.partition("?")
        try:
            query = parse_qs(query_text.partition("#")[0])
            rate = check_request(self.board, path, query, self.headers, self.request_version)
        except _Refuse as refusal:
            self.board.deny()
            self._close_with(refusal.code, str(refusal))
            return
        if not self.board.admit():
            self._close_with(503, "too many viewers; try again later")
            return
        try:
            self._route(path, query, rate)
        finally:
            self.board.leave()

    def _route(self, path: str, query: dict[str, list[str]], rate: float | None) -> None:
        if path in PAGE_PATHS:
            self._page(query)
        elif path == "/api/latest":
            self._latest()
        elif path == "/api/stats":
            self._json(self.board.stats())
        elif path == "/snapshot.jpg":
            self._snapshot()
        elif path == "/stream.mjpg":
            self._video()
        elif path == "/events":
            self._events(rate)
        else:
            self._send(404, "text/plain", b"not found\n")

    # -- the answers -----------------------------------------------------------------------------------------------

    def _page(self, query: dict[str, list[str]]) -> None:
        """The page, never in a frame; opened with ?token=, it sets the cookie that the page's own requests carry."""
        extra = {}
        if self.board.token and query.get("token"):
            extra["Set-Cookie"] = f"{self.board.cookie}={self.board.token}; HttpOnly; SameSite=Strict; Path=/"
        extra |= {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}
        self._send(200, "text/html; charset=utf-8", self.page, extra)

    def _latest(self) -> None:
        latest = self.board.latest()
        if latest is None:
            self._send(503, "application/json", b'{"error": "no result yet"}')
        else:
            self._json(latest)

    def _snapshot(self) -> None:
        jpeg = self.board.snapshot()
        self._send(200, "image/jpeg", jpeg) if jpeg else self._send(503, "text/plain", b"no frame yet\n")

    def _close_with(self, code: int, message: str) -> None:
        """A refusal: ``message`` as plain text, and the connection closed after it."""
        self.close_connection = True
        self._send(code, "text/plain", message.encode() + b"\n", {"Connection": "close"})

    def _send(self, code: int, kind: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self._body:
            self.wfile.write(body)

    def _json(self, data: Any) -> None:
        self._send(200, "application/json", json.dumps(data).encode())

    # -- the streams: until the client goes away or the board closes -----------------------------------------------

    def _open_stream(self, kind: str) -> bool:
        """The stream's headers; whether its body follows (not for HEAD)."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Connection", "close")
        self.end_headers()
        return self._body

    def _video(self) -> None:
        if not self._open_stream("multipart/x-mixed-replace; boundary=frame"):
            return
        board = self.board
        board.watching("video_viewers", +1)
        seen = -1
        try:
            while not board.closed and not client_gone(self.connection):
                version, jpeg = board.next_jpeg(seen, timeout=TICK)
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
        if not self._open_stream("text/event-stream"):
            return
        board = self.board
        board.watching("event_viewers", +1)
        seen, next_stats, next_result = board.version() - 1, 0.0, 0.0  # from the newest result on
        try:
            self.wfile.write(b"retry: 1000\n\n")
            while not board.closed and not client_gone(self.connection):
                results = []
                wait = next_result - time.monotonic()
                if wait > 0:
                    time.sleep(min(wait, TICK))
                else:
                    seen, results = board.results_since(seen, timeout=TICK)
                    if max_rate is not None and results:
                        results = results[-1:]
                        next_result = time.monotonic() + 1.0 / max_rate
                chunks = [b"event: result\ndata: " + json.dumps(r.to_dict()).encode() + b"\n\n" for r in results]
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + 1.0
                    chunks.append(b"event: stats\ndata: " + json.dumps(board.stats()).encode() + b"\n\n")
                if chunks:
                    self.wfile.write(b"".join(chunks))
        finally:
            board.watching("event_viewers", -1)


def make_handler(board: Dashboard, connections: Connections, request_timeout: float) -> type[DashboardHandler]:
    """The request handler class for ``board``'s server: `DashboardHandler` bound to the board, its connections,
    the request-head deadline and the page."""
    bound = {"board": board, "connections": connections, "timeout": request_timeout, "page": PAGE.read_bytes()}
    return type("Handler", (DashboardHandler,), bound)
