"""Will messages: published when the connection ends without DISCONNECT (or with v5 reason
0x04), not after a normal DISCONNECT, and v5 Will Delay Interval."""

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

from helpers import V5, VERSION_IDS, VERSIONS, props


def will(topic="will/t", payload=b"gone", qos=1, retain=False, properties=None):
    return {"topic": topic, "payload": payload, "qos": qos, "retain": retain,
            "properties": properties}


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_will_sent_on_abrupt_disconnect(broker, version):
    watcher = broker.client("watcher", version)
    watcher.subscribe("will/#", 1)
    dying = broker.client("dying", version, will=will())
    dying.drop()
    m = watcher.get()
    assert (m.topic, m.payload, m.qos) == ("will/t", b"gone", 1)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_will_retained(broker, version):
    # The watcher sees the will go out, so the retained copy is stored by then: a subscriber
    # that came before that would get the will live (RETAIN=0), which is not what this tests.
    watcher = broker.client("watcher", version)
    watcher.subscribe("will/#", 1)
    dying = broker.client("dying", version, will=will(retain=True))
    dying.drop()
    assert watcher.get().payload == b"gone"
    late = broker.client("late", version)
    late.subscribe("will/#", 1)
    m = late.get()
    assert (m.payload, m.retain) == (b"gone", True)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_will_not_sent_after_normal_disconnect(broker, version):
    watcher = broker.client("watcher", version)
    watcher.subscribe("will/#", 1)
    leaving = broker.client("leaving", version, will=will())
    leaving.disconnect()
    watcher.expect_nothing(1.0)


def test_v5_will_sent_after_disconnect_with_reason_0x04(broker):
    watcher = broker.client("watcher", V5)
    watcher.subscribe("will/#", 1)
    leaving = broker.client("leaving", V5, will=will())
    leaving.disconnect(reason=0x04)
    assert watcher.get().payload == b"gone"


def test_v5_will_properties_forwarded(broker):
    watcher = broker.client("watcher", V5)
    watcher.subscribe("will/#", 1)
    dying = broker.client("dying", V5, will=will(properties=props(
        PacketTypes.WILLMESSAGE, ContentType="text/plain", UserProperty=[("why", "test")])))
    dying.drop()
    m = watcher.get()
    assert m.prop("ContentType") == "text/plain"
    assert m.prop("UserProperty") == [("why", "test")]


def test_v5_will_delay_not_sent_when_client_reconnects(broker):
    watcher = broker.client("watcher", V5)
    watcher.subscribe("will/#", 1)
    delayed = will(properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=2))
    first = broker.client("delayed", V5, will=delayed, clean=False, session_expiry=60)
    first.drop()
    time.sleep(0.3)
    # Reconnecting with the same id (session kept) cancels the pending will [MQTT-3.1.3-9].
    second = broker.client("delayed", V5, clean=False, session_expiry=60)
    assert second.session_present
    watcher.expect_nothing(3.0)


def test_v5_will_delay_sent_after_delay(broker):
    watcher = broker.client("watcher", V5)
    watcher.subscribe("will/#", 1)
    delayed = will(properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=1))
    dying = broker.client("delayed", V5, will=delayed, session_expiry=60)
    dying.drop()
    t0 = time.monotonic()
    watcher.expect_nothing(0.5)
    m = watcher.get(timeout=4.0)
    assert m.payload == b"gone"
    assert time.monotonic() - t0 >= 0.9


def test_v5_will_sent_at_session_end_if_sooner_than_delay(broker):
    """Will delay 60 s but session expiry 1 s: the will goes out when the session ends
    [MQTT-3.1.2-8]."""
    watcher = broker.client("watcher", V5)
    watcher.subscribe("will/#", 1)
    delayed = will(properties=props(PacketTypes.WILLMESSAGE, WillDelayInterval=60))
    dying = broker.client("delayed", V5, will=delayed, session_expiry=1)
    dying.drop()
    assert watcher.get(timeout=4.0).payload == b"gone"
