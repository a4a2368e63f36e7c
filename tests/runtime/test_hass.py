"""Home Assistant MQTT discovery (`edgecls run --mqtt-discovery`) on a real Mosquitto broker: the retained configs
arrive where Home Assistant looks for them, say what its MQTT discovery documentation asks for, their templates
render the published results with Jinja2 as Home Assistant renders them, the online sensor follows the status topic
and its last will, and a Home Assistant that starts again gets the configs again."""

from __future__ import annotations

import json
import time

import pytest
from conftest import needs_paho
from typer.testing import CliRunner

from edgecls.cli.app import app
from edgecls.errors import ConfigError
from edgecls.sinks.hass import Discovery, discovery_messages, node_id_for

MODEL = "mobilenet_v2_1.0_224_quant.tflite"
runner = CliRunner()


class Retained:
    """A subscriber that collects every message (retained ones too) on some topic filters."""

    def __init__(self, port: int, *filters: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: dict[str, list[bytes]] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.setdefault(m.topic, []).append(m.payload)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(f, 1) for f in filters])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def wait(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages.get(topic, [])) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages.get(topic, [])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def render(template: str, payload: dict) -> str:
    """A Home Assistant template over an MQTT payload: Jinja2 with the JSON as value_json."""
    jinja2 = pytest.importorskip("jinja2", reason="the dev extra's jinja2 renders Home Assistant templates")
    return jinja2.Environment().from_string(template).render(value_json=payload)


TOPICS = [
    "pi/vision",
    "pi_vision",
    "pi-vision",
    "pi//vision",
    "/pi/vision",
    "pi/vision/",
    "pi vision",
    "pi.vision",
    "Pi/Vision",
    "pi/vision_",
    "pi/vision__",
    "pi_/vision",
    "pi/_vision",
    "pi/vision/abcdef0123",
    "x" * 64,
    "x" * 65,
    "x" * 64 + "y",
    "camera",
    "日本",
    "日本語",
    "pi/vision/status",
]


def test_node_ids_are_unique_per_topic_and_readable():
    """Topics that used to share an id (pi/vision and pi_vision both gave edgecls_pi_vision, so one camera's
    discovery replaced the other's) get their own; a plain topic keeps the id it had, so a device keeps its
    entities across the upgrade."""
    ids = {topic: node_id_for(topic) for topic in TOPICS}
    assert len(set(ids.values())) == len(TOPICS), ids
    assert ids["pi/vision"] == "edgecls_pi_vision" and ids["camera"] == "edgecls_camera"
    assert ids["pi_vision"].startswith("edgecls_pi_vision__") and ids["日本"].startswith("edgecls_camera__")
    for topic, node in ids.items():
        Discovery(node_id=node)  # an id Home Assistant reads: letters, digits, _ and -, bounded
        assert node_id_for(topic) == node  # the same topic, the same id, every run
    # the config topics of different topics never meet
    configs = [t for topic in TOPICS for t, _ in discovery_messages(Discovery(), topic, topic + "/status")]
    assert len(set(configs)) == len(configs)


def test_configs_follow_home_assistants_discovery_schema():
    label_topic, online_topic = (t for t, _ in discovery_messages(Discovery(), "pi/vision", "pi/vision/status"))
    assert label_topic == "homeassistant/sensor/edgecls_pi_vision/label/config"
    assert online_topic == "homeassistant/binary_sensor/edgecls_pi_vision/online/config"
    label, online = (
        json.loads(p) for _, p in discovery_messages(Discovery(model="m.tflite"), "pi/vision", "pi/vision/status")
    )
    assert label["state_topic"] == label["json_attributes_topic"] == "pi/vision"
    assert label["availability_topic"] == online["state_topic"] == "pi/vision/status"
    assert (online["payload_on"], online["payload_off"], online["device_class"]) == (
        "online",
        "offline",
        "connectivity",
    )
    assert label["unique_id"] != online["unique_id"] and label["device"] == online["device"]
    assert label["device"]["identifiers"] == ["edgecls_pi_vision"] and label["device"]["model"] == "m.tflite"
    assert node_id_for("a b/c") == "edgecls_a_b_c__" + node_id_for("a b/c")[-10:]
    custom = discovery_messages(Discovery(prefix="ha/discovery", node_id="kitchen"), "t", "t/status")
    assert custom[0][0] == "ha/discovery/sensor/kitchen/label/config"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix": "home assistant"},
        {"prefix": "ha/#"},
        {"prefix": "/ha"},
        {"node_id": "a/b"},
        {"node_id": ""},
        {"node_id": "n" * 129},
    ],
)
def test_a_prefix_or_node_id_home_assistant_cannot_read_is_refused(kwargs):
    with pytest.raises(ConfigError, match="expected letters, digits"):
        Discovery(**kwargs)


