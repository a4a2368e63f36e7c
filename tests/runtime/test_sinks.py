"""Sinks: JSON lines, annotated video, the MJPEG preview, and MQTT through a real Mosquitto broker that is
restarted mid-stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from conftest import needs_opencv, needs_paho

from edgecls.errors import ConfigError, SinkError
from edgecls.postprocess import Prediction
from edgecls.sinks import JsonlSink, MqttSink, PreviewSink, TextSink, VideoSink, parse_mqtt_url, parse_sink
from edgecls.smoothing import Decision
from edgecls.stream import Latency, StreamResult

# (tests that need OpenCV are marked needs_opencv)


def result(seq: int, label: str = "cat", changed: bool = False, frame: bool = True) -> StreamResult:
    image = np.full((120, 160, 3), seq % 256, np.uint8) if frame else None
    return StreamResult(
        seq, time.time(), time.time(), [Prediction(0, label, 0.9), Prediction(1, "dog", 0.1)],
        Decision(label, 0, 0.9, changed, None), Latency(0.1, 0.2, 4.0, 0.1, 4.4), image, "rgb",
    )


def test_jsonl_appends_and_flushes_every_line(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    sink = JsonlSink(path)
    sink.write(result(0, changed=True))
    sink.write(result(1))
    # flushed per line: another reader sees both lines before close
    lines = path.read_text().splitlines()
    assert [json.loads(line)["sequence"] for line in lines] == [0, 1]
    sink.close()
    again = JsonlSink(path, on_change=True)
    again.write(result(2))  # unchanged decision: skipped
    again.write(result(3, "dog", changed=True))
    again.close()
    assert [json.loads(line)["sequence"] for line in path.read_text().splitlines()] == [0, 1, 3]


def test_jsonl_unwritable_path_is_a_sink_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SinkError, match="cannot open"):
        JsonlSink(tmp_path / "file" / "x.jsonl")


def test_text_sink_lines_and_json(tmp_path):
    import io

    buf = io.StringIO()
    TextSink(buf).write(result(7, changed=True))
    assert buf.getvalue().startswith("#7") and "decision: cat 0.90 *changed*" in buf.getvalue()
    buf = io.StringIO()
    TextSink(buf, json_lines=True).write(result(7))
    assert json.loads(buf.getvalue())["predictions"][1]["label"] == "dog"


@needs_opencv
def test_video_sink_writes_an_annotated_file_atomically(tmp_path):
    import cv2

    path = tmp_path / "annotated.avi"
    sink = VideoSink(path, fps=10)
    for i in range(5):
        sink.write(result(i * 40))
    assert not path.exists() and sink.partial.exists()  # only the .partial file while writing
    sink.close()
    assert path.exists() and not sink.partial.exists()
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 5 and frames[0].shape == (120, 160, 3)
    plain = np.full((120, 160, 3), 0, np.uint8)
    assert np.abs(frames[0].astype(int) - plain).max() > 100  # the label was drawn on it
    with pytest.raises(ConfigError, match="must end in"):
        VideoSink(tmp_path / "x.gif")


@needs_opencv
def test_preview_serves_mjpeg_on_localhost():
    import cv2

    sink = PreviewSink(0)
    try:
        assert sink.host == "127.0.0.1"
        with urllib.request.urlopen(sink.url, timeout=5) as page:
            assert b'src="stream.mjpg"' in page.read()
        sink.write(result(1))
        with urllib.request.urlopen(sink.url + "snapshot.jpg", timeout=5) as snap:
            jpeg = snap.read()
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
        stop = threading.Event()

        def feed() -> None:
            i = 0
            while not stop.is_set():
                sink.write(result(i))
                i += 1
                time.sleep(0.02)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            with urllib.request.urlopen(sink.url + "stream.mjpg", timeout=5) as stream:
                assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
                head = stream.read(200)
            assert head.startswith(b"--frame\r\nContent-Type: image/jpeg")
        finally:
            stop.set()
            feeder.join()
    finally:
        sink.close()


def test_parse_sink_and_mqtt_urls(tmp_path):
    assert parse_mqtt_url("mqtt://bob:s%40cret@broker.local:1884/robot/vision") == (
        "broker.local", 1884, "robot/vision", "bob", "s@cret", False,
    )
    assert parse_mqtt_url("mqtts://h/t")[1] == 8883
    for bad, message in [("mqtt://host", "needs a host and a topic"), ("mqtt://h/a/+", "wildcards"), ("mqtt://h/a/#", "wildcards"),
                         ("ftp://x", "unknown sink"), ("preview:abc", "port must be a number")]:
        with pytest.raises(ConfigError, match=message):
            parse_sink(bad)
    sink = parse_sink(f"jsonl:{tmp_path / 'r.jsonl'}")
    assert isinstance(sink, JsonlSink)
    sink.close()


class Subscriber:
    """A paho client with a persistent session (QoS 1), so messages sent while it reconnects are kept for it."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.status: list[str] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgecls-test-sub", clean_session=False)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(topic, 1), (topic + "/status", 1)])
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.topic = topic
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):  # type: ignore[no-untyped-def]
        if message.topic == self.topic:
            self.messages.append(json.loads(message.payload))
        else:
            self.status.append(message.payload.decode())

    def wait_for(self, n: int, timeout: float = 15) -> list[int]:
        """The distinct sequence numbers received, in order of arrival (QoS 1 may deliver one twice)."""
        deadline = time.monotonic() + timeout
        while len(self.sequences()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.sequences()

    def sequences(self) -> list[int]:
        return list(dict.fromkeys(m["sequence"] for m in list(self.messages)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_results_reach_a_real_broker_and_survive_a_restart(mosquitto):
    topic = "edgecls/test"
    sub = Subscriber(mosquitto.port, topic)
    events = []
    sink = MqttSink(f"mqtt://127.0.0.1:{mosquitto.port}/{topic}", qos=1, on_event=events.append)
    try:
        assert sink.wait_connected(5)
        time.sleep(0.3)  # the subscriber's session is set up
        for i in range(5):
            sink.write(result(i))
        assert sub.wait_for(5) == [0, 1, 2, 3, 4]

        mosquitto.stop()  # the broker goes away mid-stream: classification goes on, results wait in the buffer
        deadline = time.monotonic() + 5
        while sink.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        start = time.monotonic()
        for i in range(5, 15):
            sink.write(result(i))
        assert time.monotonic() - start < 0.5  # writing never blocks on the missing broker
        assert not sink.connected and sink.pending == 10

        mosquitto.start()
        assert sink.wait_connected(20), "the sink did not reconnect"
        assert sub.wait_for(15, timeout=20) == list(range(15))  # nothing lost, in order
        kinds = [e.kind for e in events]
        assert kinds[0] == "sink-connected" and "sink-disconnected" in kinds and kinds[-1] == "sink-reconnected"
        assert "online" in sub.status
    finally:
        sink.close()
        sub.close()


@needs_paho
def test_mqtt_buffer_is_bounded_and_an_unreachable_broker_does_not_block(mosquitto):
    port = mosquitto.port
    mosquitto.stop()
    sink = MqttSink(f"mqtt://127.0.0.1:{port}/edgecls/t", buffer=3)
    try:
        start = time.monotonic()
        for i in range(10):
            sink.write(result(i))
        assert time.monotonic() - start < 0.5
        assert sink.pending == 3 and sink.dropped == 7
        start = time.monotonic()
        sink.close()
        assert time.monotonic() - start < 1.0  # a stop with the broker down stays under a second
        assert sink.unsent == 3 and sink.sent == 0
    finally:
        sink.close(timeout=0.2)


def test_mqtt_delivers_everything_made_after_an_outage(mosquitto):
    """The hostile run: QoS 1, results made at up to 200 a second, the broker down while more than the buffer's worth
    is made. Afterwards every result made once the broker is back arrives, the buffered ones follow, the sink
    reconnects by itself, and sent + dropped + lost + unsent is every result. The phases are counted in results,
    not seconds, and every wait is on a condition: a busy machine (load ~15) only makes the test take longer."""
    patience = 120.0
    topic = "edgecls/outage"
    sub = Subscriber(mosquitto.port, topic)
    events = []
    sink = MqttSink(f"mqtt://127.0.0.1:{mosquitto.port}/{topic}", qos=1, buffer=300, on_event=events.append)
    made: list[int] = []

    def make(count: int) -> None:
        for _ in range(count):
            sink.write(result(len(made), frame=False))
            made.append(len(made))
            time.sleep(0.005)

    def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + patience
        while not condition():
            assert time.monotonic() < deadline, f"{what} within {patience:.0f} s"
            time.sleep(0.02)

    try:
        assert sink.wait_connected(patience) and sub.subscribed.wait(patience)
        make(100)
        mosquitto.stop()
        until(lambda: not sink.connected, "the sink noticed the broker go")
        make(500)  # more than the buffer holds: the oldest go, counted
        mosquitto.start()
        back_at, back = time.time(), len(made)
        make(100)  # the sink reconnects meanwhile
        assert sink.wait_connected(patience), "the sink did not reconnect"
        make(100)
        assert sink.flush(patience), f"{sink.pending} still pending"
        got = set(sub.wait_for(len(made) - sink.dropped, timeout=patience))
        after = set(made[back:])
        assert after <= got, f"{len(after - got)} of {len(after)} results made after the broker came back are missing"
        assert sink.dropped >= 200  # 500 made while down, 300 kept
        assert len(got) == sink.sent and sink.sent + sink.dropped + sink.lost == len(made)
        reconnected = [e for e in events if e.kind == "sink-reconnected"]
        # reconnect_s is 1 s: the client retries the broker that often (a client backing off to minutes would not
        # be back yet); the bound leaves a busy machine ample time
        assert reconnected and reconnected[0].timestamp - back_at < 10
    finally:
        sink.close()
        sub.close()
    assert sink.unsent == 0


def test_a_failing_sink_is_reported_once_and_the_others_go_on(tmp_path):
    """`jsonl:/dev/full` (a full disk) fails every write: one sink-error event, every failure counted, and the
    other sink still gets every result."""
    from edgecls.sinks import SinkGroup

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    events = []
    good = tmp_path / "good.jsonl"
    group = SinkGroup([JsonlSink("/dev/full"), JsonlSink(good)], events.append)
    for i in range(20):
        group.write(result(i, frame=False))
    lines = group.close()
    assert [e.kind for e in events] == ["sink-error"] and "No space left" in events[0].message
    assert len(good.read_text().splitlines()) == 20
    assert len(lines) == 1 and lines[0].startswith("sink /dev/full: 20 result(s) not written")


def test_a_password_never_appears_in_messages():
    from edgecls.sinks import check_sink_spec, mask_url, split_mqtt_password

    assert mask_url("mqtt://pi:hunter2@broker:1884/t") == "mqtt://pi:***@broker:1884/t"
    assert mask_url("mqtt://pi@broker/t") == "mqtt://pi@broker/t" and mask_url("jsonl:x") == "jsonl:x"
    assert split_mqtt_password("mqtts://pi:s%40cret@broker/robot/vision") == ("mqtts://pi@broker/robot/vision", "s@cret")
    assert split_mqtt_password("mqtt://broker/t") == ("mqtt://broker/t", None)
    for bad in ["mqtt://pi:hunter2@broker", "mqtt://pi:hunter2@broker:99999/t", "mqtt://pi:hunter2@broker/t\nx"]:
        with pytest.raises(ConfigError) as caught:
            parse_sink(bad)
        assert "hunter2" not in str(caught.value) and "pi:***@broker" in str(caught.value)
    with pytest.raises(ConfigError, match="control characters"):
        check_sink_spec("jsonl:/tmp/x\nExecStartPre=/bin/sh")
    with pytest.raises(ConfigError, match="must end in"):
        check_sink_spec("video:/tmp/out.txt")


@needs_paho
def test_the_password_comes_from_the_environment(tmp_path, coral):
    """A sink URL with a user and no password takes EDGECLS_MQTT_PASSWORD, as a deployed service does from its
    root-only EnvironmentFile; a real broker that wants the password receives the results."""
    from conftest import Mosquitto

    secret = "s3cret$`\"pw"
    broker = Mosquitto(tmp_path, users={"pi": secret}).start()
    try:
        import paho.mqtt.client as mqtt

        got: list[dict] = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.username_pw_set("pi", secret)
        sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("robot/vision", qos=1)
        sub.loop_start()
        url = f"mqtt://pi@127.0.0.1:{broker.port}/robot/vision"
        command = [sys.executable, "-m", "edgecls", "run", str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
                   "--source", str(coral / "cat.bmp"), "-q", "--mqtt-qos", "1", "--sink", url]
        ok = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "EDGECLS_MQTT_PASSWORD": secret})
        assert ok.returncode == 0, ok.stderr
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [m["predictions"][0]["label"] for m in got] == ["Egyptian cat"]
        # without the password the broker refuses the connection; the result is not delivered
        wrong = subprocess.run(command, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "EDGECLS_MQTT_PASSWORD": "wrong"})
        time.sleep(0.5)
        assert len(got) == 1 and "wrong" not in wrong.stderr
    finally:
        sub.loop_stop()
        broker.stop()
