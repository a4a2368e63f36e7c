"""The live dashboard (the preview: sink): its endpoints with a plain HTTP client, its bounds and its token, and
the page in a real headless browser (Debian's chromium) reading a live label off a running `edgecls run`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI
from PIL import Image

from edgecls.errors import ConfigError
from edgecls.live.smoothing import Decision
from edgecls.live.stream import Latency, StreamResult
from edgecls.model.postprocess import Prediction
from edgecls.sinks.dashboard import Dashboard

MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def result(seq: int, value: int = 0, label: str = "cat") -> StreamResult:
    frame = np.full((60, 80, 3), value, np.uint8)
    return StreamResult(
        seq,
        time.time(),
        time.time(),
        [Prediction(0, label, 0.8), Prediction(1, "dog", 0.2)],
        Decision(label, 0, 0.8, seq == 0, None),
        Latency(0.1, 0.2, 4.0, 0.1, 4.4),
        frame,
        "rgb",
    )


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture()
def board():
    sink = Dashboard(0)
    yield sink
    sink.close()


def test_endpoints_serve_the_newest_result_and_statistics(board):
    assert board.host == "127.0.0.1"
    status, _, page = get(board.url)
    assert status == 200 and b'src="stream.mjpg"' in page and b'EventSource("events?max_rate=15")' in page
    assert get(board.url + "api/latest")[0] == 503  # nothing yet
    for seq in range(5):
        board.write(result(seq))
    status, _, body = get(board.url + "api/latest")
    assert status == 200 and json.loads(body) == result(4).to_dict() | {
        "timestamp": json.loads(body)["timestamp"],
        "result_time": json.loads(body)["result_time"],
    }
    stats = json.loads(get(board.url + "api/stats")[2])
    assert stats["frames_processed"] == 5 and stats["dashboard"]["max_clients"] == 16
    assert get(board.url + "nothing")[0] == 404


def test_the_snapshot_is_always_the_newest_frame(board):
    """It used to show frame 0 for as long as nobody streamed the video."""
    board.write(result(0, value=20))
    first = np.asarray(Image.open(__import__("io").BytesIO(get(board.url + "snapshot.jpg")[2])))
    for seq in range(1, 30):
        board.write(result(seq, value=200))
    later = np.asarray(Image.open(__import__("io").BytesIO(get(board.url + "snapshot.jpg")[2])))
    assert first.mean() < 60 and later.mean() > 120


def test_frames_are_encoded_only_while_someone_watches(board):
    for seq in range(50):
        board.write(result(seq))
    time.sleep(0.3)
    assert board._jpeg is None  # nobody watched, nobody asked: nothing encoded
    with urllib.request.urlopen(board.url + "stream.mjpg", timeout=5) as stream:
        assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        assert stream.read(40).startswith(b"--frame\r\nContent-Type: image/jpeg")
        assert board.video_viewers == 1


def test_events_carry_one_result_each_and_statistics(board):
    received: list[dict] = []
    kinds: list[str] = []

    def listen() -> None:
        with urllib.request.urlopen(board.url + "events", timeout=10) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            event = None
            for raw in stream:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                    kinds.append(event)
                elif line.startswith("data: ") and event == "result":
                    received.append(json.loads(line[6:]))
                    if len(received) == 20:
                        return

    board.write(result(0))
    listener = threading.Thread(target=listen)
    listener.start()
    deadline = time.monotonic() + 5
    while board.event_viewers == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    for seq in range(1, 20):
        board.write(result(seq))
        time.sleep(0.005)
    listener.join(10)
    assert [r["sequence"] for r in received] == list(range(20))  # the newest at connection, then each one
    assert "stats" in kinds


def test_a_page_can_ask_for_fewer_events(board):
    board.write(result(0))
    stop = threading.Event()

    def feed() -> None:
        seq = 1
        while not stop.is_set():
            board.write(result(seq))
            seq += 1
            time.sleep(0.002)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        results, started = [], time.monotonic()
        with urllib.request.urlopen(board.url + "events?max_rate=5", timeout=10) as stream:
            for raw in stream:
                if raw.startswith(b"data: ") and b'"sequence"' in raw:
                    results.append(json.loads(raw[6:]))
                if time.monotonic() - started > 1.5:
                    break
    finally:
        stop.set()
        feeder.join()
    assert 5 <= len(results) <= 10  # at most 5 a second over 1.5 s (plus the one at connection)
    sequences = [r["sequence"] for r in results]
    assert sequences == sorted(sequences) and sequences[-1] - sequences[0] > len(results)  # the newest each time


def test_connections_are_bounded():
    sink = Dashboard(0, max_clients=2)
    try:
        sink.write(result(0))
        streams = [urllib.request.urlopen(sink.url + "stream.mjpg", timeout=5) for _ in range(2)]
        deadline = time.monotonic() + 5
        while sink.clients < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, _, body = get(sink.url + "api/stats")
        assert status == 503 and b"too many viewers" in body and sink.refused == 1
        for stream in streams:
            stream.close()
        deadline = time.monotonic() + 5
        while sink.clients > 0 and time.monotonic() < deadline:
            sink.write(result(1))  # a write wakes the video threads, which then see the closed connection
            time.sleep(0.05)
        assert get(sink.url + "api/stats")[0] == 200
    finally:
        sink.close()


def test_beyond_localhost_it_asks_for_a_token():
    with pytest.raises(ConfigError, match="give it a token with --preview-token or EDGECLS_PREVIEW_TOKEN"):
        Dashboard(0, host="0.0.0.0")
    with pytest.raises(ConfigError, match="it has 5 characters. A token needs 8 to 256 printable ASCII"):
        Dashboard(0, host="0.0.0.0", token="short")
    sink = Dashboard(0, host="0.0.0.0", token="s3cret-token")
    try:
        local = f"http://127.0.0.1:{sink.port}/"
        assert "token required" in sink.announce() and "s3cret" not in sink.announce()
        assert get(local)[0] == 401 and get(local + "api/stats")[0] == 401
        assert get(local + "?token=wrong-token")[0] == 401
        status, headers, _ = get(local + "?token=s3cret-token")
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert get(local + "api/stats", {"Cookie": cookie})[0] == 200  # what the page's own requests carry
        assert get(local + "api/stats", {"Authorization": "Bearer s3cret-token"})[0] == 200
    finally:
        sink.close()


def test_the_dashboard_works_without_opencv(coral, tmp_path):
    """The base install has no OpenCV: the video is the plain frame, encoded by Pillow."""
    code = (
        "import sys; sys.modules['cv2'] = None\n"
        "import io, time, urllib.request\n"
        "from PIL import Image\n"
        "from edgecls import Classifier\n"
        "from edgecls.live.stream import Stream\n"
        "from edgecls.sinks.dashboard import Dashboard\n"
        "board = Dashboard(0)\n"
        f"with Stream({str(coral / MODEL)!r}, source={str(coral / 'cat.bmp')!r}, keep_frames=True) as s:\n"
        "    for r in s: board.write(r)\n"
        "jpeg = urllib.request.urlopen(board.url + 'snapshot.jpg', timeout=5).read()\n"
        "print(Image.open(io.BytesIO(jpeg)).size)\n"
        "board.close()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("(")


# -- hostile clients (issue 33): slots, Host names, origins, half-open connections, tokens, HEAD ----------------


def raw(port: int, data: bytes, *, timeout: float = 5.0, until_close: bool = True) -> bytes:
    """Send ``data`` as it is and read the answer: up to the server's close, or only its head; what came within
    ``timeout`` seconds in any case."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while (until_close or b"\r\n\r\n" not in answer) and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            answer += chunk
        return answer