@needs_paho
def test_a_camera_appears_in_home_assistant_through_a_real_broker(coral, mosquitto):
    port = mosquitto.port
    live = Retained(port, "robot/vision")
    try:
        time.sleep(0.3)
        result = runner.invoke(
            app,
            [
                "run",
                str(coral / MODEL),
                "--source",
                str(coral / "cat.bmp"),
                "-q",
                "--mqtt-qos",
                "1",
                "--sink",
                f"mqtt://127.0.0.1:{port}/robot/vision",
                "--mqtt-discovery",
            ],
        )
        assert result.exit_code == 0, result.output
        (published,) = live.wait("robot/vision")
    finally:
        live.close()

    # what Home Assistant finds when it subscribes afterwards: retained configs, and the device's last status
    ha = Retained(port, "homeassistant/#", "robot/vision/status")
    try:
        (label_config,) = ha.wait("homeassistant/sensor/edgecls_robot_vision/label/config")
        (online_config,) = ha.wait("homeassistant/binary_sensor/edgecls_robot_vision/online/config")
        (status,) = ha.wait("robot/vision/status")
    finally:
        ha.close()
    label, online = json.loads(label_config), json.loads(online_config)
    assert label["device"]["model"] == MODEL and label["device"]["manufacturer"] == "edgecls"
    result_json = json.loads(published)
    assert render(label["value_template"], result_json) == "Egyptian cat"
    attributes = json.loads(render(label["json_attributes_template"], result_json))
    assert attributes["score"] == result_json["decision"]["score"] > 0.5
    assert next(p["label"] for p in attributes["top_k"]) == "Egyptian cat"
    # the run has ended: the online sensor reads the retained status, which Home Assistant shows as off
    assert status == online["payload_off"].encode() == label["payload_not_available"].encode()


@needs_paho
def test_home_assistant_starting_again_gets_the_configs_again(mosquitto):
    import paho.mqtt.client as mqtt

    from edgecls.sinks.mqtt import MqttSink

    port = mosquitto.port
    config_topic = "homeassistant/sensor/edgecls_cam/label/config"
    sink = MqttSink(f"mqtt://127.0.0.1:{port}/cam", discovery=Discovery())
    watcher = Retained(port, config_topic)
    try:
        assert sink.wait_connected(5)
        assert len(watcher.wait(config_topic)) == 1
        ha = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        ha.connect("127.0.0.1", port)
        ha.loop_start()
        ha.publish(config_topic, b"", qos=1, retain=True).wait_for_publish(5)  # forget the retained config
        ha.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)  # Home Assistant's birth message
        messages = watcher.wait(config_topic, count=3)
        ha.loop_stop()
        ha.disconnect()
    finally:
        watcher.close()
        sink.close()
    assert messages[1] == b"" and json.loads(messages[2])["state_topic"] == "cam"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--mqtt-discovery"], "--mqtt-discovery announces an MQTT sink to Home Assistant: add one"),
        (
            ["--mqtt-discovery", "--mqtt-discovery-prefix", "ha/#", "--sink", "mqtt://127.0.0.1:1/t"],
            "MQTT discovery prefix 'ha/#'",
        ),
        (
            ["--mqtt-discovery-node-id", "kitchen", "--sink", "mqtt://127.0.0.1:1/t"],
            "--mqtt-discovery-node-id names the device that --mqtt-discovery announces: add --mqtt-discovery",
        ),
        (
            ["--mqtt-discovery", "--mqtt-discovery-node-id", "kitchen cam", "--sink", "mqtt://127.0.0.1:1/t"],
            "MQTT discovery node id 'kitchen cam': expected letters, digits, _ and -",
        ),
        (
            [
                "--mqtt-discovery",
                "--mqtt-discovery-node-id",
                "kitchen",
                "--sink",
                "mqtt://127.0.0.1:1/a",
                "--sink",
                "mqtt://127.0.0.1:1/b",
            ],
            "one id names one device, and 2 MQTT sinks would each announce it",
        ),
    ],
)
def test_discovery_misuse_is_one_error_line(coral, args, words):
    result = runner.invoke(app, ["run", str(coral / MODEL), "--source", str(coral / "cat.bmp"), *args])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and words in errors[0], result.output


