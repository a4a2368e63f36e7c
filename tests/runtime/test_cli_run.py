"""`edgecls run`: the CLI on a real video, its errors, MQTT end to end, and in a real process SIGINT, SIGTERM and
SIGHUP (a terminal that hangs up), and a stdout whose reader goes away (`| head -1`).

Times here are generous bounds that hold on a machine at load ~15: the speed itself is measured in benchmarks/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from children import PATIENCE_S, Lines, edgecls, end, wait_for_lines
from conftest import needs_opencv
from typer.testing import CliRunner

from edgecls.cli.app import app

# (tests that need OpenCV are marked needs_opencv)
runner = CliRunner()
MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def run(*args):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["run", *[str(a) for a in args]])


def test_run_a_video_as_json_lines_with_smoothing(coral, cat_video, tmp_path):
    out = tmp_path / "results.jsonl"
    result = run(
        coral / MODEL,
        "--source",
        cat_video,
        "--json",
        "--hold",
        "3",
        "--top-k",
        "2",
        "--sink",
        f"jsonl:{out}",
        "--threads",
        "2",
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 24 and lines[0]["predictions"][0]["label"] == "Egyptian cat"
    assert len(lines[0]["predictions"]) == 2
    assert [r["decision"]["label"] for r in lines[12:15]] == ["Egyptian cat"] * 2 + [lines[14]["decision"]["label"]]
    assert lines[14]["decision"]["changed"] and lines[14]["decision"]["label"].startswith("dragonfly")
    assert set(lines[0]["latency_ms"]) == {"capture_to_start", "preprocess", "invoke", "postprocess", "total"}
    assert len(out.read_text().splitlines()) == 24
    assert "source-ended" in result.stderr
    summary = result.stderr.splitlines()[-1]
    assert summary.startswith("done: 24 frames") and "latency p50/p95 ms" in summary


def test_readable_lines_on_change_only(coral, cat_video):
    result = run(coral / MODEL, "--source", cat_video, "--on-change")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "decision: Egyptian cat" in lines[0] and "*changed*" in lines[1]


@needs_opencv
@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "/dev/video42"], "camera /dev/video42 not found"),
        (["--source", "rtsp://127.0.0.1:9/live"], "cannot open stream"),
        (["--source", "nowhere.mp4"], "video file not found"),
        (["--source", "demo", "--sink", "carrier-pigeon:x"], "unknown sink"),
        (["--source", "demo", "--sink", "mqtt://host-only"], "needs a host and a topic"),
    ],
)
def test_bad_sources_and_sinks_are_one_error_line(coral, args, message):
    result = run(coral / MODEL, *args)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_mqtt_sink_end_to_end(coral, cat_video, mosquitto):
    import paho.mqtt.client as mqtt

    got: list[dict] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("robot/vision", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.3)
        result = run(
            coral / MODEL,
            "--source",
            cat_video,
            "-q",
            "--on-change",
            "--mqtt-qos",
            "1",
            "--sink",
            f"mqtt://127.0.0.1:{mosquitto.port}/robot/vision",
        )
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert [m["decision"]["label"][:9] for m in got] == ["Egyptian ", "dragonfly"]
    assert result.stdout == ""
    assert "preview:" not in result.stderr  # only a preview sink announces a URL


# A bound on the time from the signal to the exit that a machine at load ~15 keeps (a stop there took 5-6 s), which
# still catches a stop that hangs. The time itself (under a second, docs/device.md) is measured, broker up and down,
# by benchmarks/mqtt_outage.py.
STOP_BOUND_S = 30.0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda sig: sig.name)
def test_a_signal_stops_the_run_with_sinks_flushed(coral, tmp_path, sig):
    out = tmp_path / "live.jsonl"
    proc = edgecls("run", coral / MODEL, "--source", "demo", "-q", "--sink", f"jsonl:{out}")
    try:
        wait_for_lines(out, 5, proc)
        sent = time.monotonic()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=PATIENCE_S)
        took = time.monotonic() - sent
    finally:
        end(proc)
    assert took < STOP_BOUND_S, f"took {took:.2f} s to stop"
    assert proc.returncode == 0, stderr
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith("done: ") and f"stopped by {sig.name}" in summary
    lines = out.read_text().splitlines()
    assert summary.startswith(f"done: {len(lines)} frames")  # every result made reached the file
    assert all(json.loads(line)["sequence"] >= 0 for line in lines)  # whole lines only


@needs_opencv
def test_a_hang_up_finishes_the_video_and_the_other_sinks(coral, tmp_path):
    """An SSH logout: the run's terminal hangs up, the kernel sends SIGHUP, and writes to the terminal fail (EIO).
    The run stops as on SIGTERM: the video is renamed from its hidden .NAME.partial.avi and holds every result, the
    JSON lines file too, exit code 0. Before, SIGHUP killed the process and the video stayed hidden and unfinished."""
    import cv2
    from children import drain, edgecls_on_a_terminal

    video, lines = tmp_path / "live.avi", tmp_path / "live.jsonl"
    proc, terminal = edgecls_on_a_terminal(
        "run", coral / MODEL, "--source", "demo", "--sink", f"video:{video}", "--sink", f"jsonl:{lines}"
    )
    try:
        reader = drain(terminal)
        wait_for_lines(lines, 5, proc)
        assert (tmp_path / ".live.partial.avi").exists() and not video.exists()
        os.close(terminal)  # the terminal hangs up
        terminal = -1
        _, stderr = proc.communicate(timeout=PATIENCE_S)
        reader.join(10)
    finally:
        if terminal >= 0:
            os.close(terminal)
        end(proc)
    summary = stderr.strip().splitlines()[-1]
    assert proc.returncode == 0 and "Traceback" not in stderr and "sink-error" not in stderr, stderr
    assert summary.endswith(("stopped by SIGHUP", "stopped by a closed stdout")), summary  # whichever came first
    made = len(lines.read_text().splitlines())
    assert summary.startswith(f"done: {made} frames")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.avi", "live.jsonl"]
    capture = cv2.VideoCapture(str(video))
    try:
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == made and capture.read()[0]
    finally:
        capture.release()


@needs_opencv
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda sig: sig.name)
def test_a_second_signal_while_the_sinks_close_changes_nothing(coral, tmp_path, sig):
    """Ctrl-C twice, or an impatient second kill: the first stops the run, the others land while the sinks close
    (an unreachable MQTT broker makes that take a moment). Before, the second one killed the process there (or
    raised KeyboardInterrupt out of the closing), and the video stayed hidden and unfinished."""
    import cv2

    video, lines = tmp_path / "live.avi", tmp_path / "live.jsonl"
    proc = edgecls(
        "run",
        coral / MODEL,
        "--source",
        "demo",
        "-q",
        "--sink",
        f"video:{video}",
        "--sink",
        f"jsonl:{lines}",
        "--sink",
        "mqtt://127.0.0.1:1/unreachable",
    )
    try:
        wait_for_lines(lines, 5, proc)
        for _ in range(12):  # over the closing and past it
            proc.send_signal(sig)
            time.sleep(0.03)
        _, stderr = proc.communicate(timeout=PATIENCE_S)
    finally:
        end(proc)
    assert proc.returncode in (0, 1) and "Traceback" not in stderr and "interrupted" not in stderr, stderr
    assert f"stopped by {sig.name}" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.avi", "live.jsonl"]
    capture = cv2.VideoCapture(str(video))
    try:
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(lines.read_text().splitlines())
    finally:
        capture.release()


@pytest.mark.parametrize("args", [["--json"], []], ids=["json", "lines"])
def test_a_closed_stdout_ends_the_run_cleanly(coral, tmp_path, args):
    """The reader takes one line and goes away, as `| head -1` does. Before, every later write failed as a sink
    error and the run never ended. Now it stops as on SIGTERM: the other sink holds every result made, exit code 0,
    no traceback, and no "Exception ignored ... BrokenPipeError" when Python flushes stdout at exit."""
    from children import read_line

    out = tmp_path / "live.jsonl"
    proc = edgecls("run", coral / MODEL, "--source", "demo", *args, "--sink", f"jsonl:{out}")
    try:
        first = read_line(proc.stdout).decode()
        proc.stdout.close()  # the reader goes away
        _, stderr = proc.communicate(timeout=PATIENCE_S)
    finally:
        end(proc)
    assert json.loads(first)["sequence"] == 0 if args else first.startswith("#0 ")
    assert proc.returncode == 0, stderr
    for bad in ("Traceback", "Exception ignored", "BrokenPipe", "sink-error"):
        assert bad not in stderr, stderr
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith(f"done: {len(out.read_text().splitlines())} frames"), stderr
    assert summary.endswith("stopped by a closed stdout")


@pytest.mark.parametrize("tail", ["--json | head -1", "2>&1 | head -1"], ids=["stdout", "stdout-and-stderr"])
def test_run_piped_into_head_ends_with_exit_code_0(coral, tmp_path, tail):
    """The issue's pipeline in a real shell, `set -o pipefail` so that edgecls's own exit code counts; with stderr
    in the pipe too, the summary has nowhere to go and is dropped without a word."""
    import shlex

    first = tmp_path / "first.txt"
    script = (
        f"set -o pipefail; {shlex.quote(sys.executable)} -m edgecls run {shlex.quote(str(coral / MODEL))} "
        f"--source demo {tail} > {shlex.quote(str(first))}"
    )
    proc = subprocess.Popen(["bash", "-c", script], stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=PATIENCE_S)
    finally:
        if proc.poll() is None:  # the pipeline hung: end edgecls and head with it
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == 0, stderr
    assert first.read_text().count("\n") == 1 and "Traceback" not in stderr and "Exception ignored" not in stderr
    if tail.startswith("--json"):
        assert json.loads(first.read_text())["sequence"] == 0
        assert stderr.strip().splitlines()[-1].endswith("stopped by a closed stdout"), stderr


@pytest.mark.parametrize("closed", [">&-", "2>&-"], ids=["stdout", "stderr"])
def test_a_stream_closed_before_the_start_is_no_error(coral, tmp_path, closed):
    """Started with stdout closed (`>&-`, Python's sys.stdout is None) the results go to the other sinks, as with
    --quiet; with stderr closed the messages have nowhere to go. Before, both were an AttributeError."""
    import shlex

    out = tmp_path / "live.jsonl"
    command = [
        sys.executable,
        "-m",
        "edgecls",
        "run",
        str(coral / MODEL),
        "--source",
        "demo",
        "--max-frames",
        "3",
        "--json",
        "--sink",
        f"jsonl:{out}",
    ]
    proc = subprocess.run(
        ["bash", "-c", f"exec {shlex.join(command)} {closed}"],
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
        check=False,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(out.read_text().splitlines()) == 3
    if closed == ">&-":
        assert proc.stdout == "" and proc.stderr.strip().splitlines()[-1].startswith("done: 3 frames")
    else:
        assert proc.stderr == "" and len(proc.stdout.splitlines()) == 3


def test_live_statistics_on_stderr(coral):
    """A line of statistics every 0.2 s, not one per result. 60 results from a camera-like source of at most 100
    frames a second span at least 0.59 s however fast the machine is (a slow one only takes longer), so there are
    lines to read; at most one per 0.2 s of the run."""
    result = run(coral / MODEL, "--source", "demo:100", "--max-frames", "60", "--stats-every", "0.2", "-q")
    assert result.exit_code == 0, result.output
    stats = [json.loads(line[7:]) for line in result.stderr.splitlines() if line.startswith("stats: ")]
    elapsed = float(result.stderr.splitlines()[-1].split(" frames in ")[1].split(" s")[0])
    assert 1 <= len(stats) <= elapsed / 0.2 + 1, result.stderr
    processed = [s["frames_processed"] for s in stats]
    assert processed == sorted(processed) and 0 < processed[-1] <= 60 and stats[-1]["fps"] > 0
    assert set(stats[-1]["latency_ms"]["total"]) == {"p50", "p95"}


def test_preview_sink_announces_its_local_url(coral, cat_video):
    result = run(coral / MODEL, "--source", cat_video, "-q", "--max-frames", "3", "--sink", "preview:0")
    assert result.exit_code == 0, result.output
    assert "preview: http://127.0.0.1:" in result.stderr


def test_a_stop_with_the_mqtt_broker_down_ends_the_run(coral, tmp_path, mosquitto):
    """The broker goes away mid-run; SIGINT still ends the run, and the summary counts what was not sent."""
    out = tmp_path / "live.jsonl"
    proc = edgecls(
        "run",
        coral / MODEL,
        "--source",
        "demo",
        "-q",
        "--mqtt-qos",
        "1",
        "--sink",
        f"mqtt://127.0.0.1:{mosquitto.port}/t",
        "--sink",
        f"jsonl:{out}",
    )
    try:
        said = Lines(proc.stderr)
        wait_for_lines(out, 5, proc)
        mosquitto.stop()
        said.until(lambda line: line.startswith("sink-disconnected"))
        wait_for_lines(out, wait_for_lines(out, 1) + 5, proc)  # results made with the broker gone
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(PATIENCE_S)
        took = time.monotonic() - sent
        stderr = said.rest()
    finally:
        end(proc)
    assert took < STOP_BOUND_S, f"took {took:.2f} s to stop"
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert "not sent" in stderr


def test_a_full_disk_sink_is_reported_once_and_the_run_goes_on(coral, cat_video, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    good = tmp_path / "good.jsonl"
    result = run(coral / MODEL, "--source", cat_video, "--json", "--sink", "jsonl:/dev/full", "--sink", f"jsonl:{good}")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.stdout.splitlines()) == 24 and len(good.read_text().splitlines()) == 24
    assert result.stderr.count("sink-error:") == 1
    assert "error: sink /dev/full: 24 result(s) not written" in result.stderr