def status(answer: bytes) -> int | None:
    parts = answer.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def ask(port: int, path: str = "/", headers: dict[str, str] | None = None, method: str = "GET") -> bytes:
    """A whole request (the connection closed after the answer): the answer's bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    streams = path.startswith(("/events", "/stream.mjpg"))
    return raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode(), until_close=not streams or method == "HEAD")


class Held(socket.socket):
    answer = b""  # the head of the answer


def hold(port: int, path: str, headers: dict[str, str] | None = None) -> Held:
    """A stream request whose connection stays open (its answer's head read)."""
    sock = Held(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    while b"\r\n\r\n" not in sock.answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        sock.answer += chunk
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that crashed or lost its network does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_for(condition, seconds: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``condition()`` held (fails after ``seconds``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.01)
    return time.monotonic() - started


def no_traceback(capfd) -> None:  # type: ignore[no-untyped-def]
    """Nothing on stderr but debug lines (a handler the command line's tests left may show those)."""
    err = capfd.readouterr().err
    shown = [line for line in err.splitlines() if not line.startswith("DEBUG")]
    assert not [line for line in shown if "Traceback" in line or "Error" in line or "Exception" in line], err[-3000:]


@pytest.mark.parametrize(
    "value",
    ["1e-9", "1e-300", "nan", "inf", "-inf", "-1", "0", "1e999", "0.01", "1001", "abc", "%00", "1e-9&max_rate=15"],
)
def test_events_max_rate_is_bounded(board, capfd, value):
    """/events?max_rate=1e-9 slept 1/max_rate before it noticed its client left; 1e-300: OverflowError."""
    board.write(result(0))
    answer = raw(board.port, f"GET /events?max_rate={value} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(), timeout=3)
    assert status(answer) == 400 and b"max_rate must be a number" in answer and b"event:" not in answer
    assert board.clients == 0 and board.event_viewers == 0
    no_traceback(capfd)


@pytest.mark.parametrize("value", ["0.1", "15", "1000"])
def test_events_max_rate_within_bounds_is_served(board, value):
    board.write(result(0))
    answer = ask(board.port, f"/events?max_rate={value}")
    assert status(answer) == 200 and b"text/event-stream" in answer


def test_a_client_that_goes_away_frees_its_slot_promptly(board, capfd):
    """16 streams whose clients vanish (closed or reset) while nothing happens free their slots in well under a
    second: nothing is written to them that would fail (no result comes, max_rate=0.1, an unchanged video)."""
    board.write(result(0))
    paths = ["/events", "/events?max_rate=0.1", "/stream.mjpg", "/events?max_rate=15"]
    streams = [hold(board.port, paths[i % len(paths)]) for i in range(16)]
    try:
        assert all(status(s.answer) == 200 for s in streams)
        wait_for(lambda: board.clients == 16)
        assert status(ask(board.port, "/api/stats")) == 503  # every slot taken
        time.sleep(1.2)  # the streams idle past a stats event and a video wait
        for i, sock in enumerate(streams):
            reset(sock) if i % 2 else sock.close()
        assert wait_for(lambda: board.clients == 0, 5.0) < 2.0  # it used to be never (the video) or 10 s
    finally:
        for sock in streams:
            sock.close()
    assert status(ask(board.port, "/")) == 200 and status(ask(board.port, "/api/latest")) == 200
    assert board.video_viewers == 0 and board.event_viewers == 0
    no_traceback(capfd)


CROSS_ORIGIN = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty"},
    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
]


def test_cross_origin_and_unauthenticated_requests_hold_no_slot(board, capfd):
    """A cross-origin page (no-cors fetch, an <img>, a frame) gets 403 and takes no slot, so 16 of them held open
    lock nobody out; the page's own requests (same-origin) and a link to the page are served."""
    board.write(result(0, label="secret-label"))
    for headers in CROSS_ORIGIN:
        for path in ("/events", "/events?max_rate=15", "/stream.mjpg", "/api/latest", "/snapshot.jpg", "/"):
            answer = ask(board.port, path, headers)
            assert status(answer) == 403 and b"secret-label" not in answer and b"JFIF" not in answer, (headers, path)
    held = [hold(board.port, "/events?max_rate=0.1", CROSS_ORIGIN[i % len(CROSS_ORIGIN)]) for i in range(16)]
    try:
        assert board.clients == 0 and board.event_viewers == 0
        own = {"Origin": f"http://127.0.0.1:{board.port}", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
        answer = ask(board.port, "/events?max_rate=15", own)
        assert status(answer) == 200 and b"text/event-stream" in answer
        typed = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
        for headers in (typed, link):
            answer = ask(board.port, "/", headers)
            assert status(answer) == 200 and b"X-Frame-Options: DENY" in answer
        assert status(ask(board.port, "/api/latest", link)) == 403  # a link opens the page, not the data
    finally:
        for sock in held:
            sock.close()
    no_traceback(capfd)


def test_unauthenticated_requests_hold_no_slot(capfd):
    sink = Dashboard(0, token="s3cret-token", max_clients=2)
    held = []
    try:
        sink.write(result(0))
        held = [hold(sink.port, "/events") for _ in range(16)]
        assert all(status(s.answer) == 401 for s in held) and sink.clients == 0
        answer = ask(sink.port, "/events?max_rate=15", {"Authorization": "Bearer s3cret-token"})
        assert status(answer) == 200
        assert status(ask(sink.port, "/?token=%E2%82%AC-not-latin-1")) == 401  # used to crash the handler
        assert status(ask(sink.port, "/?token=%FF%FE")) == 401
    finally:
        for sock in held:
            sock.close()
        sink.close()
    no_traceback(capfd)


FOREIGN_HOSTS = [
    "attacker.example",
    "attacker.example:{port}",
    "127.0.0.1.attacker.example",
    "localhost.evil",
    "LOCALHOST.evil:{port}",
    "evil",
    "192.168.1.10:{port}",
    "[::2]:{port}",
    "10.0.0.1",
]
OWN_HOSTS = [
    "localhost",
    "localhost:{port}",
    "LocalHost:{port}",
    "localhost.:{port}",
    "127.0.0.1",
    "127.0.0.1:{port}",
    "127.3.2.1:{port}",
    "[::1]",
    "[::1]:{port}",
]


def test_only_the_host_names_it_was_bound_for_are_served(board, capfd):
    """The loopback bind answered Host: attacker.example with the live label and the snapshot: a page that DNS
    rebinding pointed at 127.0.0.1 could read the camera."""
    board.write(result(0, label="secret-label"))
    for host in FOREIGN_HOSTS:
        host = host.format(port=board.port)
        for method, path in [
            ("GET", "/"),
            ("GET", "/api/latest"),
            ("GET", "/snapshot.jpg"),
            ("GET", "/api/stats"),
            ("GET", "/events"),
            ("GET", "/stream.mjpg"),
            ("HEAD", "/api/latest"),
        ]:
            answer = raw(board.port, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert status(answer) == 403 and b"secret-label" not in answer and b"JFIF" not in answer, (host, path)
    for host in OWN_HOSTS:
        answer = raw(
            board.port,
            f"GET /api/latest HTTP/1.1\r\nHost: {host.format(port=board.port)}\r\nConnection: close\r\n\r\n".encode(),
        )
        assert status(answer) == 200 and b"secret-label" in answer, host
    for head in [
        "Host: a b",
        "Host: [::1",
        "Host: localhost:abc",
        "Host: ",
        "Host: localhost\r\nHost: evil",
        "X-No-Host: 1",
    ]:
        answer = raw(board.port, f"GET /api/latest HTTP/1.1\r\n{head}\r\n\r\n".encode())
        assert status(answer) in (400, 403) and b"secret-label" not in answer, head
    assert status(raw(board.port, b"GET /api/latest HTTP/1.0\r\n\r\n")) == 200  # HTTP/1.0 has no Host
    assert status(raw(board.port, b"GET http://attacker.example/api/latest HTTP/1.1\r\nHost: localhost\r\n\r\n")) == 400
    no_traceback(capfd)


def test_names_the_user_lists_are_served_too():
    sink = Dashboard(0, hosts=["Camera.LAN", "pi.local."])
    try:
        for host, code in [("camera.lan", 200), ("pi.local:8080", 200), ("other.lan", 403)]:
            assert (
                status(raw(sink.port, f"GET /api/stats HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()))
                == code
            ), host
    finally:
        sink.close()
    for bad in ["bad name", "a/b", "-x.lan", "", "x" * 64 + ".lan", "ünïcode.lan", "a..b"]:
        with pytest.raises(ConfigError, match="--preview-host"):
            Dashboard(0, hosts=[bad])
    sink = Dashboard(0, host="0.0.0.0", token="s3cret-token")  # on every address: any of this machine's addresses
    try:
        bearer = "Authorization: Bearer s3cret-token\r\nConnection: close\r\n"
        for host, code in [("192.168.1.20:8080", 200), ("[fe80::1]", 200), ("raspberrypi.attacker.example", 403)]:
            answer = raw(sink.port, f"GET /api/stats HTTP/1.1\r\nHost: {host}\r\n{bearer}\r\n".encode())
            assert status(answer) == code, host
    finally:
        sink.close()


def test_half_open_connections_time_out_and_are_counted(capfd):
    """200 connections that send nothing or half a request held 208 threads and never timed out; they also kept
    the page from a real viewer. Now: a bounded number of threads, a viewer served meanwhile, all gone after the
    timeout, even one that trickles a byte at a time."""
    sink = Dashboard(0, request_timeout=1.0)
    base = threading.active_count()
    socks: list[socket.socket] = []
    try:
        sink.write(result(0))
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", sink.port), timeout=5)
            if i % 3 == 1:
                sock.sendall(b"GET /api/latest HTTP/1.1\r\nHo")
            elif i % 3 == 2:
                sock.sendall(b"GET /events?max_rate=15 HT")
            socks.append(sock)
        peak = threading.active_count() - base
        assert peak <= 4 * sink.max_clients, peak
        assert get(sink.url + "api/latest", timeout=3)[0] == 200 and get(sink.url, timeout=3)[0] == 200
        assert threading.active_count() - base <= 4 * sink.max_clients
        trickle = socket.create_connection(("127.0.0.1", sink.port), timeout=5)
        socks.append(trickle)
        started = time.monotonic()
        for byte in b"GET /api/latest HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"x" * 100:
            try:
                trickle.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
        assert time.monotonic() - started < 4.0  # cut off about a second in, not after 8 s of bytes
        wait_for(lambda: sink.connections.counts()[0] == 0 and threading.active_count() <= base, 5.0)
        for sock in socks:  # each was answered (a 503 for the ones past the bound) or closed, none hangs
            sock.settimeout(2)
            try:
                answer = sock.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert answer == b"" or status(answer) in (408, 503), answer
    finally:
        for sock in socks:
            sock.close()
        sink.close()
    no_traceback(capfd)


def test_no_traceback_for_clients_that_go_away(capfd, caplog):
    """BrokenPipeError on the 503 path and ConnectionResetError printed hundreds of tracebacks."""
    caplog.set_level(logging.DEBUG, logger="edgecls")
    sink = Dashboard(0, max_clients=2, request_timeout=1.0)
    base = threading.active_count()
    streams: list[Held] = []
    try:
        sink.write(result(0))
        streams = [hold(sink.port, "/stream.mjpg"), hold(sink.port, "/events")]
        wait_for(lambda: sink.clients == 2)
        for i in range(300):  # the slots are full: each of these gets a 503 it does not wait for
            sock = socket.create_connection(("127.0.0.1", sink.port), timeout=5)
            kind = i % 4
            if kind == 0:
                sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: localhost\r\n\r\n")
            elif kind == 1:
                sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: loc")
            elif kind == 2:
                sock.sendall(b"GET /snapshot.jpg HTTP/1.1\r\nHost: localhost\r\n\r\n" * 3)
            reset(sock) if i % 2 else sock.close()
        for sock in streams:  # and the streams' own clients vanish with a reset while results come
            reset(sock)
        for seq in range(1, 20):
            sink.write(result(seq))
            time.sleep(0.01)
        wait_for(lambda: threading.active_count() <= base, 5.0)  # every connection's thread is done
    finally:
        for sock in streams:
            sock.close()
        sink.close()
    no_traceback(capfd)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], caplog.text[-3000:]


@pytest.mark.parametrize(
    "token",
    [
        "tökenlatin1",
        "токен-не-латиница",
        "abc;defgh",
        "abc,defgh",
        "abc defgh",
        "abc\tdefgh",
        "abc\x00defgh",
        "abc\x7fdefgh",
        'abc"defgh',
        "abc\\defgh",
        "abc#defgh",
        "abc%defgh",
        "abc&defgh",
        "abc+defgh",
        "short",
        "x" * 257,
    ],
)
def test_a_token_a_cookie_or_url_cannot_carry_is_refused_at_start(token):
    """A non-Latin-1 token crashed the handler at /?token=; one with ';' made a cookie the page could not use."""
    with pytest.raises(ConfigError, match="A token needs 8 to 256 printable ASCII characters") as caught:
        Dashboard(0, host="0.0.0.0", token=token)
    assert token not in str(caught.value) or len(token) < 2  # the secret is never repeated


def test_the_command_line_refuses_a_bad_token_or_name_in_one_line(coral):
    from typer.testing import CliRunner

    from edgecls.cli.app import app

    runner = CliRunner()
    for extra, message in [
        (["--preview-token", "bad;token-x"], "error: the preview token cannot be used: it holds"),
        (["--preview-host", "bad name"], "error: --preview-host 'bad name'"),
    ]:
        done = runner.invoke(
            app,
            ["run", str(coral / MODEL), "--source", "demo", "--max-frames", "2", "-q", "--sink", "preview:0", *extra],
        )
        assert done.exit_code == 1, done.output
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith(message) and "Traceback" not in done.output, done.stderr
        assert sum(line.startswith("error:") for line in lines) == 1, done.stderr
        assert "bad;token-x" not in done.stderr


def test_head_answers_like_get(board):
    """HEAD was 501."""
    import http.client

    board.write(result(0))
    streams = ("/events", "/stream.mjpg")

    def one(method: str, path: str) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", board.port, timeout=5)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, dict(response.headers), b"" if path in streams else response.read()
        finally:
            conn.close()

    for path in (
        "/",
        "/index.html",
        "/api/latest",
        "/api/stats",
        "/snapshot.jpg",
        "/nothing",
        "/events",
        "/stream.mjpg",
    ):
        got, head = one("GET", path), one("HEAD", path)
        assert head[0] == got[0] and head[1]["Content-Type"] == got[1]["Content-Type"] and head[2] == b"", path
        if path not in ("/api/stats", *streams):
            assert head[1]["Content-Length"] == got[1]["Content-Length"] == str(len(got[2])), path
    assert one("HEAD", "/")[0] == 200 and one("POST", "/")[0] == 501


# -- a real browser ---------------------------------------------------------------------------------------------


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        message = "Debian's chromium is not installed (apt install chromium)"
        if IN_CI:
            pytest.fail(message + "; .ci/run installs it, so CI=true requires it")
        pytest.skip(message)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def headless(exe: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgecls-chromium-{os.getpid()}-{time.monotonic_ns()}"
    try:
        return subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_the_page_shows_the_live_label_in_a_real_browser(coral, tmp_path):
    exe = chromium()
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(coral / "cat.bmp", frames / "a.bmp")
    port = free_port()
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecls",
            "run",
            str(coral / MODEL),
            "--source",
            str(frames),
            "--loop",
            "--fps",
            "10",
            "-q",
            "--sink",
            f"preview:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if get(url + "api/latest", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        # the DOM after the page's script has run on live events
        dom = headless(exe, "--timeout=4000", "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        label = dom.stdout.split('id="label"', 1)[1].split(">", 1)[1].split("<", 1)[0]
        assert label == "Egyptian cat", dom.stdout[-3000:]
        assert 'id="fps">-<' not in dom.stdout and 'id="state" class="muted">live<' in dom.stdout
        shot = tmp_path / "dashboard.png"
        done = headless(exe, "--timeout=4000", "--window-size=1100,700", f"--screenshot={shot}", url)
        assert shot.is_file(), done.stderr[-2000:]
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
        assert pixels.shape[:2] == (700, 1100) and pixels.std() > 20  # not a blank page
        # the video frame is in the picture: the cat photo's colours, not the page's dark background only
        assert len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 200
        stats = json.loads(get(url + "api/stats")[2])
        assert stats["fps"] > 0 and set(stats["latency_ms"]) >= {"invoke", "preprocess"}
    finally:
        run.terminate()
        _, err = run.communicate(timeout=30)
    assert run.returncode == 0, err[-2000:]
    assert f"preview: http://127.0.0.1:{port}/" in err


HOSTILE_PAGE = """<!doctype html><html><body><p id="out">starting</p>
<img src="http://127.0.0.1:{port}/stream.mjpg"><img src="http://127.0.0.1:{port}/snapshot.jpg">
<iframe src="http://127.0.0.1:{port}/"></iframe>
<img src="/slow">
<script>
"use strict";
const target = "http://127.0.0.1:{port}/";
let fired = 0, read = "none";
async function attack() {{
  for (let i = 0; i < 20; i++) {{
    const stop = new AbortController();
    for (const path of ["events?max_rate=0.1", "stream.mjpg"]) {{
      fired++;
      fetch(target + path, {{mode: "no-cors", signal: stop.signal}}).catch(() => {{}});
    }}
    await new Promise((done) => setTimeout(done, 40));
    stop.abort();
  }}
  try {{ read = String((await (await fetch(target + "api/latest")).text()).length); }} catch (e) {{ read = "refused"; }}
  document.getElementById("out").textContent = "fired " + fired + ", read " + read;
}}
attack();
</script></body></html>"""


@pytest.mark.slow
def test_a_hostile_page_in_a_real_browser_holds_no_slot_and_a_rebound_name_reads_nothing(capfd):
    """What the issue did in Chromium: a page on another origin (http://localhost:OTHER) fires no-cors fetches of
    /events and /stream.mjpg and aborts them, shows the video in an <img> and the page in a frame: it gets 403s and
    never holds a slot. A name that resolves to the dashboard (DNS rebinding, here Chromium's resolver rules) gets
    the 403 page, not the label."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    exe = chromium()
    board = Dashboard(0)
    board.write(result(0, label="secret-label"))
    page = HOSTILE_PAGE.format(port=board.port).encode()

    class Hostile(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/slow":  # keeps the page loading while its script runs
                time.sleep(2.5)
            self.send_response(200 if self.path == "/" else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page) if self.path == "/" else 0))
            self.end_headers()
            if self.path == "/":
                self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    hostile = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server = threading.Thread(target=hostile.serve_forever, daemon=True)
    server.start()
    most, watching = [0], threading.Event()

    def watch() -> None:
        while not watching.is_set():
            most[0] = max(most[0], board.clients)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        dom = headless(exe, "--timeout=8000", "--dump-dom", f"http://localhost:{hostile.server_address[1]}/")
        assert "fired 40, read refused" in dom.stdout, dom.stdout[-2000:] + dom.stderr[-2000:]
        assert board.denied >= 20 and most[0] == 0, (board.denied, most[0])
        rebound = headless(
            exe,
            "--timeout=4000",
            "--host-resolver-rules=MAP attacker.example 127.0.0.1",
            "--dump-dom",
            f"http://attacker.example:{board.port}/",
        )
        assert "unknown host name" in rebound.stdout and "secret-label" not in rebound.stdout, rebound.stdout[-2000:]
        assert board.clients == 0 and get(board.url)[0] == 200 and get(board.url + "api/latest")[0] == 200
    finally:
        watching.set()
        watcher.join()
        hostile.shutdown()
        hostile.server_close()
        board.close()
    no_traceback(capfd)
