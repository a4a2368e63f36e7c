"""Sinks: JSON lines, annotated video, the MJPEG preview, and MQTT through a real Mosquitto broker that is
restarted mid-stream."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from conftest import needs_opencv, needs_paho

from edgecls.errors import ConfigError, SinkError
from edgecls.live.smoothing import Decision
from edgecls.live.stream import Latency, StreamResult
from edgecls.model.postprocess import Prediction
from edgecls.sinks.base import JsonlSink, TextSink
from edgecls.sinks.dashboard import Dashboard as PreviewSink
from edgecls.sinks.mqtt import MqttSink, check_topic, parse_mqtt_url
from edgecls.sinks.spec import parse_sink
from edgecls.sinks.video import VideoSink

# (tests that need OpenCV are marked needs_opencv)


def result(seq: int, label: str = "cat", changed: bool = False, frame: bool = True) -> StreamResult:
    image = np.full((120, 160, 3), seq % 256, np.uint8) if frame else None
    return StreamResult(
        seq,
        time.time(),
        time.time(),
        [Prediction(0, label, 0.9), Prediction(1, "dog", 0.1)],
        Decision(label, 0, 0.9, changed, None),
        Latency(0.1, 0.2, 4.0, 0.1, 4.4),
        image,
        "rgb",
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
        "broker.local",
        1884,
        "robot/vision",
        "bob",
        "s@cret",
        False,
    )
    assert parse_mqtt_url("mqtts://h/t")[1] == 8883
    for bad, message in [
        ("mqtt://host", "needs a host and a topic"),
        ("mqtt://h/a/+", "wildcards"),
        ("mqtt://h/a/#", "wildcards"),
        ("ftp://x", "unknown sink"),
        ("preview:abc", "port must be a number"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_sink(bad)
    sink = parse_sink(f"jsonl:{tmp_path / 'r.jsonl'}")
    assert isinstance(sink, JsonlSink)
    sink.close()


def test_sinks_come_from_one_registry(tmp_path):
    """Every kind of sink is one entry of the registry: its forms make SINK_FORMS and the unknown-sink error, its
    check is what deploy runs, and a kind registered from outside is built by parse_sink like a built-in one,
    with the runtime callbacks beside the options."""
    from edgecls.sinks import spec

    assert list(spec.SINKS) == ["jsonl", "mqtt", "video", "preview"]
    assert spec.SINK_FORMS == spec.sink_forms() and all(entry.form in spec.SINK_FORMS for entry in spec.SINKS.values())
    assert [spec.check_sink_spec(s) for s in ("jsonl:x", "mqtts://h/t", "video:a.avi", "preview", "preview:0")] == [
        "jsonl",
        "mqtt",
        "video",
        "preview",
        "preview",
    ]
    assert [spec.sink_needs_frames(s) for s in ("jsonl:x", "mqtt://h/t", "video:a.mp4", "preview:8080")] == [
        False,
        False,
        True,
        True,
    ]
    with pytest.raises(ConfigError, match="names no file; expected jsonl:PATH"):
        spec.check_sink_spec("jsonl:")
    with pytest.raises(ConfigError, match=r"expected mqtt://\[user:pass@\]host"):
        spec.check_sink_spec("mqtt:broker/topic")

    built = []

    class ListSink:
        def __init__(self, name, on_change, stats):  # type: ignore[no-untyped-def]
            self.name, self.on_change, self.stats, self.results = name, on_change, stats, []

        def write(self, result):  # type: ignore[no-untyped-def]
            self.results.append(result)

        def close(self):  # type: ignore[no-untyped-def]
            pass

    def check(text):  # type: ignore[no-untyped-def]
        if not text.partition(":")[2]:
            raise ConfigError(f"list sink {text!r} needs a name")

    @spec.register_sink("list", form="list:NAME", check=check)
    def build(text, options, *, on_event=None, stats=None):  # type: ignore[no-untyped-def]
        built.append(ListSink(text.partition(":")[2], options.on_change, stats))
        return built[-1]

    try:
        assert "list:NAME" in spec.sink_forms() and spec.check_sink_spec("list:a") == "list"
        with pytest.raises(ConfigError, match="needs a name"):
            spec.parse_sink("list:")
        sink = spec.parse_sink("list:a", spec.SinkOptions(on_change=True), stats=list)
        assert sink is built[0] and (sink.name, sink.on_change, sink.stats) == ("a", True, list)
        with pytest.raises(ConfigError, match="'jsonl' is taken already"):
            spec.register_sink("other", form="jsonl:X", schemes=("jsonl",))(build)
    finally:
        del spec.SINKS["list"]
    with pytest.raises(ConfigError, match="unknown sink 'list:a'"):
        spec.parse_sink("list:a")


def test_sink_options_are_checked_when_made(tmp_path):
    """Each sink's options are frozen and refuse a bad value when built, repeating it; parse_sink hands each
    kind its own (on_change to JSON lines, the fps to the video)."""
    import dataclasses

    from edgecls.sinks.spec import MqttSinkOptions, PreviewSinkOptions, SinkOptions, VideoSinkOptions

    for make, says in [
        (lambda: MqttSinkOptions(qos=3), "MQTT QoS must be 0, 1 or 2 (received 3)"),
        (lambda: MqttSinkOptions(qos=True), "(received True)"),
        (lambda: VideoSinkOptions(fps=0), "fps must be positive (received 0)"),
        (lambda: PreviewSinkOptions(hosts="pi.local"), "not one text (received 'pi.local')"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            make()
    options = SinkOptions(on_change=True, preview=PreviewSinkOptions(hosts=["pi.local"]))
    assert options.preview.hosts == ("pi.local",) and options.mqtt == MqttSinkOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.on_change = False  # type: ignore[misc]
    sink = parse_sink(f"jsonl:{tmp_path / 'changes.jsonl'}", options)
    try:
        sink.write(result(0, changed=False, frame=False))
        sink.write(result(1, changed=True, frame=False))
    finally:
        sink.close()
    assert [json.loads(line)["sequence"] for line in (tmp_path / "changes.jsonl").read_text().splitlines()] == [1]


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
        with pytest.raises(SinkError, match=r"nothing delivered \(10 result\(s\) not sent\): could not connect to 127"):
            sink.close()  # it delivered nothing: close says so, and why
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
    from edgecls.sinks.base import SinkGroup

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
    from edgecls.sinks.mqtt import mask_url, split_mqtt_password
    from edgecls.sinks.spec import check_sink_spec

    assert mask_url("mqtt://pi:hunter2@broker:1884/t") == "mqtt://pi:***@broker:1884/t"
    assert mask_url("mqtt://pi@broker/t") == "mqtt://pi@broker/t" and mask_url("jsonl:x") == "jsonl:x"
    assert split_mqtt_password("mqtts://pi:s%40cret@broker/robot/vision") == (
        "mqtts://pi@broker/robot/vision",
        "s@cret",
    )
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

    secret = 's3cret$`"pw'
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
        command = [
            sys.executable,
            "-m",
            "edgecls",
            "run",
            str(coral / "mobilenet_v2_1.0_224_quant.tflite"),
            "--source",
            str(coral / "cat.bmp"),
            "-q",
            "--mqtt-qos",
            "1",
            "--sink",
            url,
        ]
        ok = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "EDGECLS_MQTT_PASSWORD": secret},
            check=False,
        )
        assert ok.returncode == 0, ok.stderr
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [m["predictions"][0]["label"] for m in got] == ["Egyptian cat"]
        # without the password the broker refuses the connection; the result is not delivered, and the run says
        # why and fails (it used to end with exit code 0 and "not reachable yet")
        wrong = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "EDGECLS_MQTT_PASSWORD": "wrong"},
            check=False,
        )
        time.sleep(0.5)
        assert len(got) == 1 and "wrong" not in wrong.stderr
        errors = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
        assert wrong.returncode == 1 and len(errors) == 1 and "Traceback" not in wrong.stderr, wrong.stderr
        assert "nothing delivered (1 result(s) not sent)" in errors[0]
        assert "refused the login (Not authorized): check the user and password" in errors[0]
    finally:
        sub.loop_stop()
        broker.stop()


# -- topics: refused at start when no broker takes them; what is accepted reaches a real broker ----------------------

LONGEST = 65535 - len("/status")  # bytes of the longest topic whose status topic still fits MQTT's 65,535


@pytest.mark.parametrize(
    ("topic", "says"),
    [
        ("t%00x", "holds a NUL character"),
        ("t%0Ax", "holds a control character"),
        ("t%1B[2J", "holds a control character"),
        ("t%7F", "holds a control character"),
        ("t/%C2%85", "holds a control character (U+0085)"),  # C1 NEXT LINE
        ("t/%EF%BF%BF", "noncharacter U+FFFF"),
        ("t/%EF%B7%90", "noncharacter U+FDD0"),
        ("t/%F4%8F%BF%BF", "noncharacter U+10FFFF"),
        ("t%FF", "not valid UTF-8"),
        ("t%C3", "not valid UTF-8"),
        ("t/\udcff", "not valid UTF-8"),  # a stray byte in argv, as Python decodes it
        ("t/+", "wildcards"),
        ("t/%23", "wildcards"),
        ("x" * (LONGEST + 1), "too long: with its status topic (/status) it takes 65,536 bytes"),
        ("%C3%A9" * 40000, "too long"),  # 40,000 characters, 80,000 bytes
        ("/pi/vision", "the topic starts with '/'"),
        ("//pi/vision", "the topic starts with '/'"),
        ("pi?vision", "a '?' would start a URL query"),
    ],
)
def test_a_topic_no_broker_takes_is_refused_at_start(topic, says):
    """Each used to start a client that reconnected forever (NUL, control characters: "Malformed UTF-8"), kill
    paho's thread (over 65,535 bytes: struct.error) or be changed silently (a leading '/' stripped, '?...' cut)."""
    url = f"mqtt://pi:hunter2@127.0.0.1:1/{topic}"
    for make in (parse_sink, MqttSink):
        with pytest.raises(ConfigError) as caught:
            make(url)
        message = str(caught.value)
        assert says in message and "\n" not in message and len(message) < 400, message
        assert "hunter2" not in message


