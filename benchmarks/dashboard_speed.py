"""Does the live dashboard cost the stream its speed? (issue: on the device, a live dashboard)

Coral's mobilenet_v2_1.0_224_quant streams a 640x480 video written here (benchmarks/stream_speed.py's), looped,
as fast as the model goes (no --fps: the hard case; a camera at 30 fps leaves far more room), with --threads 1.
Three conditions, interleaved, each --runs times for --seconds after a warm-up:

  bare      the stream alone
  sink      the stream with the dashboard sink, nobody watching
  viewer    the stream with a viewer that takes what the page takes (the video and /events?max_rate=15) in another
            process and throws it away: the dashboard's own cost, as when the browser runs on another computer
  browser   the stream with the dashboard open in headless chromium, on the same machine: the dashboard's cost plus
            the browser's own (decoding the video, running the page), which on a device is another computer's

Prints the median results per second of each, and each against bare (the issue's bar: at least 0.9x).

Run: python benchmarks/dashboard_speed.py [--seconds 10] [--runs 3] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_speed import MODEL, write_video

# what a page takes, read in another process and thrown away
VIEWER = """
import sys, threading, urllib.request
def drain(url):
    with urllib.request.urlopen(url) as r:
        while r.read(65536):
            pass
threading.Thread(target=drain, args=(sys.argv[1] + "events?max_rate=15",), daemon=True).start()
drain(sys.argv[1] + "stream.mjpg")
"""


def rate(video: Path, seconds: float, threads: int, condition: str, chromium: str | None) -> float:
    from edgecls.live.stream import Stream
    from edgecls.sinks.dashboard import Dashboard

    browser = None
    from edgecls.live.sources import SourceConfig
    from edgecls.model.classifier import ClassifierConfig

    with Stream(
        str(MODEL),
        SourceConfig(str(video), loop=True),
        classifier=ClassifierConfig(num_threads=threads),
        keep_frames=condition != "bare",
    ) as stream:
        board = Dashboard(0, stats=stream.stats) if condition != "bare" else None
        warm_until = time.monotonic() + 3.0
        count, started, watched = 0, None, False
        profile = tempfile.mkdtemp(prefix="edgecls-bench-chromium-")
        try:
            for result in stream:
                if board is not None:
                    board.write(result)
                now = time.monotonic()
                if started is None:
                    if condition == "browser" and browser is None:
                        browser = subprocess.Popen(
                            [
                                chromium,
                                "--headless",
                                "--no-sandbox",
                                "--disable-gpu",
                                "--no-first-run",
                                f"--user-data-dir={profile}",
                                "--remote-debugging-port=0",
                                board.url,
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    elif condition == "viewer" and browser is None:
                        browser = subprocess.Popen(
                            [sys.executable, "-c", VIEWER, board.url],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    watching = condition not in ("browser", "viewer") or board.video_viewers > 0
                    if now >= warm_until and watching:
                        started, count = now, 0
                        watched = condition in ("browser", "viewer")
                    continue
                count += 1
                if now - started >= seconds:
                    break
        finally:
            if browser is not None:
                browser.terminate()
                browser.wait(10)
            shutil.rmtree(profile, ignore_errors=True)
            if board is not None:
                board.close()
    if condition in ("browser", "viewer") and not watched:
        raise SystemExit(f"the {condition} never opened the video")
    return count / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt install chromium)")
    rates: dict[str, list[float]] = {"bare": [], "sink": [], "viewer": [], "browser": []}
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / "video.avi", 300, "MJPG")
        for run in range(args.runs):
            for condition, measured in rates.items():
                measured.append(rate(video, args.seconds, args.threads, condition, chromium))
                print(f"run {run + 1} {condition}: {measured[-1]:.1f} results/s", flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    summary = {
        "model": MODEL.name,
        "threads": args.threads,
        "seconds": args.seconds,
        "runs": rates,
        "median_per_s": medians,
        **{f"{k}_vs_bare": medians[k] / medians["bare"] for k in ("sink", "viewer", "browser")},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
