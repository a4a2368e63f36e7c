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

Pure functions over plain data: `MqttSink` (edgecls.sinks) does the publishing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from . import __version__
from .errors import ConfigError

DEFAULT_PREFIX = "homeassistant"
_ID = re.compile(r"[^A-Za-z0-9_-]+")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")

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
    results topic), ``model`` the model file's name, ``node_id`` the device's id (default: from the topic)."""

    prefix: str = DEFAULT_PREFIX
    name: str | None = None
    model: str | None = None
    node_id: str | None = None

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ConfigError(f"MQTT discovery prefix {self.prefix!r}: expected letters, digits, _ and - in "
                              "/-separated parts, e.g. homeassistant")
        if self.node_id is not None and (not self.node_id or _ID.search(self.node_id)):
            raise ConfigError(f"MQTT discovery node id {self.node_id!r}: expected letters, digits, _ and -")


def require_mqtt_sink(sinks: list[str]) -> None:
    """Discovery announces an MQTT sink: a ConfigError when ``sinks`` (``--sink`` texts) hold none."""
    if not any(spec.startswith(("mqtt://", "mqtts://")) for spec in sinks):
        raise ConfigError("--mqtt-discovery announces an MQTT sink to Home Assistant: add one, e.g. "
                          "--sink mqtt://broker.local/pi/vision")


def node_id_for(topic: str) -> str:
    """A Home Assistant node id for a results topic: ``pi/vision`` -> ``edgecls_pi_vision``."""
    return "edgecls_" + (_ID.sub("_", topic).strip("_") or "camera")


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


def birth_topic(discovery: Discovery) -> str:
    """Where Home Assistant says "online" when it (re)starts: the configs are published again then."""
    return f"{discovery.prefix}/status"
