"""Home Assistant MQTT discovery: the configuration messages that make a camera running `edgecls run` appear in
Home Assistant as a device, with no YAML on the Home Assistant side.

Home Assistant reads retained JSON configs under ``<prefix>/<component>/<node_id>/<object_id>/config`` (prefix
``homeassistant`` by default) and re-reads them when it starts, announcing itself with "online" on
``<prefix>/status``; the MQTT sink publishes these configs on every connection and again on that announcement.

The device gets two entities:

- a sensor whose state is the decided label of each result (``decision.label`` of the `--json` schema), with the
  score, the class index, whether it just changed and the ranked predictions as attributes;
- a connectivity binary sensor tied to the sink's ``<topic>/status`` topic, which holds a retained "online" and
  becomes "offline" through the MQTT last will when the device goes away. The label sensor is available only while
  that topic says "online".

The device's node id is one per results topic (`node_id_for`), or the one given. `edgecls mqtt-clear` (which
``install.sh --uninstall`` runs) takes the configs off the broker again (edgecls.sinks.mqtt.clear_retained).

Pure functions over plain data: `MqttSink` (edgecls.sinks.mqtt) does the publishing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from edgecls import __version__
from edgecls.errors import ConfigError

DEFAULT_PREFIX = "homeassistant"
_ID = re.compile(r"[^A-Za-z0-9_-]+")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
# A topic that reads back from its node id: levels of letters, digits and '-' (no '_', no empty level), not too long
_PLAIN_TOPIC = re.compile(r"[A-Za-z0-9-]+(/[A-Za-z0-9-]+)*")
READABLE_MAX = 64  # characters of the topic a node id shows
NODE_ID_MAX = 128

# Home Assistant templates (Jinja2, the payload parsed as value_json)
LABEL_TEMPLATE = "{{ value_json.decision.label }}"
ATTRIBUTES_TEMPLATE = (
    "{{ {'score': value_json.decision.score, 'index': value_json.decision.index, "
    "'changed': value_json.decision.changed, 'previous': value_json.decision.previous, "
    "'top_k': value_json.predictions, 'sequence': value_json.sequence} | tojson }}"
)


@dataclass(frozen=True)
class Discovery:
    """What the discovery messages say about the device: ``name`` is what Home Assistant shows (default: the
    results topic), ``model`` the model file's name, ``node_id`` the device's id (default: `node_id_for` the
    topic; two devices with one id replace each other in Home Assistant)."""

    prefix: str = DEFAULT_PREFIX
    name: str | None = None
    model: str | None = None
    node_id: str | None = None

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ConfigError(
                f"MQTT discovery prefix {self.prefix!r}: expected letters, digits, _ and - in "
                "/-separated parts, e.g. homeassistant"
            )
        if self.node_id is not None and (
            not self.node_id or _ID.search(self.node_id) or len(self.node_id) > NODE_ID_MAX
        ):
            shown = self.node_id if len(self.node_id) <= 80 else self.node_id[:40] + "..."
            raise ConfigError(
                f"MQTT discovery node id {shown!r}: expected letters, digits, _ and -, at most {NODE_ID_MAX} of them"
            )


def discovery_for(
    enabled: bool, *, prefix: str = DEFAULT_PREFIX, node_id: str | None = None, model: str | None = None
) -> Discovery | None:
    """The Discovery that ``--mqtt-discovery`` (``enabled``), ``--mqtt-discovery-prefix`` and
    ``--mqtt-discovery-node-id`` ask for, or None; a node id without discovery is a ConfigError."""
    if not enabled:
        if node_id is not None:
            raise ConfigError(
                "--mqtt-discovery-node-id names the device that --mqtt-discovery announces: add --mqtt-discovery"
            )
        return None
    return Discovery(prefix=prefix, model=model, node_id=node_id)


def require_mqtt_sink(sinks: list[str], discovery: Discovery | None = None) -> None:
    """Discovery announces an MQTT sink: a ConfigError when ``sinks`` (``--sink`` texts) hold none, or when a node
    id given to ``discovery`` would name two devices (one per MQTT sink)."""
    mqtt = [spec for spec in sinks if spec.startswith(("mqtt://", "mqtts://"))]
    if not mqtt:
        raise ConfigError(
            "--mqtt-discovery announces an MQTT sink to Home Assistant: add one, e.g. "
            "--sink mqtt://broker.local/pi/vision"
        )
    if discovery is not None and discovery.node_id is not None and len(mqtt) > 1:
        raise ConfigError(
            f"--mqtt-discovery-node-id {discovery.node_id}: one id names one device, and {len(mqtt)} "
            "MQTT sinks would each announce it; leave it out (each sink's topic gives it its own id)"
        )


def node_id_for(topic: str) -> str:
    """The Home Assistant node id for a results topic, one per topic, readable where the topic allows.

    A topic of letters, digits and ``-`` in ``/``-separated levels reads back from its id, ``pi/vision`` ->
    ``edgecls_pi_vision`` (the id earlier versions gave it, so a device keeps its entities). Any other topic gets
    its readable part and a hash of its exact text after ``__``, which a plain topic's id never holds:
    ``pi_vision`` -> ``edgecls_pi_vision__1f0c9b33d2``, so the two never replace each other."""
    if _PLAIN_TOPIC.fullmatch(topic) and len(topic) <= READABLE_MAX:
        return "edgecls_" + topic.replace("/", "_")
    readable = _ID.sub("_", topic).strip("_")[:READABLE_MAX].strip("_") or "camera"
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"edgecls_{readable}__{digest}"


def discovery_messages(discovery: Discovery, topic: str, status_topic: str) -> list[tuple[str, str]]:
    """The (config topic, JSON payload) pairs to publish, retained, for a sink publishing results on ``topic``."""
    node = discovery.node_id or node_id_for(topic)
    device = {
        "identifiers": [node],
        "name": discovery.name or f"edgecls {topic}",
        "manufacturer": "edgecls",
        "model": discovery.model or "image classifier",
        "sw_version": __version__,
    }
    origin = {"name": "edgecls", "sw_version": __version__}
    label = {
        "name": "Label",
        "unique_id": f"{node}_label",
        "object_id": f"{node}_label",
        "state_topic": topic,
        "value_template": LABEL_TEMPLATE,
        "json_attributes_topic": topic,
        "json_attributes_template": ATTRIBUTES_TEMPLATE,
        "availability_topic": status_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "icon": "mdi:image-search",
        "device": device,
        "origin": origin,
    }
    online = {
        "name": "Online",
        "unique_id": f"{node}_online",
        "object_id": f"{node}_online",
        "state_topic": status_topic,
        "payload_on": "online",
        "payload_off": "offline",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": device,
        "origin": origin,
    }
    return [
        (f"{discovery.prefix}/sensor/{node}/label/config", json.dumps(label)),
        (f"{discovery.prefix}/binary_sensor/{node}/online/config", json.dumps(online)),
    ]


def run_args(discovery: Discovery | None) -> list[str]:
    """The `edgecls run` (and `edgecls mqtt-clear`) options that ask for ``discovery``: none for None."""
    if discovery is None:
        return []
    args = ["--mqtt-discovery"]
    if discovery.prefix != DEFAULT_PREFIX:
        args += ["--mqtt-discovery-prefix", discovery.prefix]
    if discovery.node_id is not None:
        args += ["--mqtt-discovery-node-id", discovery.node_id]
    return args


def birth_topic(discovery: Discovery) -> str:
    """Where Home Assistant says "online" when it (re)starts: the configs are published again then."""
    return f"{discovery.prefix}/status"
