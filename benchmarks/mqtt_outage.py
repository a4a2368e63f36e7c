"""MQTT through a broker outage (issue: hardening).

`edgecls run` classifies a looped image folder at --fps 200 with two sinks: a JSON-lines file (every result made)
and MQTT QoS 1 to a real Mosquitto on 127.0.0.1. A subscriber with a persistent session records what arrives. The
broker is stopped at --down s and started again --outage s later; the run stops after --duration s (SIGINT).

Reported: results made after the broker came back and how many of them arrived; all results made and arrived; the
sink's own account (the warning line); the reconnect lag (broker listening -> the sink's `sink-reconnected` line);
the time from SIGINT to exit, with the broker up and, in a second run, with the broker down.

Run: python benchmarks/mqtt_outage.py [--duration 14] [--down 3] [--outage 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
CORAL = ROOT.parent / "shared" / "data" / "coral"
MODEL = CORAL / "mobilenet_v1_0.25_128_quant.tflite"


class Recorder:
    """A QoS 1 subscriber with a persistent session: what the broker holds for it while it reconnects still arrives."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.sequences: list[int] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgecls-bench-sub", clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.client.on_message = lambda c, u, m: self.sequences.append(json.loads(m.payload)["sequence"])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_once(work: Path, duration: float, down: float | None, outage: float, stop_with_broker_down: bool) -> dict:
    from conftest import Mosquitto

    (work / "broker").mkdir(parents=True)
    broker = Mosquitto(work / "broker").start()
    topic = "bench/outage"
    recorder = Recorder(broker.port, topic)
    time.sleep(0.5)
    images = work / "images"
    images.mkdir(exist_ok=True)
    for name in ("cat.bmp", "owl.jpg", "hot_dog.jpg", "dragonfly.bmp"):
        (images / name).write_bytes((CORAL / name).read_bytes())
    jsonl = work / f"all-{int(time.time() * 1000)}.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "edgecls",
        "run",
        str(MODEL),
        "--source",
        str(images),
        "--loop",
        "--fps",
        "200",
        "-q",
        "--mqtt-qos",
        "1",
        "--sink",
        f"mqtt://127.0.0.1:{broker.port}/{topic}",
        "--sink",
        f"jsonl:{jsonl}",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: [lines.append((time.time(), ln.rstrip())) for ln in proc.stderr])
    reader.start()
    t0 = time.time()
    back_at = None
    if down is not None:
        time.sleep(down)
        broker.stop()
        time.sleep(outage)
        broker.start()
        back_at = time.time()
    time.sleep(max(0.0, t0 + duration - time.time()))
    if stop_with_broker_down:
        broker.stop()
        time.sleep(0.5)
    sigint_at = time.time()
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    exit_s = time.time() - sigint_at
    reader.join()
    if stop_with_broker_down:
        broker.start()
    time.sleep(2.0)  # the subscriber gets what the broker still holds for it
    recorder.close()
    broker.stop()
    made = [json.loads(line) for line in jsonl.read_text().splitlines()]
    arrived = set(recorder.sequences)
    out = {
        "made": len(made),
        "arrived": len(arrived & {r["sequence"] for r in made}),
        "exit_s": round(exit_s, 2),
        "rc": proc.returncode,
        "stderr": [ln for _, ln in lines],
    }
    if back_at is not None:
        after = [r["sequence"] for r in made if r["result_time"] >= back_at]
        out["made_after_broker_back"] = len(after)
        out["arrived_of_those"] = len(arrived & set(after))
        reconnected = [t for t, ln in lines if ln.startswith("sink-reconnected")]
        out["reconnect_lag_s"] = round(reconnected[0] - back_at, 2) if reconnected else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=14.0)
    parser.add_argument("--down", type=float, default=3.0)
    parser.add_argument("--outage", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not MODEL.exists():
        sys.exit(f"needs {MODEL} (../shared/data)")
    with tempfile.TemporaryDirectory() as tmp:
        outage = run_once(Path(tmp) / "a", args.duration, args.down, args.outage, stop_with_broker_down=False)
        stop_down = run_once(Path(tmp) / "b", 4.0, None, 0, stop_with_broker_down=True)
    report = {"outage": outage, "stop_with_broker_down": {k: stop_down[k] for k in ("made", "exit_s", "rc", "stderr")}}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
