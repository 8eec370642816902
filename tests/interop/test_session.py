"""Sessions: persistence across reconnects, offline queue bounds, message and session expiry,
session takeover and keep-alive enforcement."""

import struct
import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from helpers import (BROKER_KIND, CONNACK, DISCONNECT, PROP_SESSION_EXPIRY, SUBACK, V5, V311,
                     VERSION_IDS, VERSIONS, connack_rc, disconnect_packet, prop, props,
                     subscribe_packet, wait_until)


def persistent(broker, version, client_id="persist", **kw):
    """A client with a session that outlives its connection (clean_session=0 / clean_start=0 +
    session expiry 60 s)."""
    if version == V5:
        kw.setdefault("session_expiry", 60)
    return broker.client(client_id, version, clean=False, **kw)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_persistent_session_queues_while_offline(broker, version):
    c = persistent(broker, version)
    assert c.session_present is False
    c.subscribe("ps/t", 1)
    c.disconnect()

    pub = broker.client("pub", version)
    for i in range(5):
        pub.publish("ps/t", f"m{i}", qos=1)
    pub.publish("ps/t", b"q0", qos=0)  # QoS 0 may or may not be queued; not asserted

    c2 = persistent(broker, version)
    assert c2.session_present is True
    got = [m.payload for m in c2.get_n(5) if m.qos == 1]
    assert got == [f"m{i}".encode() for i in range(5)]
    # The subscription survived too: new messages arrive live (after the optional QoS 0 one).
    pub.publish("ps/t", b"live", qos=1)
    m = c2.get()
    if m.payload == b"q0":
        m = c2.get()
    assert m.payload == b"live"


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_clean_session_discards_state(broker, version):
    c = persistent(broker, version)
    c.subscribe("ps/t", 1)
    c.disconnect()
    fresh = broker.client("persist", version, clean=True)
    assert fresh.session_present is False
    broker.client("pub", version).publish("ps/t", b"x", qos=1)
    fresh.expect_nothing(0.5)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_offline_queue_bound_drops(broker_factory, version):
    """With a bound of 3, five messages to an offline session leave 3 (which 3 depends on the
    drop policy: see the roost_only test below). Mosquitto keeps its in-flight window apart
    from the queue even for an offline client, hence `max_inflight=1` and `<= 4` there."""
    extra = {} if BROKER_KIND == "roost" else {"max_inflight": 1}
    broker = broker_factory(max_queued_messages=3, **extra)
    c = persistent(broker, version)
    c.subscribe("qb/t", 1)
    c.disconnect()
    before = broker.metrics().get("roost_session_queue_dropped_total", 0) if broker.is_roost else 0
    pub = broker.client("pub", version)
    for i in range(5):
        pub.publish("qb/t", str(i), qos=1)
    c2 = persistent(broker, version)
    got = [c2.get().payload] + [m.payload for m in c2.drain(0.7)]
    if broker.is_roost:
        assert len(got) == 3, got
        wait_until(lambda: broker.metrics().get("roost_session_queue_dropped_total", 0)
                   >= before + 2, 2.0, what="roost_session_queue_dropped_total to grow by 2")
    else:
        assert 3 <= len(got) <= 4, got
        assert got == sorted(got)


@pytest.mark.roost_only
@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize("drop,expected", [("oldest", [b"2", b"3", b"4"]),
                                           ("newest", [b"0", b"1", b"2"])])
def test_offline_queue_drop_policy(broker_factory, version, drop, expected):
    broker = broker_factory(max_queued_messages=3, queue_drop=drop)
    c = persistent(broker, version)
    c.subscribe("qb/t", 1)
    c.disconnect()
    pub = broker.client("pub", version)
    for i in range(5):
        pub.publish("qb/t", str(i), qos=1)
    c2 = persistent(broker, version)
    assert [m.payload for m in c2.get_n(3)] == expected
    c2.expect_nothing(0.5)
    assert broker.metrics()["roost_session_queue_dropped_total"] >= 2


def test_v5_message_expiry_while_queued(broker):
    c = persistent(broker, V5)
    c.subscribe("me/t", 1)
    c.disconnect()
    pub = broker.client("pub", V5)
    pub.publish("me/t", b"short", qos=1,
                properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
    pub.publish("me/t", b"long", qos=1,
                properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=60))
    time.sleep(2.5)
    c2 = persistent(broker, V5)
    assert c2.session_present
    m = c2.get()
    assert m.payload == b"long"
    # The forwarded interval is the remaining lifetime [MQTT-3.3.2-6].
    assert 0 < m.prop("MessageExpiryInterval") <= 60
    c2.expect_nothing(0.5)


