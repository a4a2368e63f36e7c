"""A seeded fuzz of the live dashboard (issue 33, "make it last"): a few hundred malformed, slow, aborted, oversized,
cross-origin and wrong-Host requests, several at once, against a real dashboard on 127.0.0.1 while results come in;
then a burst of half-open and aborted connections. Afterwards: no traceback on stderr or in the log, no slot or
connection left held, the threads within their bound and back where they were, and a real viewer gets the page, a
fresh /api/latest, a live event and a video frame. The same cases against `edgecls run --sink preview:PORT` leave
no traceback on its stderr. EDGECLS_FUZZ_SEED=N replays another seed (each failure names its seed and case);
EDGECLS_FUZZ_CASES=N plays more."""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edgecls.live.smoothing import Decision
from edgecls.live.stream import Latency, StreamResult
from edgecls.model.postprocess import Prediction
from edgecls.sinks.dashboard import Dashboard

SEED = int(os.environ.get("EDGECLS_FUZZ_SEED", "33"))
CASES = int(os.environ.get("EDGECLS_FUZZ_CASES", "320"))  # more for a longer run by hand
WORKERS = 8
REQUEST_TIMEOUT = 1.0  # the fuzzed dashboard's; its default is 5 s
SECRET = "fuzz-secret-label"  # the live label: what a refused request must never see
MODEL = "mobilenet_v2_1.0_224_quant.tflite"
CLOSED = None  # an answer without a status line: the server closed (or reset) the connection first


def result(seq: int, label: str = SECRET) -> StreamResult:
    frame = np.full((48, 64, 3), seq % 250, np.uint8)
    return StreamResult(
        seq,
        time.time(),
        time.time(),
        [Prediction(0, label, 0.9), Prediction(1, "other", 0.1)],
        Decision(label, 0, 0.9, False, None),
        Latency(0.1, 0.2, 4.0, 0.1, 4.4),
        frame,
        "rgb",
    )


@dataclass
class Case:
    kind: str
    chunks: list[bytes]
    expect: set[int | None]
    stream: bool = False  # the answer is a stream: read its head, then go
    end: str = "read"  # read; close or reset (go without reading); linger (wait for the server to let go)
    pause: float = 0.0  # between chunks
    secret_allowed: bool = False  # a request the dashboard serves


# -- the cases ------------------------------------------------------------------------------------------------------

PATHS = [
    "/",
    "/index.html",
    "/api/latest",
    "/api/stats",
    "/snapshot.jpg",
    "/events",
    "/events?max_rate=15",
    "/stream.mjpg",
]
BAD_RATES = [
    "1e-9",
    "1e-300",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "-1",
    "0",
    "1e999",
    "0.09",
    "1000.5",
    "abc",
    "%00",
    "",
    "1e-9&max_rate=15",
    "0x10",
    "%F0%9F%98%80",
    "9" * 400,
]
HOSTILE_HOSTS = [
    "attacker.example",
    "attacker.example:{port}",
    "127.0.0.1.nip.io:{port}",
    "localhost.evil",
    "evil",
    "192.168.1.10",
    "[::2]:{port}",
    "10.0.0.1:{port}",
    "xn--80ak6aa92e.example",
    "LOCALHOST.attacker",
]
ORIGINS = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},
    {"Origin": "https://127.0.0.1:{port}"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty"},
    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
]
METHODS = ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "BREW", "get", "G\x00T"]


def request(
    port: int,
    path: str = "/api/latest",
    *,
    method: str = "GET",
    host: str | None = None,
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
    close: bool = True,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} {version}", f"Host: {host if host is not None else f'127.0.0.1:{port}'}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def is_stream(path: str) -> bool:
    return path.partition("?")[0] in ("/events", "/stream.mjpg")


