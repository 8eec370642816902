"""Helpers shared by the interop tests.

Two kinds of client live here:

* `Client`: a paho-mqtt 2.x client whose calls wait for the broker's answer (CONNACK, SUBACK,
  PUBACK/PUBCOMP) and whose received messages land in a queue, so tests read top to bottom
  without callbacks. It resolves server->client topic aliases itself (paho does not).
* `RawConn`: a plain TCP socket plus hand-built packets (`connect_packet`, `publish_packet`, ...)
  for malformed input and for exact wire values (CONNACK return codes, DISCONNECT reasons) that
  paho hides or refuses to send.

Every wait is bounded by `TIMEOUT` (or a shorter argument); nothing sleeps a fixed long time.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

# "roost" (the default and CI) or "mosquitto" (reference run to check the tests themselves).
BROKER_KIND = os.environ.get("INTEROP_BROKER", "roost")

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
VERSIONS = [V311, V5]
VERSION_IDS = ["v311", "v5"]

# Upper bound for anything that should happen "now" on a loopback broker.
TIMEOUT = 5.0

# After a client's DISCONNECT, how long to let the broker process it before the test acts on
# another connection. The broker serves each connection in its own task, so a CONNECT or
# PUBLISH on another socket can otherwise overtake the DISCONNECT (seen with Roost: a
# reconnect racing a session-expiry-0 DISCONNECT found the old session still present).
DISCONNECT_SETTLE = 0.2


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT, interval: float = 0.02,
               what: str = "condition"):
    """Polls `predicate` until it returns something truthy; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def props(packet_type: int, **values) -> Properties:
    """`props(PacketTypes.PUBLISH, MessageExpiryInterval=60)`; a list value for UserProperty."""
    p = Properties(packet_type)
    for name, value in values.items():
        if name == "UserProperty":
            for pair in value:
                p.UserProperty = pair
        else:
            setattr(p, name, value)
    return p


def reason_code(packet_type: int, value: int) -> ReasonCode:
    return ReasonCode(packet_type, identifier=value)


def rc_int(rc) -> int:
    """paho hands out ReasonCode objects, ints or enums depending on the path; normalise."""
    if rc is None:
        return -1
    if isinstance(rc, ReasonCode):
        return rc.value
    return int(rc)


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None
    # TopicAlias carried by the PUBLISH on the wire (None when the server used none).
    alias: int | None = None

    def prop(self, name: str, default=None):
        if self.properties is None:
            return default
        return getattr(self.properties, name, default)


