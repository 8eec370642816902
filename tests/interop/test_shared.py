"""Shared subscriptions ($share/{group}/{filter}, MQTT 5.0 4.8.2)."""

import pytest

from helpers import V5, wait_until


def test_v5_shared_subscription_each_message_once(broker):
    a = broker.client("member-a", V5)
    b = broker.client("member-b", V5)
    assert a.subscribe("$share/g/sh/t", 1) == [1]
    assert b.subscribe("$share/g/sh/t", 1) == [1]
    pub = broker.client("pub", V5)
    for i in range(10):
        pub.publish("sh/t", str(i), qos=1)
    wait_until(lambda: a.messages.qsize() + b.messages.qsize() >= 10, what="10 deliveries")
    got_a = [m.payload for m in a.drain(0.3)]
    got_b = [m.payload for m in b.drain()]
    everything = sorted(int(p) for p in got_a + got_b)
    assert everything == list(range(10)), (got_a, got_b)
    assert got_a and got_b, f"one member got everything: a={got_a} b={got_b}"


def test_v5_shared_subscription_topic_is_the_publish_topic(broker):
    a = broker.client("member-a", V5)
    a.subscribe("$share/g/sh/+", 1)
    broker.client("pub", V5).publish("sh/x", b"1", qos=1)
    m = a.get()
    assert m.topic == "sh/x"


def test_v5_shared_subscription_member_leaves(broker):
    a = broker.client("member-a", V5)
    b = broker.client("member-b", V5)
    a.subscribe("$share/g/sh/t", 1)
    b.subscribe("$share/g/sh/t", 1)
    a.disconnect()
    pub = broker.client("pub", V5)
    for i in range(10):
        pub.publish("sh/t", str(i), qos=1)
    assert sorted(int(m.payload) for m in b.get_n(10)) == list(range(10))


def test_v5_shared_and_normal_subscription_both_receive(broker):
    a = broker.client("member-a", V5)
    a.subscribe("$share/g/sh/t", 1)
    plain = broker.client("plain", V5)
    plain.subscribe("sh/t", 1)
    broker.client("pub", V5).publish("sh/t", b"x", qos=1)
    assert a.get().payload == b"x"
    assert plain.get().payload == b"x"


def test_v5_two_groups_each_get_a_copy(broker):
    a = broker.client("g1", V5)
    a.subscribe("$share/one/sh/t", 1)
    b = broker.client("g2", V5)
    b.subscribe("$share/two/sh/t", 1)
    broker.client("pub", V5).publish("sh/t", b"x", qos=1)
    assert a.get().payload == b"x"
    assert b.get().payload == b"x"


@pytest.mark.mosquitto_deviation("2.0.11 sends retained messages to a new shared subscription")
def test_v5_shared_subscription_no_retained_on_subscribe(broker):
    """Retained messages are not sent when a shared subscription is made (MQTT 5.0 4.8.2)."""
    broker.client("pub", V5).publish("sh/r", b"retained", qos=1, retain=True)
    a = broker.client("member-a", V5)
    a.subscribe("$share/g/sh/r", 1)
    a.expect_nothing(0.5)
