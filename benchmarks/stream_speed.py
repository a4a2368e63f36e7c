"""Live classification speed and memory (issue: live classification).

On mobilenet_v2_1.0_224_quant from ../shared/data/coral and a 640x480 video file written here, at the same thread
count for all:
  * the bare interpreter's invoke rate (invoke() in a loop on a filled tensor, no Python around it);
  * steady-state throughput of the stream `edgecls run` drives (decode, preprocess, invoke, rank, smooth), from
    result 50 on, and `edgecls run -q` as a process from start to exit;
  * latency from capture to result (median) against one median invoke + 5 ms;
  * over --leak-frames frames (the video looped): RSS growth after warm-up, and threads and file descriptors before
    and after the stream.

Run: python benchmarks/stream_speed.py [--threads 2] [--frames 2000] [--codec mp4v] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORAL = ROOT.parent / "shared" / "data" / "coral"
MODEL = CORAL / "mobilenet_v2_1.0_224_quant.tflite"


def write_video(path: Path, frames: int, codec: str) -> Path:
    """640x480 frames that change every frame (three photos panning), so the decoder does real work."""
    import cv2

    photos = [cv2.resize(cv2.imread(str(CORAL / name)), (640, 480)) for name in ("cat.bmp", "dragonfly.bmp", "owl.jpg")]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 30, (640, 480))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write {codec} video")
    for i in range(frames):
        writer.write(np.roll(photos[(i // 100) % 3], (i * 7) % 640, axis=1))
    writer.release()
    return path


def bare_invoke_ms(threads: int, count: int, runs: int) -> float:
    """Median over runs of the mean time per invoke() in a tight loop."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(MODEL), num_threads=threads)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]
    interp.set_tensor(index, np.full(interp.get_input_details()[0]["shape"], 100, np.uint8))
    for _ in range(30):
        interp.invoke()
    per_run = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(count):
            interp.invoke()
        per_run.append((time.perf_counter() - start) / count * 1e3)
    return statistics.median(per_run)


def stream_run(video: Path, threads: int, frames: int | None = None, loop: bool = False) -> dict[str, float]:
    from edgecls import ClassifierConfig, SourceConfig, Stream

    stamps, totals, invokes = [], [], []
    # edgecls run's defaults: top 3, no smoothing, no frames kept (no drawing sink)
    with Stream(
        MODEL,
        SourceConfig(str(video), loop=loop),
        classifier=ClassifierConfig(num_threads=threads, top_k=3),
        keep_frames=False,
        max_frames=frames,
    ) as stream:
        for result in stream:
            stamps.append(time.perf_counter())
            totals.append(result.latency.total_ms)
            invokes.append(result.latency.invoke_ms)
        stats = stream.stats()
    steady = stamps[50:]
    return {
        "results": len(stamps),
        "steady_fps": (len(steady) - 1) / (steady[-1] - steady[0]),
        "latency_median_ms": statistics.median(totals[50:]),
        "latency_p95_ms": float(np.percentile(totals[50:], 95)),
        "invoke_median_ms": statistics.median(invokes[50:]),
        "dropped": stats.frames_dropped,
        "parts_ms": stats.latency_ms,
    }


def cli_run(video: Path, threads: int) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "edgecls", "run", str(MODEL), "--source", str(video), "--threads", str(threads), "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    match = re.search(r"done: (\d+) frames in ([\d.]+) s", proc.stderr)
    frames, elapsed = int(match.group(1)), float(match.group(2))
    return {"frames": frames, "stream_fps": frames / elapsed, "process_wall_s": wall, "process_fps": frames / wall}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def leak_check(video: Path, threads: int, frames: int) -> dict[str, float]:
    from edgecls import ClassifierConfig, Smoothing, SourceConfig, Stream

    fds_before, threads_before = len(os.listdir("/proc/self/fd")), threading.active_count()
    samples: list[tuple[int, float]] = []
    with Stream(
        MODEL,
        SourceConfig(str(video), loop=True),
        classifier=ClassifierConfig(num_threads=threads),
        max_frames=frames,
        smoothing=Smoothing(alpha=0.5, hold=3),
    ) as stream:
        for n, _ in enumerate(stream, 1):
            if n % 500 == 0:
                samples.append((n, rss_mb()))
    fds_after, threads_after = len(os.listdir("/proc/self/fd")), threading.active_count()
    warm = next(rss for n, rss in samples if n >= 1000)
    return {
        "frames": frames,
        "rss_after_1000_mb": warm,
        "rss_end_mb": samples[-1][1],
        "rss_growth_mb": samples[-1][1] - warm,
        "rss_max_mb": max(r for _, r in samples),
        "fds_before": fds_before,
        "fds_after": fds_after,
        "threads_before": threads_before,
        "threads_after": threads_after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--codec", default="mp4v", help="fourcc of the test video: mp4v, MJPG (USB cameras), I420")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--leak-frames", type=int, default=10000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        suffix = ".mp4" if args.codec == "mp4v" else ".avi"
        video = write_video(Path(tmp) / f"bench{suffix}", args.frames, args.codec)
        invoke_runs, stream_runs = [], []
        for _ in range(args.runs):  # interleaved, so drift on the machine hits both alike
            invoke_runs.append(bare_invoke_ms(args.threads, 500, 1))
            stream_runs.append(stream_run(video, args.threads))
        invoke_ms = statistics.median(invoke_runs)
        best = sorted(stream_runs, key=lambda r: r["steady_fps"])[len(stream_runs) // 2]
        cli = cli_run(video, args.threads)
        leak = leak_check(video, args.threads, args.leak_frames) if args.leak_frames else None

    bare_fps = 1e3 / invoke_ms
    report = {
        "model": MODEL.name,
        "threads": args.threads,
        "codec": args.codec,
        "bare_invoke_ms": invoke_ms,
        "bare_invoke_fps": bare_fps,
        "stream": best,
        "throughput_ratio": best["steady_fps"] / bare_fps,
        "latency_budget_ms": invoke_ms + 5,
        "cli": cli,
        "leak": leak,
    }
    print(f"bare invoke:           {invoke_ms:.2f} ms = {bare_fps:.1f} /s ({args.threads} threads)")
    print(
        f"stream steady state:   {best['steady_fps']:.1f} /s = {report['throughput_ratio']:.3f}x bare "
        "(runs: " + ", ".join(f"{r['steady_fps']:.1f}" for r in stream_runs) + ")"
    )
    print(
        f"capture->result:       median {best['latency_median_ms']:.2f} ms (budget {invoke_ms + 5:.2f}), "
        f"p95 {best['latency_p95_ms']:.2f}; invoke inside the stream {best['invoke_median_ms']:.2f} ms"
    )
    print("parts p50/p95:         " + ", ".join(f"{k} {v['p50']}/{v['p95']}" for k, v in best["parts_ms"].items()))
    print(
        f"edgecls run -q:        {cli['frames']} frames, {cli['stream_fps']:.1f} /s in the stream, "
        f"{cli['process_wall_s']:.2f} s for the whole process"
    )
    if leak:
        print(
            f"{leak['frames']} frames:          RSS {leak['rss_after_1000_mb']:.1f} -> {leak['rss_end_mb']:.1f} MB "
            f"(growth {leak['rss_growth_mb']:+.2f} MB after warm-up), threads {leak['threads_before']} -> "
            f"{leak['threads_after']}, fds {leak['fds_before']} -> {leak['fds_after']}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