class Client:
    """A paho client that connects on construction (unless `connect=False`) and waits.

    `version` is `V311` or `V5`. `clean` is clean_session (3.1.1) or clean_start (5.0).
    `session_expiry` (v5) goes into CONNECT properties. `will` is a dict for `will_set`.
    """

    def __init__(self, host: str, port: int, client_id: str = "", version: int = V5, *,
                 clean: bool = True, session_expiry: int | None = None, keepalive: int = 30,
                 will: dict | None = None, connect_props: dict | None = None,
                 connect: bool = True, expect_rc: int | None = 0,
                 transport: str = "tcp", ws_path: str = "/mqtt", tls: dict | None = None,
                 username: str | None = None, password: str | bytes | None = None):
        self.host, self.port = host, port
        self.client_id = client_id
        self.version = version
        self.clean = clean
        self.keepalive = keepalive
        self.session_expiry = session_expiry
        self.connect_props = dict(connect_props or {})
        self.messages: queue.Queue[Msg] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack_rc: int | None = None
        self.session_present: bool | None = None
        self.connack_props: Properties | None = None
        self.disconnect_rc: int | None = None
        self.disconnect_props: Properties | None = None
        self._acks: dict[int, tuple[object, Properties | None]] = {}
        self._acked = threading.Condition()
        self._aliases: dict[int, str] = {}
        self._closed = False

        kwargs = {}
        if version == V311:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=version, reconnect_on_failure=False, transport=transport,
                             **kwargs)
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        if tls is not None:
            # {"ca": path, "cert": path, "key": path}; cert/key optional.
            self.c.tls_set(ca_certs=str(tls["ca"]),
                           certfile=str(tls["cert"]) if tls.get("cert") else None,
                           keyfile=str(tls["key"]) if tls.get("key") else None)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_ack
        self.c.on_unsubscribe = self._on_ack
        self.c.on_publish = self._on_publish
        if will:
            self.c.will_set(will["topic"], will.get("payload", b"will"), will.get("qos", 0),
                            will.get("retain", False), will.get("properties"))
        if connect:
            self.connect(expect_rc=expect_rc)

    # ---- callbacks (network thread) ----

    def _on_connect(self, client, userdata, flags, rc, properties):
        self.connack_rc = rc_int(rc)
        self.session_present = bool(flags.session_present)
        self.connack_props = properties
        self._aliases.clear()
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, rc, properties):
        self.disconnect_rc = rc_int(rc)
        self.disconnect_props = properties
        self.connected.clear()
        self.disconnected.set()

    def _on_message(self, client, userdata, message):
        p = message.properties if self.version == V5 else None
        topic = message.topic
        alias = getattr(p, "TopicAlias", None) if p is not None else None
        if alias is not None:
            # [MQTT-3.3.2-12]: a non-empty topic (re)binds the alias; an empty one uses it.
            if topic:
                self._aliases[alias] = topic
            else:
                topic = self._aliases.get(alias, f"<unknown alias {alias}>")
        self.messages.put(Msg(topic, bytes(message.payload), message.qos, bool(message.retain),
                              p, alias))

    def _on_ack(self, client, userdata, mid, rc_list, properties):
        with self._acked:
            self._acks[mid] = (rc_list, properties)
            self._acked.notify_all()

    def _on_publish(self, client, userdata, mid, rc, properties):
        with self._acked:
            self._acks[mid] = (rc, properties)
            self._acked.notify_all()

    def _wait_ack(self, mid: int, timeout: float, what: str):
        with self._acked:
            ok = self._acked.wait_for(lambda: mid in self._acks, timeout)
            if not ok:
                raise AssertionError(f"{self.client_id!r}: no {what} for mid {mid} "
                                     f"within {timeout}s")
            return self._acks.pop(mid)

    # ---- connection ----

    def connect(self, expect_rc: int | None = 0, timeout: float = TIMEOUT, clean: bool | None = None):
        """Connects and waits for CONNACK. Returns the CONNACK reason code (v3: 0 or paho's
        mapping of the return code; use RawConn for exact v3 return codes)."""
        if clean is not None:
            self.clean = clean
            if self.version == V311:
                self.c._clean_session = clean
        self.connected.clear()
        self.disconnected.clear()
        self.connack_rc = None
        kwargs = {}
        if self.version == V5:
            values = dict(self.connect_props)
            if self.session_expiry is not None:
                values["SessionExpiryInterval"] = self.session_expiry
            kwargs["clean_start"] = self.clean
            if values:
                kwargs["properties"] = props(PacketTypes.CONNECT, **values)
        self.c.connect(self.host, self.port, keepalive=self.keepalive, **kwargs)
        self.c.loop_start()
        wait_until(lambda: self.connack_rc is not None or self.disconnected.is_set(), timeout,
                   what=f"CONNACK for {self.client_id!r}")
        if expect_rc is not None:
            assert self.connack_rc == expect_rc, (
                f"{self.client_id!r}: CONNACK reason {self.connack_rc}, expected {expect_rc}")
        return self.connack_rc

    def disconnect(self, reason: int | None = None, properties: Properties | None = None,
                   timeout: float = TIMEOUT, settle: float = DISCONNECT_SETTLE):
        """Normal disconnect (sends DISCONNECT), optionally with a v5 reason code; then gives
        the broker `settle` seconds to process it (see DISCONNECT_SETTLE)."""
        rc = reason_code(PacketTypes.DISCONNECT, reason) if reason is not None else None
        self.c.disconnect(reasoncode=rc, properties=properties)
        self.disconnected.wait(timeout)
        self.c.loop_stop()
        if settle:
            time.sleep(settle)

    def drop(self):
        """Abrupt disconnect: stop paho's thread and close the socket without DISCONNECT."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def freeze(self):
        """Stops the network loop without touching the socket: no more PINGREQs are sent
        and nothing is read, as if the client hung."""
        self.c.loop_stop()

    def wait_disconnected(self, timeout: float = TIMEOUT) -> int:
        assert self.disconnected.wait(timeout), f"{self.client_id!r} was not disconnected"
        return self.disconnect_rc

    def close(self):
        """Best-effort cleanup for fixture teardown."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.c.is_connected():
                self.c.disconnect()
        except Exception:
            pass
        try:
            self.c.loop_stop()
        except Exception:
            pass
        try:
            sock = self.c.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass

    # ---- operations ----

    def subscribe(self, topic: str, qos: int = 0, *, no_local: bool = False,
                  retain_as_published: bool = False, retain_handling: int = 0,
                  properties: Properties | None = None, timeout: float = TIMEOUT) -> list[int]:
        """Subscribes and waits for SUBACK; returns the granted QoS / reason codes."""
        if self.version == V5:
            opts = SubscribeOptions(qos=qos, noLocal=no_local,
                                    retainAsPublished=retain_as_published,
                                    retainHandling=retain_handling)
            result, mid = self.c.subscribe(topic, options=opts, properties=properties)
        else:
            result, mid = self.c.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        rcs, _ = self._wait_ack(mid, timeout, "SUBACK")
        return [rc_int(rc) for rc in rcs]

    def unsubscribe(self, topic: str, timeout: float = TIMEOUT):
        result, mid = self.c.unsubscribe(topic)
        assert result == mqtt.MQTT_ERR_SUCCESS
        self._wait_ack(mid, timeout, "UNSUBACK")

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False,
                properties: Properties | None = None, wait: bool = True,
                timeout: float = TIMEOUT) -> int | None:
        """Publishes; for QoS>0 waits for PUBACK/PUBCOMP and returns its reason code (v5) or
        0 (3.1.1). QoS 0 returns None once paho has written the packet."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        if not wait:
            return None
        if qos == 0:
            info.wait_for_publish(timeout)
            return None
        rc, _ = self._wait_ack(info.mid, timeout, "PUBACK/PUBCOMP")
        return rc_int(rc)

    def get(self, timeout: float = TIMEOUT) -> Msg:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id!r}: no message within {timeout}s") from None

    def get_n(self, n: int, timeout: float = TIMEOUT) -> list[Msg]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id!r}: got {len(out)} of {n} messages within {timeout}s: "
                    f"{[(m.topic, m.payload) for m in out]}") from None
        return out

    def get_topic(self, topic: str, timeout: float = TIMEOUT) -> Msg:
        """Next message on `topic`, skipping others (e.g. other $SYS topics)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                m = self.messages.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(f"{self.client_id!r}: nothing on {topic!r} within "
                                     f"{timeout}s") from None
            if m.topic == topic:
                return m

    def expect_nothing(self, duration: float = 0.5):
        """Asserts no message arrives within `duration` seconds."""
        try:
            m = self.messages.get(timeout=duration)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id!r}: unexpected message {m.topic!r} {m.payload!r}")

    def drain(self, settle: float = 0.0) -> list[Msg]:
        if settle:
            time.sleep(settle)
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out


