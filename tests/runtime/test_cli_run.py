"""`edgecls run`: the CLI on a real video, its errors, MQTT end to end, and SIGINT/SIGTERM in a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import needs_opencv
from typer.testing import CliRunner

from edgecls.cli import app

# (tests that need OpenCV are marked needs_opencv)
runner = CliRunner()
MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def run(*args):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["run", *[str(a) for a in args]])


def test_run_a_video_as_json_lines_with_smoothing(coral, cat_video, tmp_path):
    out = tmp_path / "results.jsonl"
    result = run(coral / MODEL, "--source", cat_video, "--json", "--hold", "3", "--top-k", "2",
                 "--sink", f"jsonl:{out}", "--threads", "2")
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
        result = run(coral / MODEL, "--source", cat_video, "-q", "--on-change", "--mqtt-qos", "1",
                     "--sink", f"mqtt://127.0.0.1:{mosquitto.port}/robot/vision")
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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_within_a_second_with_sinks_flushed(coral, tmp_path, sig):
    out = tmp_path / "live.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecls", "run", str(coral / MODEL), "--source", "demo", "-q",
         "--sink", f"jsonl:{out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while (not out.exists() or len(out.read_text().splitlines()) < 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=10)
    took = time.monotonic() - sent
    assert took < 1.0, f"took {took:.2f} s to stop"
    assert proc.returncode == 0, stderr
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith("done: ") and f"stopped by {sig.name}" in summary
    lines = out.read_text().splitlines()
    assert summary.startswith(f"done: {len(lines)} frames")  # every result made reached the file
    assert all(json.loads(line)["sequence"] >= 0 for line in lines)  # whole lines only


def test_live_statistics_on_stderr(coral):
    result = run(coral / MODEL, "--source", "demo:100", "--duration", "1.2", "--stats-every", "0.5", "-q")
    assert result.exit_code == 0, result.output
    stats = [json.loads(line[7:]) for line in result.stderr.splitlines() if line.startswith("stats: ")]
    assert len(stats) >= 1 and stats[-1]["fps"] > 0 and stats[-1]["frames_processed"] > 10
    assert set(stats[-1]["latency_ms"]["total"]) == {"p50", "p95"}


def test_preview_sink_announces_its_local_url(coral, cat_video):
    result = run(coral / MODEL, "--source", cat_video, "-q", "--max-frames", "3", "--sink", "preview:0")
    assert result.exit_code == 0, result.output
    assert "preview: http://127.0.0.1:" in result.stderr


def test_a_stop_with_the_mqtt_broker_down_takes_under_a_second(coral, tmp_path, mosquitto):
    """The broker goes away mid-run; SIGINT still ends the run within a second, and the summary counts what was
    not sent."""
    out = tmp_path / "live.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecls", "run", str(coral / MODEL), "--source", "demo", "-q", "--mqtt-qos", "1",
         "--sink", f"mqtt://127.0.0.1:{mosquitto.port}/t", "--sink", f"jsonl:{out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while (not out.exists() or len(out.read_text().splitlines()) < 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    mosquitto.stop()
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    took = time.monotonic() - sent
    assert took < 1.0, f"took {took:.2f} s to stop"
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert "sink-disconnected" in stderr and "not sent" in stderr


def test_a_full_disk_sink_is_reported_once_and_the_run_goes_on(coral, cat_video, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    good = tmp_path / "good.jsonl"
    result = run(coral / MODEL, "--source", cat_video, "--json", "--sink", "jsonl:/dev/full", "--sink", f"jsonl:{good}")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.stdout.splitlines()) == 24 and len(good.read_text().splitlines()) == 24
    assert result.stderr.count("sink-error:") == 1
    assert "error: sink /dev/full: 24 result(s) not written" in result.stderr