@needs_paho
def test_two_cameras_whose_topics_used_to_collide_stay_two_devices(coral, mosquitto):
    """pi/vision and pi_vision on one broker: two devices in Home Assistant's eyes (four retained configs), each
    reading its own topic; a third camera named with --mqtt-discovery-node-id gets exactly that id."""
    port = mosquitto.port
    for topic, extra in (
        ("pi/vision", []),
        ("pi_vision", []),
        ("kitchen/cam", ["--mqtt-discovery-node-id", "kitchen"]),
    ):
        result = runner.invoke(
            app,
            [
                "run",
                str(coral / MODEL),
                "--source",
                str(coral / "cat.bmp"),
                "-q",
                "--mqtt-qos",
                "1",
                "--sink",
                f"mqtt://127.0.0.1:{port}/{topic}",
                "--mqtt-discovery",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
    ha = Retained(port, "homeassistant/#")
    try:
        time.sleep(1.0)
    finally:
        ha.close()
    configs = {topic: json.loads(payloads[-1]) for topic, payloads in ha.messages.items()}
    labels = {c["state_topic"]: (topic, c) for topic, c in configs.items() if "/sensor/" in topic}
    assert len(configs) == 6 and set(labels) == {"pi/vision", "pi_vision", "kitchen/cam"}, sorted(configs)
    assert labels["pi/vision"][0] == "homeassistant/sensor/edgecls_pi_vision/label/config"  # the id it always had
    assert labels["pi_vision"][0] == f"homeassistant/sensor/{node_id_for('pi_vision')}/label/config"
    assert labels["kitchen/cam"][0] == "homeassistant/sensor/kitchen/label/config"
    devices = {c["device"]["identifiers"][0] for _, c in labels.values()}
    assert len(devices) == 3


@needs_paho
def test_mqtt_clear_takes_the_camera_out_of_home_assistant(coral, mosquitto, tmp_path):
    """What `install.sh --uninstall` runs: after it, a Home Assistant that subscribes finds no config and no status
    of the camera; other retained messages on the broker stay. With the broker gone: one error line, exit code 1."""
    port = mosquitto.port
    url = f"mqtt://127.0.0.1:{port}/robot/vision"
    result = runner.invoke(
        app,
        [
            "run",
            str(coral / MODEL),
            "--source",
            str(coral / "cat.bmp"),
            "-q",
            "--sink",
            url,
            "--mqtt-discovery",
            "--mqtt-discovery-prefix",
            "ha",
            "--mqtt-discovery-node-id",
            "robot",
        ],
    )
    assert result.exit_code == 0, result.output
    import paho.mqtt.client as mqtt

    other = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    other.connect("127.0.0.1", port)
    other.loop_start()
    other.publish("ha/sensor/other/label/config", b"{}", qos=1, retain=True).wait_for_publish(5)
    other.loop_stop()
    other.disconnect()
    before = Retained(port, "ha/#", "robot/#")
    time.sleep(1.0)
    before.close()
    assert set(before.messages) == {
        "ha/sensor/robot/label/config",
        "ha/binary_sensor/robot/online/config",
        "robot/vision/status",
        "ha/sensor/other/label/config",
    }

    cleared = runner.invoke(
        app,
        [
            "mqtt-clear",
            "--sink",
            url,
            "--mqtt-discovery",
            "--mqtt-discovery-prefix",
            "ha",
            "--mqtt-discovery-node-id",
            "robot",
        ],
    )
    assert cleared.exit_code == 0, cleared.output
    assert cleared.stdout.startswith(f"cleared 3 retained topic(s) on 127.0.0.1:{port}: ha/sensor/robot/label/config")
    after = Retained(port, "ha/#", "robot/#")
    time.sleep(1.0)
    after.close()
    assert set(after.messages) == {"ha/sensor/other/label/config"}

    mosquitto.stop()
    down = runner.invoke(app, ["mqtt-clear", "--sink", url, "--mqtt-discovery", "--timeout", "1"])
    errors = [line for line in down.stderr.splitlines() if line.startswith("error:")]
    assert down.exit_code == 1 and len(errors) == 1 and "Traceback" not in down.output, down.output
    assert f"could not connect to MQTT broker 127.0.0.1:{port}" in errors[0] and "nothing was cleared" in errors[0]
    bad = runner.invoke(app, ["mqtt-clear", "--sink", "mqtt://127.0.0.1:1/t%00"])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: MQTT topic 't\\x00' holds a NUL"), bad.output


@needs_paho
def test_mqtt_clear_names_refused_credentials(tmp_path):
    from conftest import Mosquitto

    broker = Mosquitto(tmp_path, users={"pi": "right"}).start()
    try:
        done = runner.invoke(
            app,
            ["mqtt-clear", "--sink", f"mqtt://pi@127.0.0.1:{broker.port}/cam"],
            env={"EDGECLS_MQTT_PASSWORD": "wrong"},
        )
    finally:
        broker.stop()
    assert done.exit_code == 1 and "refused the login (Not authorized): check the user and password" in done.stderr
    assert "nothing was cleared" in done.stderr and "wrong" not in done.output