def test_v5_retained_message_expiry(broker):
    pub = broker.client("pub", V5)
    pub.publish("rme/t", b"gone soon", qos=1, retain=True,
                properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
    time.sleep(2.2)
    sub = broker.client("sub", V5)
    sub.subscribe("rme/t", 1)
    sub.expect_nothing(0.5)


def test_v5_session_expiry(broker):
    c = persistent(broker, V5, session_expiry=1)
    c.subscribe("se/t", 1)
    c.disconnect()
    time.sleep(2.5)
    c2 = persistent(broker, V5, session_expiry=1)
    assert c2.session_present is False
    broker.client("pub", V5).publish("se/t", b"x", qos=1)
    c2.expect_nothing(0.5)


def test_v5_session_expiry_zero_ends_at_disconnect(broker):
    c = broker.client("zero", V5, clean=False, session_expiry=0)
    c.subscribe("se/t", 1)
    c.disconnect()
    c2 = broker.client("zero", V5, clean=False, session_expiry=0)
    assert c2.session_present is False


def test_v5_session_takeover(broker):
    first = persistent(broker, V5, "dup")
    first.subscribe("to/t", 1)
    second = persistent(broker, V5, "dup")
    # [MQTT-3.1.4-3] closes the old connection; 5.0 4.13 / Roost: with DISCONNECT 0x8E Session
    # taken over first. Mosquitto 2.0.11 closes it without a DISCONNECT (paho reports 0x80).
    rc = first.wait_disconnected()
    if broker.is_roost:
        assert rc == 0x8E, f"old connection got reason {rc:#x}"
    assert second.session_present is True
    broker.client("pub", V5).publish("to/t", b"after takeover", qos=1)
    assert second.get().payload == b"after takeover"
    first.expect_nothing(0.3)


def test_v311_session_takeover_closes_old_connection(broker):
    first = persistent(broker, V311, "dup")
    first.subscribe("to/t", 1)
    second = persistent(broker, V311, "dup")
    first.wait_disconnected()
    assert second.session_present is True
    broker.client("pub", V311).publish("to/t", b"x", qos=1)
    assert second.get().payload == b"x"


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_takeover_with_clean_start_drops_subscriptions(broker, version):
    first = persistent(broker, version, "dup")
    first.subscribe("to/t", 1)
    second = broker.client("dup", version, clean=True)
    first.wait_disconnected()
    assert second.session_present is False
    broker.client("pub", version).publish("to/t", b"x", qos=1)
    second.expect_nothing(0.5)


@pytest.mark.parametrize("wire_version", [4, 5], ids=VERSION_IDS)
def test_keep_alive_enforced(broker, wire_version):
    """CONNECT with keep-alive 1 s and then silence: closed after 1.5 s [MQTT-3.1.2-24] (we
    allow up to 3.5 s), and the will is published. Mosquitto 2.0.11 checks keep-alives only
    every few seconds (closes after ~5 s), hence its looser limit."""
    version = V5 if wire_version == 5 else V311
    watcher = broker.client("watcher", version)
    watcher.subscribe("ka/will", 1)
    raw = broker.raw()
    connack = raw.connect("silent", wire_version, keepalive=1,
                          will={"topic": "ka/will", "payload": b"timed out", "qos": 1})
    assert connack.ptype == CONNACK and connack_rc(connack) == 0
    t0 = time.monotonic()
    limit = 3.5 if broker.is_roost else 7.0
    packets = raw.packets_until_close(timeout=limit + 0.5)
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed <= limit, f"closed after {elapsed:.2f}s"
    if wire_version == 5 and packets:
        assert packets[-1].ptype == DISCONNECT and packets[-1].reason() == 0x8D
    assert watcher.get().payload == b"timed out"


def test_keep_alive_paho_frozen_client(broker):
    """Same with paho: a client whose network loop stops sends no PINGREQ and is dropped."""
    watcher = broker.client("watcher", V5)
    watcher.subscribe("ka/will", 1)
    frozen = broker.client("frozen", V5, keepalive=1,
                           will={"topic": "ka/will", "payload": b"frozen"})
    frozen.freeze()
    assert watcher.get(timeout=4.0 if broker.is_roost else 8.0).payload == b"frozen"


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_keep_alive_pings_keep_connection(broker, version):
    c = broker.client("pinger", version, keepalive=1)
    time.sleep(2.5)
    assert c.connected.is_set() and not c.disconnected.is_set()


@pytest.mark.roost_only
@pytest.mark.broker_config(server_keep_alive=2)
def test_v5_server_keep_alive_announced(broker):
    c = broker.client("ka", V5, keepalive=60)
    assert getattr(c.connack_props, "ServerKeepAlive", None) == 2


# ---- issue 7, item 11: sessions a clean start must discard ----------------------------------

def _raw_connect(broker, client_id, wire_version, *, clean, expiry=None):
    """A raw connection past CONNACK; returns it and Session Present."""
    raw = broker.raw()
    properties = b""
    if wire_version == 5 and expiry is not None:
        properties = prop(PROP_SESSION_EXPIRY, struct.pack("!I", expiry))
    ack = raw.connect(client_id, wire_version, clean=clean, properties=properties)
    assert ack.ptype == CONNACK and connack_rc(ack) == 0, ack
    return raw, bool(ack.body[0] & 1)


def _raw_subscribe(raw, topic, wire_version):
    raw.send(subscribe_packet(1, [(topic, 1)], version=wire_version))
    assert raw.read_packet().ptype == SUBACK


@pytest.mark.parametrize("wire_version", [4, 5], ids=["v311", "v5"])
def test_item11_takeover_of_a_session_that_ends_with_its_connection_finds_none(
        broker, wire_version):
    """Issue 7 item 11 (a): a session that ends with its connection (CleanSession=1; v5
    Session Expiry 0) ends when a CleanSession=0 CONNECT takes the connection over: Session
    Present 0 and the old subscription gone [MQTT-3.1.2-6], [MQTT-3.2.2-2]."""
    version = V5 if wire_version == 5 else V311
    old, _ = _raw_connect(broker, "i11a", wire_version, clean=True)
    _raw_subscribe(old, "i11a/t", wire_version)
    new, present = _raw_connect(broker, "i11a", wire_version, clean=False, expiry=60)
    assert present is False, "the session of the connection taken over came back"
    old.packets_until_close()
    broker.client("i11a-pub", version).publish("i11a/t", b"x", qos=1)
    with pytest.raises(TimeoutError):
        new.read_packet(timeout=0.5)


@pytest.mark.parametrize("wire_version", [4, 5], ids=["v311", "v5"])
def test_item11_clean_start_right_after_a_dropped_session_discards_it(broker, wire_version):
    """Issue 7 item 11 (b): CleanSession=0 + SUBSCRIBE t/1, socket dropped; at once
    CleanSession=1 + SUBSCRIBE t/2, closed; then CleanSession=0: the first session is gone
    [MQTT-3.1.2-4] (v5: Clean Start + Session Expiry Interval). The old code brought it back
    (Session Present 1, t/1 delivered) in about 8 of 20 rounds."""
    version = V5 if wire_version == 5 else V311
    pub = broker.client("i11b-pub", version)
    back = []
    for round_ in range(25):
        client_id = f"i11b-{round_}"
        t1, t2 = f"i11b/{round_}/1", f"i11b/{round_}/2"
        first, _ = _raw_connect(broker, client_id, wire_version, clean=False, expiry=60)
        _raw_subscribe(first, t1, wire_version)
        first.close()
        clean, present = _raw_connect(broker, client_id, wire_version, clean=True)
        assert present is False
        _raw_subscribe(clean, t2, wire_version)
        clean.close()
        last, present = _raw_connect(broker, client_id, wire_version, clean=False, expiry=60)
        pub.publish(t1, b"x", qos=1)
        pub.publish(t2, b"x", qos=1)
        try:
            got = last.read_packet(timeout=0.2)
        except TimeoutError:
            got = None
        if present or got is not None:
            back.append(f"round {round_}: session present {present}, got {got}")
        last.send(disconnect_packet(version=wire_version))
        last.close()
        _raw_connect(broker, client_id, wire_version, clean=True)[0].close()
    assert not back, "\n".join(back)
