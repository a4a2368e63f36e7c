"""The live dashboard (the preview: sink): its endpoints with a plain HTTP client, its bounds and its token, and
the page in a real headless browser (Debian's chromium) reading a live label off a running `edgecls run`."""

from __future__ import annotations

import json
import os
import shutil
import socket
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

from edgecls.dashboard import Dashboard
from edgecls.errors import ConfigError
from edgecls.postprocess import Prediction
from edgecls.smoothing import Decision
from edgecls.stream import Latency, StreamResult

MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def result(seq: int, value: int = 0, label: str = "cat") -> StreamResult:
    frame = np.full((60, 80, 3), value, np.uint8)
    return StreamResult(seq, time.time(), time.time(), [Prediction(0, label, 0.8), Prediction(1, "dog", 0.2)],
                        Decision(label, 0, 0.8, seq == 0, None), Latency(0.1, 0.2, 4.0, 0.1, 4.4), frame, "rgb")


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
    status, headers, page = get(board.url)
    assert status == 200 and b'src="stream.mjpg"' in page and b'EventSource("events?max_rate=15")' in page
    assert get(board.url + "api/latest")[0] == 503  # nothing yet
    for seq in range(5):
        board.write(result(seq))
    status, _, body = get(board.url + "api/latest")
    assert status == 200 and json.loads(body) == result(4).to_dict() | {"timestamp": json.loads(body)["timestamp"],
                                                                        "result_time": json.loads(body)["result_time"]}
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
    with pytest.raises(ConfigError, match="at least 8 printable characters"):
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
    code = ("import sys; sys.modules['cv2'] = None\n"
            "import io, time, urllib.request\n"
            "from PIL import Image\n"
            "from edgecls import Classifier\n"
            "from edgecls.stream import Stream\n"
            "from edgecls.dashboard import Dashboard\n"
            "board = Dashboard(0)\n"
            f"with Stream({str(coral / MODEL)!r}, source={str(coral / 'cat.bmp')!r}, keep_frames=True) as s:\n"
            "    for r in s: board.write(r)\n"
            "jpeg = urllib.request.urlopen(board.url + 'snapshot.jpg', timeout=5).read()\n"
            "print(Image.open(io.BytesIO(jpeg)).size)\n"
            "board.close()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("(")


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
        return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--no-first-run", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_the_page_shows_the_live_label_in_a_real_browser(coral, tmp_path):
    exe = chromium()
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(coral / "cat.bmp", frames / "a.bmp")
    port = free_port()
    run = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(coral / MODEL), "--source", str(frames),
                            "--loop", "--fps", "10", "-q", "--sink", f"preview:{port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        out, err = run.communicate(timeout=30)
    assert run.returncode == 0, err[-2000:]
    assert f"preview: http://127.0.0.1:{port}/" in err