@pytest.mark.parametrize(
    ("path", "topic"),
    [
        ("%2Fpi/vision", "/pi/vision"),  # a leading slash that is meant: written %2F
        ("pi/vision/", "pi/vision/"),
        ("a%3Fb", "a?b"),
        ("caf%C3%A9/%E2%82%AC", "café/€"),
        ("x" * LONGEST, "x" * LONGEST),
    ],
)
def test_a_topic_is_the_url_path_exactly(path, topic):
    assert parse_mqtt_url(f"mqtt://h/{path}")[2] == topic


@needs_paho
def test_what_check_topic_refuses_mosquitto_refuses(mosquitto):
    """The rule behind check_topic, tried on the real broker with paho directly: a topic with a NUL, a C0 or C1
    control character, DEL or a noncharacter gets the connection closed; the characters around them go through."""
    import paho.mqtt.client as mqtt

    def delivered(topic: str) -> bool:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        try:
            info = client.publish(topic, b"x", qos=1)
            info.wait_for_publish(2)
            return info.is_published()
        except RuntimeError:  # the connection was closed under it
            return False
        finally:
            client.disconnect()
            client.loop_stop()

    refused = [
        "a/\x00",
        "a/\x01",
        "a/\n",
        "a/\x1f",
        "a/\x7f",
        "a/\x85",
        "a/\x9f",
        "a/\ufdd0",
        "a/\ufffe",
        "a/\uffff",
        "a/\U0001fffe",
        "a/\U0010ffff",
    ]
    accepted = ["a/ ", "a/~", "a/\xa0", "a/\ufdcf", "a/\ufdf0", "a/\ufffd", "a/é", "/a"]
    for topic in refused:
        with pytest.raises(ConfigError):
            check_topic(topic)
    assert [t for t in refused if delivered(t)] == []
    assert [t for t in accepted if not delivered(t)] == []