def malformed(rng: random.Random, port: int) -> Case:
    choice = rng.randrange(10)
    if choice == 0:
        return Case(
            "malformed",
            [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\r\n\r\n"],
            {CLOSED, 400, 403, 404, 414, 431, 501, 505},
        )
    if choice == 1:
        line = rng.choice(
            [
                b"\r\n",
                b"GET\r\n\r\n",
                b"GET / HTTP/9.9\r\n\r\n",
                b"GET / HTTP/1.1 x\r\n\r\n",
                b"GET /\r\n\r\n",
                b"GET / HTTP/1.x\r\n\r\n",
                b" / HTTP/1.1\r\n\r\n",
                b"\x00\x00\x00\r\n\r\n",
            ]
        )
        return Case("malformed", [line], {CLOSED, 400, 505})
    if choice == 2:
        method = rng.choice(METHODS)
        return Case(
            "malformed",
            [request(port, rng.choice(PATHS), method=method, body=b"x" * rng.randrange(50))],
            {CLOSED, 400, 501},
        )
    if choice == 3:
        target = rng.choice([f"http://127.0.0.1:{port}/api/latest", "*", "api/latest", "http://attacker/"])
        return Case("malformed", [request(port, target)], {400})
    if choice == 4:
        path = "/" + "".join(
            rng.choice(["..", "%2e", "%00", "ü", "€", "%ff", "//", "[", ";", "api", "latest", "x"])
            for _ in range(rng.randrange(1, 12))
        )
        return Case(
            "malformed",
            [request(port, path)],
            {200, 404, 400} if not is_stream(path) else {200},
            stream=is_stream(path),
            secret_allowed=True,
        )
    if choice == 5:
        junk = rng.choice(
            [
                "NoColonHere",
                "X-Nul: a\x00b",
                "X-Fold: a\r\n folded",
                "X-Utf8: ünï€ 😀",
                ": empty",
                "X-Ctl: \x01\x02\x7f",
                "Content-Length: -5",
                "Content-Length: abc",
                "Transfer-Encoding: chunked",
                "Cookie: edgecls_token=\x80\xff; a=b;;;,",
            ]
        )
        data = request(port, "/api/latest")
        data = data.replace(b"Connection: close", junk.encode("utf-8") + b"\r\nConnection: close")
        return Case("malformed", [data], {200, 400}, secret_allowed=True)
    if choice == 6:
        two = request(port, "/api/latest", host="localhost\r\nHost: evil")
        return Case("malformed", [two], {400})
    if choice == 7:
        return Case("malformed", [request(port, "/api/latest", version="HTTP/1.1", host="")], {400, 403})
    if choice == 8:
        return Case("malformed", [b"GET /api/latest HTTP/1.0\r\n\r\n"], {200}, secret_allowed=True)
    data = request(port, "/api/stats", headers={"Expect": "100-continue", "Content-Length": "10"})
    return Case("malformed", [data], {100, 200}, secret_allowed=True)


def max_rate(rng: random.Random, port: int) -> Case:
    if rng.random() < 0.7:
        value = rng.choice(BAD_RATES)
        expect = {200} if value == "" else {400}  # an empty max_rate is no max_rate
        return Case(
            "max_rate",
            [request(port, f"/events?max_rate={value}")],
            expect,
            stream=value == "",
            secret_allowed=value == "",
        )
    value = rng.choice([f"{rng.uniform(0.1, 1000):.3f}", "15", "0.1", "1000", "1e2", "+15", " 15"])
    return Case(
        "max_rate",
        [request(port, f"/events?max_rate={value.replace(' ', '%20')}")],
        {200},
        stream=True,
        secret_allowed=True,
    )


def wrong_host(rng: random.Random, port: int) -> Case:
    host = rng.choice(HOSTILE_HOSTS).format(port=port)
    path = rng.choice(PATHS)
    method = rng.choice(["GET", "GET", "HEAD"])
    return Case("wrong-host", [request(port, path, method=method, host=host)], {403})


def cross_origin(rng: random.Random, port: int) -> Case:
    headers = {k: v.format(port=port) for k, v in rng.choice(ORIGINS).items()}
    path = rng.choice(PATHS)
    return Case("cross-origin", [request(port, path, headers=headers)], {403})


def slow(rng: random.Random, port: int) -> Case:
    choice = rng.randrange(3)
    if choice == 0:  # half a request, then nothing: the server lets go after its timeout
        data = request(port, rng.choice(PATHS))
        return Case("slow", [data[: rng.randrange(0, len(data) - 4)]], {CLOSED}, end="linger")
    data = request(port, "/api/latest")
    if choice == 1:  # a byte at a time, over longer than the timeout: cut off
        pause = REQUEST_TIMEOUT * 1.6 / len(data)
        return Case("slow", [bytes([b]) for b in data], {CLOSED}, pause=pause)
    cuts = sorted(rng.sample(range(1, len(data)), 2))  # slow but in time: served
    return Case(
        "slow", [data[: cuts[0]], data[cuts[0] : cuts[1]], data[cuts[1] :]], {200}, pause=0.1, secret_allowed=True
    )


def aborted(rng: random.Random, port: int) -> Case:
    path = rng.choice(PATHS)
    end = rng.choice(["close", "reset", "read"])
    data = request(port, path, close=rng.random() < 0.5)
    if end == "read":  # a stream whose head is read, then the client goes (see play)
        path = rng.choice(["/events", "/events?max_rate=0.1", "/stream.mjpg"])
        return Case("aborted", [request(port, path)], {200}, stream=True, secret_allowed=True)
    cut = rng.choice([len(data), rng.randrange(1, len(data))])
    return Case("aborted", [data[:cut]], {CLOSED}, end=end)


def oversized(rng: random.Random, port: int) -> Case:
    choice = rng.randrange(4)
    if choice == 0:
        return Case("oversized", [request(port, "/" + "a" * 70_000)], {414, CLOSED})
    if choice == 1:
        headers = {f"X-{i}": "y" for i in range(rng.choice([101, 150, 400]))}
        return Case("oversized", [request(port, "/api/latest", headers=headers)], {431, CLOSED})
    if choice == 2:
        return Case("oversized", [request(port, "/api/latest", headers={"X-Big": "z" * 70_000})], {431, CLOSED})
    body = b"b" * rng.choice([10_000, 300_000])
    data = request(port, "/api/latest", method="GET", headers={"Content-Length": str(len(body))}, body=body)
    return Case("oversized", [data], {200, CLOSED}, secret_allowed=True)


def valid(rng: random.Random, port: int) -> Case:
    choice = rng.randrange(5)
    if choice == 0:
        own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
        return Case(
            "valid", [request(port, "/events?max_rate=15", headers=own)], {200}, stream=True, secret_allowed=True
        )
    if choice == 1:
        both = request(port, "/api/latest", close=False) + request(port, "/api/stats")
        return Case("valid", [both], {200}, secret_allowed=True)
    method = rng.choice(["GET", "HEAD"])
    path = rng.choice(["/", "/api/latest", "/api/stats", "/snapshot.jpg"])
    host = rng.choice([f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"])
    return Case("valid", [request(port, path, method=method, host=host)], {200}, secret_allowed=True)


GENERATORS = [
    (malformed, 3),
    (max_rate, 2),
    (wrong_host, 2),
    (cross_origin, 2),
    (slow, 1),
    (aborted, 2),
    (oversized, 1),
    (valid, 2),
]


def cases(seed: int, port: int, count: int) -> list[Case]:
    rng = random.Random(seed)
    pool = [gen for gen, weight in GENERATORS for _ in range(weight)]
    return [rng.choice(pool)(rng, port) for _ in range(count)]


# -- playing them -------------------------------------------------------------------------------------------------


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def status(answer: bytes) -> int | None:
    parts = answer.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None


def play(port: int, case: Case, timeout: float = 5.0, secret: str = SECRET) -> tuple[int | None, str | None]:
    """Play one case: the answer's status, and what went wrong if anything did (``secret``: the live label)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    answer, how = b"", "closed"
    try:
        for i, chunk in enumerate(case.chunks):
            if i and case.pause:
                time.sleep(case.pause)
            try:
                sock.sendall(chunk)
            except OSError:  # the server already answered or let go
                break
        if case.end == "close":
            sock.close()
            return CLOSED, None
        if case.end == "reset":
            reset(sock)
            return CLOSED, None
        started = time.monotonic()
        while len(answer) < 4_000_000:
            if case.stream and b"\r\n\r\n" in answer:
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                how = "timeout"
                break
            except OSError:
                how = "reset"
                break
            if not chunk:
                break
            answer += chunk
        if case.end == "linger" and time.monotonic() - started > REQUEST_TIMEOUT + 3.5:
            return CLOSED, f"held for {time.monotonic() - started:.1f} s"
    finally:
        if case.stream and answer and len(case.chunks[0]) % 2:  # half the streams' clients go with a reset
            reset(sock)
        else:
            sock.close()
    code = status(answer)
    return code, judge(case, code, answer, how, timeout, secret.encode())


def judge(case: Case, code: int | None, answer: bytes, how: str, timeout: float, secret: bytes) -> str | None:
    if how == "timeout" and not case.stream:
        return f"no answer and no close within {timeout} s (got {answer[:80]!r})"
    if code not in case.expect:
        return f"status {code} ({how}), expected {sorted(case.expect, key=str)}: {answer[:120]!r}"
    if not case.secret_allowed and secret in answer:
        return f"the live label leaked: {answer[:200]!r}"
    if case.kind == "valid" and case.chunks[0].startswith(b"GET /api/latest ") and secret not in answer:
        return "a real request did not get the live result"
    return None


def burst(port: int) -> None:
    """Many at once: half-open connections, and streams whose clients vanish."""
    socks = []
    try:
        for i in range(120):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                sock.sendall(b"GET /api/latest HTTP/1.1\r\nHost: local")
            socks.append(sock)
        for i in range(24):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(request(port, ["/events", "/stream.mjpg", "/events?max_rate=0.1"][i % 3]))
            reset(sock) if i % 2 else sock.close()
    finally:
        for sock in socks:
            sock.close()


def viewer_is_served(port: int, fresh: int) -> None:
    """A real viewer: the page, a fresh /api/latest, a live event and a video frame."""
    page = play_answer(port, request(port, "/"))
    assert status(page) == 200 and b"EventSource" in page, page[:300]
    latest = play_answer(port, request(port, "/api/latest"))
    assert status(latest) == 200 and f'"sequence": {fresh}'.encode() in latest, latest[:300]
    own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    for path, marker in [("/events?max_rate=15", b"event: result"), ("/stream.mjpg", b"Content-Type: image/jpeg")]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request(port, path, headers=own))
            data = b""
            while marker not in data and len(data) < 1_000_000:
                chunk = sock.recv(65536)
                assert chunk, data[:300]
                data += chunk
            assert status(data) == 200


def play_answer(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


# -- the tests ----------------------------------------------------------------------------------------------------


def test_the_dashboard_takes_a_seeded_fuzz_and_still_serves_a_viewer(capfd, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="edgecls")
    uncaught: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: uncaught.append(repr(args.exc_value)))
    board = Dashboard(0, request_timeout=REQUEST_TIMEOUT)
    base = threading.active_count()  # the dashboard's own threads included
    stop = threading.Event()
    peak = [0]

    def feed() -> None:
        seq = 0
        while not stop.is_set():
            board.write(result(seq))
            peak[0] = max(peak[0], threading.active_count())
            seq += 1
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, name="fuzz-feeder")
    feeder.start()
    tally: dict[str, Counter[int | None]] = {}
    problems: list[str] = []
    try:
        played = cases(SEED, board.port, CASES)
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="fuzz-client") as pool:
            outcomes = list(pool.map(lambda case: play(board.port, case), played))
        for i, (case, (code, problem)) in enumerate(zip(played, outcomes)):
            tally.setdefault(case.kind, Counter())[code] += 1
            if problem:
                problems.append(f"seed {SEED} case {i} ({case.kind}, {case.chunks[0][:60]!r}): {problem}")
        burst(board.port)
        tally["burst of half-open connections and aborted streams"] = Counter({CLOSED: 144})
        deadline = time.monotonic() + REQUEST_TIMEOUT + 5
        while (board.clients or board.connections.counts()[0]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert board.clients == 0 and board.video_viewers == 0 and board.event_viewers == 0, board.stats()
        assert board.connections.counts() == (0, 0), board.stats()
    finally:
        stop.set()
        feeder.join()
    try:
        fuzz_threads = 1 + WORKERS  # the feeder and the pool's clients
        assert peak[0] - base - fuzz_threads <= 4 * board.max_clients, peak[0] - base
        deadline = time.monotonic() + 2  # a connection's thread ends just after its connection is counted out
        while threading.active_count() > base and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() <= base, [t.name for t in threading.enumerate()]
        board.write(result(10_000_000))
        viewer_is_served(board.port, 10_000_000)
    finally:
        board.close()
    err = "\n".join(line for line in capfd.readouterr().err.splitlines() if not line.startswith("DEBUG"))
    with capfd.disabled():  # the counts per kind of case and answer, for the record
        print(f"\ndashboard fuzz, seed {SEED}: {len(problems)} of {CASES + 144} not handled cleanly")
        for kind, codes in sorted(tally.items()):
            shown = ", ".join(f"{'closed' if c is None else c}: {n}" for c, n in sorted(codes.items(), key=str))
            print(f"  {kind}: {sum(codes.values())} ({shown})")
    assert not problems, "\n".join(problems[:15])
    assert "Traceback" not in err and "Error" not in err and "Exception" not in err, err[-3000:]
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, caplog.text[-3000:]
    assert not uncaught, uncaught


def test_the_command_line_dashboard_prints_no_traceback_under_the_fuzz(coral, tmp_path):
    """The same kinds of case, fewer, against `edgecls run --sink preview:PORT` (its own logging, its own stderr),
    whose live label is the cat photo's."""
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(coral / "cat.bmp", frames / "a.bmp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
            "20",
            "-q",
            "--sink",
            f"preview:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if status(play_answer(port, request(port, "/api/latest"))) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and run.poll() is None, "the dashboard did not start"
            time.sleep(0.2)
        played = [c for c in cases(SEED + 1, port, 160) if c.end != "linger" and c.pause == 0][:100]
        with ThreadPoolExecutor(WORKERS) as pool:
            outcomes = list(pool.map(lambda case: play(port, case, secret="Egyptian cat"), played))
        problems = [
            f"seed {SEED + 1} ({case.kind}, {case.chunks[0][:60]!r}): {problem}"
            for case, (_, problem) in zip(played, outcomes)
            if problem
        ]
        burst(port)
        assert status(play_answer(port, request(port, "/"))) == 200
    finally:
        run.terminate()
        try:
            _, err = run.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            _, err = run.communicate()
    assert not problems, problems[:10]
    assert run.returncode == 0 and "Traceback" not in err and "Error" not in err, err[-3000:]
    assert err.strip().splitlines()[0] == f"preview: http://127.0.0.1:{port}/"