# ---------------------------------------------------------------------------------------------
# Raw packets
# ---------------------------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8, 9, 10, 11, 12, 13, 14, 15)

# v5 property identifiers used by the raw tests.
PROP_PAYLOAD_FORMAT = 0x01
PROP_MESSAGE_EXPIRY = 0x02
PROP_SESSION_EXPIRY = 0x11
PROP_TOPIC_ALIAS = 0x23
PROP_MAX_PACKET_SIZE = 0x27
PROP_USER = 0x26


def vbi(n: int) -> bytes:
    """Variable Byte Integer [MQTT 1.5.5]."""
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def read_vbi(buf: bytes, pos: int = 0) -> tuple[int, int]:
    value, mult = 0, 1
    while True:
        byte = buf[pos]
        pos += 1
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, pos
        mult *= 128


def mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def prop(ident: int, value: bytes) -> bytes:
    return vbi(ident) + value


def props_block(*encoded: bytes) -> bytes:
    body = b"".join(encoded)
    return vbi(len(body)) + body


def fixed(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + vbi(len(body)) + body


def connect_packet(client_id: str | bytes = "", version: int = 5, *, clean: bool = True,
                   keepalive: int = 60, will: dict | None = None, properties: bytes = b"",
                   proto_name: bytes = b"MQTT") -> bytes:
    """CONNECT. `version` is the protocol level on the wire (4 = 3.1.1, 5 = 5.0, anything else
    for negative tests). `will` = {topic, payload, qos, retain, properties(bytes)}."""
    flags = 0x02 if clean else 0
    payload = mqtt_str(client_id)
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
        if version == 5:
            payload += props_block(will.get("properties", b""))
        payload += mqtt_str(will["topic"]) + mqtt_str(will.get("payload", b"will"))
    var = mqtt_str(proto_name) + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        var += props_block(properties)
    return fixed(CONNECT, 0, var + payload)


def publish_packet(topic: str | bytes, payload: bytes = b"", *, qos: int = 0, pid: int = 1,
                   retain: bool = False, dup: bool = False, version: int = 5,
                   properties: bytes = b"", flags: int | None = None) -> bytes:
    if flags is None:
        flags = (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    var = mqtt_str(topic)
    if (flags >> 1) & 3:
        var += struct.pack("!H", pid)
    if version == 5:
        var += props_block(properties)
    return fixed(PUBLISH, flags, var + payload)


def subscribe_packet(pid: int, filters: Iterable[tuple[str | bytes, int]], *, version: int = 5,
                     properties: bytes = b"", flags: int = 0x02) -> bytes:
    body = struct.pack("!H", pid)
    if version == 5:
        body += props_block(properties)
    for topic, opts in filters:
        body += mqtt_str(topic) + bytes([opts])
    return fixed(SUBSCRIBE, flags, body)


def disconnect_packet(reason: int | None = None, version: int = 5) -> bytes:
    if version == 5 and reason is not None:
        return fixed(DISCONNECT, 0, bytes([reason, 0]))
    return fixed(DISCONNECT, 0, b"")


@dataclass
class Packet:
    ptype: int
    flags: int
    body: bytes = field(repr=False)

    def reason(self) -> int:
        """Reason code of a v5 DISCONNECT (0 when the body is empty, [MQTT-3.14.2.1])."""
        return self.body[0] if self.body else 0

    def __repr__(self):
        return f"Packet(type={self.ptype}, flags={self.flags:#x}, body={self.body[:32].hex()})"


class RawConn:
    """A TCP connection speaking hand-built MQTT."""

    def __init__(self, host: str, port: int, timeout: float = TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Reads more bytes; False on EOF or reset."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_packet(self, timeout: float = TIMEOUT) -> Packet | None:
        """Next packet, or None when the server closed the connection. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = read_vbi(self.buf, 1)
                except IndexError:
                    length, pos = None, 0
                if length is not None and len(self.buf) >= pos + length:
                    first = self.buf[0]
                    body = self.buf[pos:pos + length]
                    self.buf = self.buf[pos + length:]
                    return Packet(first >> 4, first & 0x0F, body)
            if self.eof or not self._fill(deadline):
                return None

    def connect(self, client_id: str = "", version: int = 5, **kw) -> Packet:
        """Sends CONNECT and returns the CONNACK (asserting one arrives)."""
        self.send(connect_packet(client_id, version, **kw))
        p = self.read_packet()
        assert p is not None and p.ptype == CONNACK, f"expected CONNACK, got {p}"
        return p

    def packets_until_close(self, timeout: float = TIMEOUT) -> list[Packet]:
        """Reads until the server closes the connection; asserts it does within `timeout`."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            try:
                p = self.read_packet(max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise AssertionError(f"connection still open after {timeout}s; got {out}") from None
            if p is None:
                return out
            out.append(p)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connack_rc(p: Packet) -> int:
    """Return code (3.1.1) or reason code (5.0) of a CONNACK: the second byte of its body."""
    return p.body[1]