@needs_paho
def test_the_longest_topic_and_a_meant_leading_slash_reach_a_real_broker(mosquitto):
    import paho.mqtt.client as mqtt

    got: dict[str, list[bytes]] = {}
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.setdefault(m.topic, []).append(m.payload)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("#", qos=1)
    sub.loop_start()
    topics = ["x" * LONGEST, "/pi/vision", "café/€"]
    sinks = [
        MqttSink(f"mqtt://127.0.0.1:{mosquitto.port}/{path}", qos=1)
        for path in ("x" * LONGEST, "%2Fpi/vision", "caf%C3%A9/%E2%82%AC")
    ]
    try:
        time.sleep(0.3)
        for sink in sinks:
            assert sink.wait_connected(5)
            sink.write(result(1, frame=False))
            assert sink.flush(5)
    finally:
        for sink in sinks:
            sink.close()
        time.sleep(0.3)
        sub.loop_stop()
        sub.disconnect()
    for topic in topics:
        assert json.loads(got[topic][0])["sequence"] == 1
        assert got[topic + "/status"][-1] == b"offline"


# -- a run whose MQTT sink delivered nothing says why and fails --------------------------------------------------------

MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def run_once(coral, url: str, *extra: str):  # type: ignore[no-untyped-def]
    """`edgecls run` over one image into ``url`` (in-process): exit code, the error lines, the whole stderr."""
    from typer.testing import CliRunner

    from edgecls.cli.app import app

    done = CliRunner().invoke(
        app,
        ["run", str(coral / MODEL), "--source", str(coral / "cat.bmp"), "-q", "--mqtt-qos", "1", "--sink", url, *extra],
    )
    assert "Traceback" not in done.output and (done.exception is None or isinstance(done.exception, SystemExit))
    return done.exit_code, [line for line in done.stderr.splitlines() if line.startswith("error:")], done.stderr


