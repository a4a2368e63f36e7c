"""The MQTT sink (``mqtt[s]://[user[:pass]@]host[:port]/topic``): results as JSON on a topic through paho-mqtt, a
retained ``<topic>/status``, Home Assistant discovery (edgecls.sinks.hass), and `clear_retained`, which takes what a run
left retained off the broker again (``edgecls mqtt-clear``, ``install.sh --uninstall``).

Topics are checked before anything connects (`check_topic`): a topic no broker takes (NUL, control characters,
invalid UTF-8, over MQTT's 65,535 bytes with its status topic, a wildcard) is a ConfigError at start, for `run`
and for `deploy` alike, never a client that reconnects forever. At the end, a sink that delivered nothing says why
(`MqttSink.close` raises SinkError): the broker refused the login, closed the connection before acknowledging it,
acknowledged none of the results, or never answered.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from edgecls.errors import ConfigError, SinkError
from edgecls.live.capture import StreamEvent

if TYPE_CHECKING:
    from edgecls.live.stream import StreamResult

log = logging.getLogger(__name__)

# The MQTT password when the sink URL names a user without one (a deploy bundle's service reads it from a root-only
# EnvironmentFile, so it is neither in the unit nor in `ps`).
MQTT_PASSWORD_ENV = "EDGECLS_MQTT_PASSWORD"
# MQTT encodes a topic's length in two bytes (MQTT 3.1.1, 1.5.3); the sink also publishes on TOPIC + STATUS_SUFFIX.
TOPIC_MAX_BYTES = 65535
STATUS_SUFFIX = "/status"
KEEPALIVE_TIMEOUT = 0x8D  # the reason paho gives when the broker does not answer within the keepalive


def status_topic_for(topic: str) -> str:
    """Where a sink publishing on ``topic`` keeps its retained "online" (and "offline", its last will)."""
    return topic + STATUS_SUFFIX


# -- topics and URLs -------------------------------------------------------------------------------------------------


def _shown(topic: str) -> str:
    """A topic for a message: quoted, every control character and lone surrogate escaped, a long one cut short."""
    size = len(topic.encode("utf-8", "surrogatepass"))
    return repr(topic) if len(topic) <= 80 else f"{topic[:40]!r}... ({size:,} bytes)"


def _unwelcome(char: str) -> str | None:
    """What is wrong with ``char`` in a topic, or None. MQTT forbids U+0000 and says a topic should hold no control
    characters (U+0001-U+001F, U+007F-U+009F) and no noncharacters (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF); Mosquitto
    closes the connection of a client that sends them (tried: tests/runtime/test_sinks.py)."""
    code = ord(char)
    if code == 0:
        return "a NUL character, which MQTT forbids"
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"a control character ({unicodedata.name(char, f'U+{code:04X}')})"
    if 0xD800 <= code <= 0xDFFF:
        return "bytes that are not valid UTF-8"
    if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
        return f"the Unicode noncharacter U+{code:04X}"
    return None


def check_topic(topic: str) -> str:
    """``topic`` when a broker takes it as a publish topic, and its ``/status`` topic too; else a ConfigError that
    names the problem: empty, NUL or another control character, invalid UTF-8 (a lone surrogate, as Python decodes
    stray bytes), a noncharacter, the wildcards ``+`` and ``#`` (for subscribing only), or over 65,535 bytes as
    UTF-8 with the status suffix."""
    if not topic:
        raise ConfigError("the MQTT topic is empty: name one, e.g. mqtt://broker.local/pi/vision")
    problem = next((p for p in map(_unwelcome, topic) if p is not None), None)
    if problem is not None:
        raise ConfigError(
            f"MQTT topic {_shown(topic)} holds {problem}; brokers refuse such a topic (Mosquitto drops "
            "the connection): remove it"
        )
    if "+" in topic or "#" in topic:
        raise ConfigError(f"MQTT topic {_shown(topic)} is for publishing and cannot hold the wildcards # or +")
    size = len(status_topic_for(topic).encode("utf-8"))
    if size > TOPIC_MAX_BYTES:
        raise ConfigError(
            f"MQTT topic {_shown(topic)} is too long: with its status topic ({STATUS_SUFFIX}) it takes "
            f"{size:,} bytes, and MQTT allows {TOPIC_MAX_BYTES:,}"
        )
    return topic


def parse_mqtt_url(url: str) -> tuple[str, int, str, str | None, str | None, bool]:
    """(host, port, topic, user, password, tls) of ``mqtt[s]://[user[:pass]@]host[:port]/topic``.

    The topic is the URL's path after the slash that ends the host, percent-decoded as UTF-8, and checked with
    `check_topic`. A topic that starts with ``/`` (``mqtt://host//topic``) is refused, since that is a different
    topic from ``topic`` (its first level is empty) and more often a typo than meant; write ``%2F`` for a leading
    slash that is meant (``mqtt://host/%2Ftopic``). A ``?`` (a URL query) is refused too, rather than cut off:
    write ``%3F``. Error messages show the URL with its password masked (``mqtt://pi:***@host/t``)."""
    shown = _clip(mask_url(url))
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ConfigError(f"MQTT sink {shown!r} holds control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"MQTT sink {shown!r} must start with mqtt:// or mqtts://")
    if parts.fragment or url.endswith("#"):
        raise ConfigError(f"MQTT sink {shown!r}: the topic is for publishing and cannot hold the wildcards # or +")
    if parts.query or "?" in url.partition("://")[2].partition("/")[2]:
        raise ConfigError(
            f"MQTT sink {shown!r}: a '?' would start a URL query, not be part of the topic; write %3F "
            "for a '?' in the topic"
        )
    raw = parts.path[1:]
    if raw.startswith("/"):
        raise ConfigError(
            f"MQTT sink {shown!r}: the topic starts with '/', which makes it a different topic from "
            f"{raw.lstrip('/')!r} (an empty first level); write mqtt://HOST/{raw.lstrip('/')}, or %2F "
            "for a leading '/' that is meant"
        )
    try:
        topic = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ConfigError(
            f"MQTT sink {shown!r}: the topic's %-escapes are not valid UTF-8, which MQTT requires"
        ) from None
    if not parts.hostname or not topic:
        raise ConfigError(f"MQTT sink {shown!r} needs a host and a topic: mqtt://[user:pass@]host[:port]/topic")
    check_topic(topic)
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ConfigError(f"MQTT sink {shown!r} has an invalid port") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.hostname, port, topic, user, password, parts.scheme == "mqtts"


def _clip(text: str, most: int = 200) -> str:
    return text if len(text) <= most else text[: most - 40] + f"... ({len(text):,} characters)"


def _without_password(url: str, replacement: str | None) -> tuple[str, str | None]:
    """(``url`` with the password of its ``user:password@`` part replaced by ``replacement``, or dropped with its
    colon when that is None; the password as written, or None when the URL has none)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url, None
    user, password = userinfo.split(":", 1)
    kept = f"{user}:{replacement}" if replacement is not None else user
    return f"{scheme}://{kept}@{host}{slash}{path}", password


def mask_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``."""
    return _without_password(url, "***")[0]


def split_mqtt_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password or None): what a service unit may show, and the secret."""
    parse_mqtt_url(url)  # raises on a malformed URL, with the password masked
    public, password = _without_password(url, None)
    return public, unquote(password) if password is not None else None


def _import_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise SinkError("the MQTT sink needs paho-mqtt: pip install 'edgecls[mqtt]'") from None
    return mqtt


def _client(url: str, client_id: str) -> tuple[Any, str, int, str, bool]:
    """A paho client set up for ``url`` (its user and password, or EDGECLS_MQTT_PASSWORD; TLS for mqtts://), not
    connected yet; with the host, port, topic and whether the URL names a user."""
    host, port, topic, user, password, tls = parse_mqtt_url(url)
    if user and password is None:
        password = os.environ.get(MQTT_PASSWORD_ENV) or None
    mqtt = _import_paho()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if user:
        client.username_pw_set(user, password)
    if tls:
        client.tls_set()
    return client, host, port, topic, bool(user)


_CLIENTS = itertools.count(1)


def _client_id(kind: str) -> str:
    """A client id no other client of this process has (a broker drops the older of two connections that share
    one), and that no earlier process on this machine had recently."""
    return f"edgecls-{kind}{os.getpid()}-{int(time.time() * 1000) % 100000}-{next(_CLIENTS)}"


def refusal(host: str, port: int, reason_code: Any, user: bool) -> str:
    """What a broker's refusal of the connection (its CONNACK reason) means, and what to do."""
    value = getattr(reason_code, "value", None)
    if value in (134, 135):  # MQTT 3.1.1 return codes 4 and 5: bad user name or password, not authorised
        fix = (
            (
                "check the user and password (user:password in the URL, or the user in the URL and the password in "
                f"{MQTT_PASSWORD_ENV})"
            )
            if user
            else (
                "it wants a user and password: mqtt://USER:PASSWORD@host/topic, "
                f"or the user in the URL and the password in {MQTT_PASSWORD_ENV}"
            )
        )
        return f"MQTT broker {host}:{port} refused the login ({reason_code}): {fix}"
    return f"MQTT broker {host}:{port} refused the connection ({reason_code})"


# -- the sink --------------------------------------------------------------------------------------------------------


class MqttSink:
    """Publish results as JSON to an MQTT topic through paho-mqtt.

    ``on_change``: publish only when the decided label changes. ``qos``/``retain``: as MQTT defines them.
    ``buffer``: results kept while the broker is unreachable or slow (the oldest go first when it is full, and are
    counted in `dropped`); they are sent, in order, as the broker accepts them. At most ``window`` messages are
    handed to paho at a time, so its own queue never overflows. The client retries the broker every
    ``reconnect_s`` seconds at most; ``<topic>/status`` holds a retained "online", and "offline" as the last will.
    ``on_event`` hears of disconnects, reconnects and problems (each reason once). ``discovery``
    (edgecls.sinks.hass.Discovery) publishes Home Assistant MQTT discovery configs, retained, on every connection and
    whenever Home Assistant announces that it started.

    Counters: `written` (results given to it, after ``on_change``), `sent` (published; for QoS 1 and 2,
    acknowledged by the broker), `dropped` (evicted from the full buffer), `lost` (QoS 0 messages that were on the
    wire when the connection broke), `unsent` (still waiting when the sink closed). `close` raises SinkError when
    the sink delivered nothing (`delivery_problem` says why).
    """

    def __init__(
        self,
        url: str,
        *,
        on_change: bool = False,
        qos: int = 0,
        retain: bool = False,
        buffer: int = 1000,
        window: int = 100,
        reconnect_s: float = 1.0,
        client_id: str | None = None,
        keepalive: int = 30,
        on_event: Callable[[StreamEvent], None] | None = None,
        discovery: Any = None,
    ) -> None:
        if qos not in (0, 1, 2):
            raise ConfigError(f"MQTT QoS must be 0, 1 or 2 (received {qos})")
        if buffer < 1 or window < 1:
            raise ConfigError(f"MQTT buffer and window must be at least 1 (received {buffer}, {window})")
        self._client, self.host, self.port, self.topic, self._user = _client(url, client_id or _client_id(""))
        self.url = _clip(mask_url(url))  # for messages: never the password, and never 65 kB of topic
        self.on_change, self.qos, self.retain, self.window = on_change, qos, retain, window
        self.on_event = on_event
        self.discovery = discovery
        self.written = self.sent = self.dropped = self.lost = self.unsent = 0
        self.last_error: str | None = None  # why the sink is not connected, when the broker said (or did) so
        self._pending: collections.deque[bytes] = collections.deque()
        self._buffer = buffer
        self._inflight: collections.deque[tuple[Any, bytes]] = collections.deque()
        self._handing = 0  # taken from _pending by the sender and not yet in _inflight (paho is being handed it)
        self._cond = threading.Condition()
        self._connected = False
        self._ever_connected = False
        self._closing = False
        # what happened to the connection attempts, for `delivery_problem`
        self._refused_now = False  # the last attempt got a refusal (paho reports its disconnect next)
        self._up = False  # paho's view: acknowledged by the broker and not lost since (`_connected` may drop first)
        self._connect_failures = self._connections_lost = 0
        # connections lost in a row with results on the way and none acknowledged: the broker refuses what is sent
        self._stuck = 0
        self._sent_at_connect = 0
        self._told: set[str] = set()
        self._configure_client(reconnect_s, window)
        self._start(keepalive)

    def _configure_client(self, reconnect_s: float, window: int) -> None:
        """paho's client set up for this sink: the last will, the reconnect pace, no queue of its own beyond
        ``window`` messages in flight, and this sink's callbacks."""
        mqtt = _import_paho()
        self._ok, self._no_conn = mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN
        self._client.will_set(self.status_topic, "offline", qos=1, retain=True)
        # paho doubles the delay from min to max; a short max makes the reconnect follow the broker within reconnect_s
        self._client.reconnect_delay_set(min_delay=min(0.25, reconnect_s), max_delay=reconnect_s)  # type: ignore[arg-type]
        self._client.connect_timeout = 3.0
        self._client.max_queued_messages_set(0)  # unbounded in paho: our window bounds what it holds
        self._client.max_inflight_messages_set(window)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    def _start(self, keepalive: int) -> None:
        """paho's thread, which connects (and reconnects after every loss), and the thread that hands it results."""
        try:
            self._client.connect_async(self.host, self.port, keepalive)
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot connect to MQTT broker {self.host}:{self.port} ({exc})") from None
        self._client.loop_start()  # its thread connects, and reconnects after every loss
        self._sender = threading.Thread(target=self._send_loop, name="edgecls-mqtt-send", daemon=True)
        self._sender.start()

    @property
    def status_topic(self) -> str:
        return status_topic_for(self.topic)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        """Results not yet accepted by the broker (buffered or in flight)."""
        with self._cond:
            return len(self._pending) + len(self._inflight) + self._handing

    @property
    def overflowed(self) -> int:  # the name before `dropped`
        return self.dropped

    def write(self, result: StreamResult) -> None:
        if self.on_change and not result.decision.changed:
            return
        payload = json.dumps(result.to_dict()).encode()
        with self._cond:
            self.written += 1
            if len(self._pending) >= self._buffer:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(payload)
            self._cond.notify_all()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the broker connection (results are buffered meanwhile either way); it ends
        early when the broker refuses the connection or closes it unacknowledged (`last_error` says which)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._connected and self.last_error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._connected

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until everything buffered has been accepted; True when it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._inflight or self._handing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
                self._retire_locked()
            return True

    def delivery_problem(self) -> str | None:
        """Why this sink delivered nothing, or None when it did deliver (or had no result to deliver and reached
        the broker): the broker refused the login, closed every connection before acknowledging it, acknowledged
        none of the results, or could not be reached."""
        with self._cond:
            self._retire_locked()
            if self._ever_connected:
                if self.written == 0 or self.sent > 0:
                    return None
                why = f"the broker acknowledged none of the results on {_shown(self.topic)}"
                if self._connections_lost:
                    why += (
                        f"; it closed the connection {self._connections_lost} time(s) while they were sent: it may "
                        "refuse this topic or messages this large (see its log)"
                    )
                return why
            if self.last_error is not None:
                return self.last_error
        if self._connect_failures:
            return (
                f"could not connect to {self.host}:{self.port} (is the broker running there, and the host and port "
                "right?)"
            )
        return f"{self.host}:{self.port} did not acknowledge the connection (is it an MQTT broker? TLS needs mqtts://)"

    def close(self, timeout: float = 2.0) -> None:
        """Send what is buffered (up to ``timeout`` s while the broker is connected; a broker that is down gets
        0.2 s to come back), publish "offline", then disconnect. Returns within about ``timeout`` + 0.5 s, and
        within half a second when the broker is down. Raises SinkError when the sink delivered nothing, saying
        why; results lost in part are a logged warning."""
        if self._closing:
            return
        self.flush(timeout if self._connected else min(timeout, 0.2))
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self.unsent = len(self._pending) + len(self._inflight) + self._handing
            connected = self._connected
        self._sender.join(0.2)
        if connected:
            try:
                self._client.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(0.3)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        # loop_stop joins paho's thread, which may sit in a reconnect wait or a connect timeout: bound the wait
        stopper = threading.Thread(target=self._client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(0.3 if connected else 0.05)  # paho's thread is a daemon: one in a reconnect wait ends by itself
        problem = self.delivery_problem()
        if problem is not None:
            raise SinkError(f"nothing delivered ({self.written} result(s) not sent): {problem}")
        if self.unsent or self.dropped or self.lost:
            log.warning(
                "MQTT %s:%d: %d result(s) sent, %d not sent (%d dropped from the full buffer, %d lost in a "
                "disconnect, %d still waiting at the stop)",
                self.host,
                self.port,
                self.sent,
                self.dropped + self.lost + self.unsent,
                self.dropped,
                self.lost,
                self.unsent,
            )

    # -- the sender thread: hands buffered results to paho while connected, at most `window` in flight ----------

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not (
                    self._connected and self._pending and len(self._inflight) < self.window
                ):
                    self._cond.wait(0.05)
                    self._retire_locked()
                if self._closing:
                    return
                payload = self._pending.popleft()
                self._handing = 1
            try:
                info = self._client.publish(self.topic, payload, qos=self.qos, retain=self.retain)
            except (ValueError, RuntimeError) as exc:  # cannot happen for a checked topic; never kill the thread
                with self._cond:
                    self._handing = 0
                    self._cond.notify_all()
                self._event("sink-error", f"MQTT publish failed: {exc}")
                continue
            with self._cond:
                self._handing = 0
                if info.rc == self._no_conn and self.qos == 0:  # the connection dropped under us: keep it
                    self._pending.appendleft(payload)
                    self._connected = False
                else:  # sent, or (QoS 1/2) queued in paho, which sends it again after a reconnect
                    self._inflight.append((info, payload))
                self._retire_locked()

    def _retire_locked(self) -> None:
        changed = False
        # paho marks a message published when it has left (QoS 0) or is acknowledged (QoS 1, 2); is_published()
        # raises for a QoS 1 message first queued without a connection, which paho still delivers later
        while self._inflight and getattr(self._inflight[0][0], "_published", True):
            info, _ = self._inflight.popleft()
            if self.qos > 0 or info.rc == self._ok:
                self.sent += 1
            else:  # QoS 0 that was on the wire when the connection broke
                self.lost += 1
            changed = True
        if changed:
            self._cond.notify_all()

    # -- paho callbacks (its network thread; never call paho while holding our lock) -------------------------

    def _on_publish(self, client: Any, userdata: Any, mid: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._cond.notify_all()  # the sender retires what is published

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self._trouble(refusal(self.host, self.port, reason_code, self._user), refused=True)
            return
        client.publish(self.status_topic, "online", qos=1, retain=True)
        if self.discovery is not None:
            from edgecls.sinks.hass import birth_topic

            self._publish_discovery(client)
            client.subscribe(birth_topic(self.discovery), qos=1)
        with self._cond:  # all at once: a reader woken by the notify sees every one of them
            kind = "sink-reconnected" if self._ever_connected else "sink-connected"
            self._connected = self._up = self._ever_connected = True
            self.last_error = None
            self._retire_locked()
            self._sent_at_connect = self.sent
            self._cond.notify_all()
        if self._stuck <= 1:  # past that, the broker keeps dropping what is sent: one line said so
            self._event(kind, f"MQTT connected to {self.host}:{self.port}")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._connect_failures += 1  # no TCP connection (nothing listens, no route, a timeout): paho tries again

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # Home Assistant said "online" on its birth topic (it started again): it wants the configs once more
        if self.discovery is not None and message.payload == b"online":
            self._publish_discovery(client)

    def _publish_discovery(self, client: Any) -> None:
        from edgecls.sinks.hass import discovery_messages

        for topic, payload in discovery_messages(self.discovery, self.topic, self.status_topic):
            client.publish(topic, payload, qos=1, retain=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            was, self._up = self._up, False
            self._connected = False
            refused, self._refused_now = self._refused_now, False
            if was and not self._closing:
                self._connections_lost += 1
                self._retire_locked()
                on_the_way = bool(self._inflight or self._pending)
                self._stuck = self._stuck + 1 if on_the_way and self.sent == self._sent_at_connect else 0
        if was and not self._closing:
            if self._stuck <= 1:
                self._event("sink-disconnected", f"MQTT lost {self.host}:{self.port} ({reason_code}); reconnecting")
            elif self._stuck == 3:
                self._trouble(
                    f"MQTT broker {self.host}:{self.port} keeps closing the connection while results are "
                    f"sent, none acknowledged: it may refuse the topic {_shown(self.topic)} or messages this "
                    "large; see the broker's log"
                )
        elif not was and not refused and not self._closing and not self._stuck:  # (stuck: said already)
            if getattr(reason_code, "value", None) == KEEPALIVE_TIMEOUT:  # paho gave up waiting for an answer
                self._trouble(
                    f"{self.host}:{self.port} did not acknowledge the connection in {client.keepalive} s "
                    "(is it an MQTT broker? TLS needs mqtts://)"
                )
            else:  # the connection was made and closed again with no answer to it: the broker refuses something
                self._trouble(
                    f"MQTT broker {self.host}:{self.port} closed the connection before acknowledging it: "
                    f"it refuses something in it, such as the last will's topic {_shown(self.status_topic)} "
                    "or the protocol (TLS needs mqtts://); see the broker's log"
                )

    def _trouble(self, reason: str, *, refused: bool = False) -> None:
        """The broker would not take the connection: remember why (for `wait_connected` and `delivery_problem`),
        and tell ``on_event`` once per reason."""
        with self._cond:
            self.last_error = reason
            self._refused_now = refused
            first = reason not in self._told
            self._told.add(reason)
            self._cond.notify_all()
        if first:
            self._event("sink-error", f"{reason}; results wait in the buffer and the sink tries again")

    def _event(self, kind: str, message: str) -> None:
        log.info("%s: %s", kind, message)
        if self.on_event is not None:
            self.on_event(StreamEvent(kind, message, time.time()))


# -- clearing what a sink left retained ------------------------------------------------------------------------------


def retained_topics(topic: str, *, discovery: Any = None, results: bool = False) -> list[str]:
    """The topics on which a sink publishing on ``topic`` leaves retained messages, in the order to clear them:
    the Home Assistant discovery configs of ``discovery`` (edgecls.sinks.hass.Discovery; the entities go first, so Home
    Assistant never reads an empty state), its ``<topic>/status``, and ``topic`` itself when the results were
    published retained (``results``)."""
    topics = []
    if discovery is not None:
        from edgecls.sinks.hass import discovery_messages

        topics += [config for config, _ in discovery_messages(discovery, topic, status_topic_for(topic))]
    topics.append(status_topic_for(topic))
    if results:
        topics.append(topic)
    return topics


def clear_retained(url: str, *, discovery: Any = None, results: bool = False, timeout: float = 5.0) -> list[str]:
    """Take off the broker what a sink on ``url`` left retained (see `retained_topics`): an empty retained message
    on each topic, which is how MQTT deletes one; Home Assistant then removes the device. Returns the topics cleared.

    Raises SinkError, saying why and that nothing (or what) was not cleared, when the broker cannot be reached,
    refuses the login or does not acknowledge within ``timeout`` seconds."""
    client, host, port, topic, user = _client(url, _client_id("clear-"))
    topics = retained_topics(topic, discovery=discovery, results=results)
    answer: dict[str, Any] = {}
    answered = threading.Event()

    def on_connect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        answer["reason"] = reason_code
        answered.set()

    def on_disconnect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        answered.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.connect_timeout = timeout
    deadline = time.monotonic() + timeout
    try:
        client.connect(host, port, keepalive=max(5, int(timeout) + 1))
    except (OSError, ValueError) as exc:
        raise SinkError(
            f"could not connect to MQTT broker {host}:{port} ({_describe(exc)}); nothing was cleared"
        ) from None
    client.loop_start()
    try:
        if not answered.wait(max(0.0, deadline - time.monotonic())):
            raise SinkError(
                f"MQTT broker {host}:{port} did not acknowledge the connection in {timeout:g} s; nothing was cleared"
            )
        reason = answer.get("reason")
        if reason is None:
            raise SinkError(
                f"MQTT broker {host}:{port} closed the connection before acknowledging it; nothing was cleared"
            )
        if getattr(reason, "is_failure", False):
            raise SinkError(refusal(host, port, reason, user) + "; nothing was cleared")
        infos = [(t, client.publish(t, b"", qos=1, retain=True)) for t in topics]
        for _, info in infos:
            try:
                info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                break
        left = [t for t, info in infos if not _acknowledged(info)]
        if left:
            raise SinkError(
                f"MQTT broker {host}:{port} acknowledged {len(topics) - len(left)} of {len(topics)} "
                f"clearing messages in {timeout:g} s; not cleared: {', '.join(map(_shown, left))}"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    return topics


def _acknowledged(info: Any) -> bool:
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):  # never queued: the connection had gone
        return False


def _describe(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__