@needs_paho
def test_refused_credentials_are_named_and_fail_the_run(coral, tmp_path):
    from conftest import Mosquitto

    broker = Mosquitto(tmp_path, users={"pi": "right"}).start()
    try:
        code, errors, said = run_once(coral, f"mqtt://pi:wrong@127.0.0.1:{broker.port}/cam")
        assert code == 1 and len(errors) == 1, said
        assert "nothing delivered (1 result(s) not sent)" in errors[0]
        assert "refused the login (Not authorized): check the user and password" in errors[0]
        assert "wrong" not in said and said.count("refused the login") == 2  # once when it happened, once at the end
        code, errors, said = run_once(coral, f"mqtt://127.0.0.1:{broker.port}/cam")  # no user at all
        assert code == 1 and len(errors) == 1 and "it wants a user and password" in errors[0], said
    finally:
        broker.stop()


@needs_paho
def test_a_broker_never_reached_fails_the_run(coral):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, errors, said = run_once(coral, f"mqtt://127.0.0.1:{port}/cam")
    assert code == 1 and len(errors) == 1, said
    assert f"could not connect to 127.0.0.1:{port}" in errors[0] and "not reachable yet" in said


@needs_paho
def test_a_server_that_never_acknowledges_fails_the_run(coral):
    """Something listens but never answers the MQTT connection (not a broker, or a TLS port asked without TLS)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        code, errors, said = run_once(coral, f"mqtt://127.0.0.1:{server.getsockname()[1]}/cam")
    finally:
        server.close()
    assert code == 1 and len(errors) == 1, said
    assert "did not acknowledge the connection" in errors[0] and "is it an MQTT broker? TLS needs mqtts://" in errors[0]


@needs_paho
def test_a_topic_the_broker_rejects_fails_the_run(coral, mosquitto):
    """A topic of 201 levels is valid MQTT, so it passes check_topic, but Mosquitto takes at most 200: it closes
    the connection before acknowledging it (the last will names the status topic), every time."""
    deep = "/".join(["a"] * 201)
    code, errors, said = run_once(coral, f"mqtt://127.0.0.1:{mosquitto.port}/{deep}")
    assert code == 1 and len(errors) == 1, said
    assert "closed the connection before acknowledging it" in errors[0] and "see the broker's log" in errors[0]
    assert len(errors[0]) < 1000  # the 403-byte topic is shown cut short
    assert said.count("sink-error:") == 1  # said once while it ran, however often it reconnected


@needs_paho
def test_messages_the_broker_rejects_fail_the_run_without_a_flood_of_lines(coral, tmp_path):
    """A broker that closes the connection at every result (here: larger than its max_packet_size) acknowledges
    none: the run says so once while it runs and fails at the end, where every reconnect used to be two lines."""
    from conftest import Mosquitto

    broker = Mosquitto(tmp_path)
    broker.config.write_text(broker.config.read_text() + "max_packet_size 200\n")
    broker.start()
    try:
        from typer.testing import CliRunner

        from edgecls.cli.app import app

        done = CliRunner().invoke(
            app,
            [
                "run",
                str(coral / MODEL),
                "--source",
                str(coral / "cat.bmp"),
                "--loop",
                "--duration",
                "4",
                "-q",
                "--mqtt-qos",
                "1",
                "--sink",
                f"mqtt://127.0.0.1:{broker.port}/cam",
            ],
        )
    finally:
        broker.stop()
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.exit_code == 1 and len(errors) == 1 and "Traceback" not in done.output, done.stderr
    assert "the broker acknowledged none of the results on 'cam'" in errors[0]
    assert "closed the connection" in errors[0] and "messages this large" in errors[0]
    assert "oversize packet" in (tmp_path / "mosquitto.log").read_text()  # what the broker's log says
    # dozens of reconnects in 4 s: a line or two about them, not two lines each
    assert done.stderr.count("sink-disconnected") <= 2 and done.stderr.count("sink-reconnected") <= 2, done.stderr
    assert done.stderr.count("keeps closing the connection") <= 1, done.stderr


@needs_paho
def test_a_sink_that_delivered_says_nothing_more(mosquitto):
    sink = MqttSink(f"mqtt://127.0.0.1:{mosquitto.port}/cam", qos=1)
    try:
        assert sink.wait_connected(5)
        sink.write(result(1, frame=False))
        assert sink.flush(5)
        assert sink.delivery_problem() is None
    finally:
        sink.close()  # no SinkError
    quiet = MqttSink(f"mqtt://127.0.0.1:{mosquitto.port}/cam", on_change=True)
    assert quiet.wait_connected(5)
    quiet.write(result(2, changed=False, frame=False))  # nothing to send: reaching the broker is all it had to do
    quiet.close()
    assert quiet.written == 0 and quiet.delivery_problem() is None


# -- clearing what a run left retained ---------------------------------------------------------------------------------


def retained(port: int, *filters: str, wait: float = 1.0) -> dict[str, bytes]:
    """The retained messages a new subscriber gets on ``filters``."""
    import paho.mqtt.client as mqtt

    got: dict[str, bytes] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, m.payload) if m.retain else None
    client.on_connect = lambda c, u, f, rc, p: c.subscribe([(f, 1) for f in filters])
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(wait)
    client.loop_stop()
    client.disconnect()
    return got


@needs_paho
def test_clear_retained_takes_the_status_and_a_retained_result_off_a_real_broker(mosquitto):
    from edgecls.sinks.mqtt import clear_retained

    url = f"mqtt://127.0.0.1:{mosquitto.port}/robot/vision"
    sink = MqttSink(url, qos=1, retain=True)
    assert sink.wait_connected(5)
    sink.write(result(1, frame=False))
    assert sink.flush(5)
    sink.close()
    assert set(retained(mosquitto.port, "robot/#")) == {"robot/vision", "robot/vision/status"}
    assert clear_retained(url) == ["robot/vision/status"]
    assert set(retained(mosquitto.port, "robot/#")) == {"robot/vision"}  # the result was not asked for
    assert clear_retained(url, results=True) == ["robot/vision/status", "robot/vision"]
    assert retained(mosquitto.port, "robot/#") == {}
    port = mosquitto.port
    mosquitto.stop()
    with pytest.raises(SinkError, match=f"could not connect to MQTT broker 127.0.0.1:{port} .*nothing was cleared"):
        clear_retained(url, timeout=1)
