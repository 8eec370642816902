"""Publish/subscribe basics with paho: QoS levels, wildcards, retained messages, v5 subscription
options (retain handling, retain-as-published, no-local), v5 properties and topic aliases."""

import pytest
from paho.mqtt.packettypes import PacketTypes

from helpers import V5, V311, VERSION_IDS, VERSIONS, props

QOS = [0, 1, 2]


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize("sub_qos", QOS, ids=lambda q: f"sub{q}")
@pytest.mark.parametrize("pub_qos", QOS, ids=lambda q: f"pub{q}")
def test_qos_round_trip(broker, version, pub_qos, sub_qos):
    sub = broker.client("sub", version)
    assert sub.subscribe("rt/qos", sub_qos) == [sub_qos]
    pub = broker.client("pub", version)
    rc = pub.publish("rt/qos", b"hello", qos=pub_qos)
    if pub_qos:
        assert rc == 0
    m = sub.get()
    assert (m.topic, m.payload, m.qos, m.retain) == ("rt/qos", b"hello", min(pub_qos, sub_qos),
                                                     False)
    sub.expect_nothing(0.2)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_qos1_many_in_order(broker, version):
    sub = broker.client("sub", version)
    sub.subscribe("order/t", 1)
    pub = broker.client("pub", version)
    for i in range(50):
        pub.publish("order/t", str(i), qos=1, wait=False)
    got = [int(m.payload) for m in sub.get_n(50)]
    assert got == list(range(50))


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_wildcards(broker, version):
    sub = broker.client("sub", version)
    sub.subscribe("w/+/x", 1)
    sub.subscribe("w/deep/#", 1)
    pub = broker.client("pub", version)
    for topic in ["w/a/x", "w/a/y", "w/deep", "w/deep/1/2", "w/a/x/z", "other"]:
        pub.publish(topic, topic, qos=1)
    got = sorted(m.topic for m in sub.get_n(3))
    assert got == ["w/a/x", "w/deep", "w/deep/1/2"]
    sub.expect_nothing(0.3)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_overlapping_subscriptions(broker, version):
    """Overlapping filters: a v5 server sends one copy per matching subscription or one at
    the maximum QoS [MQTT-3.3.4-2]; either way at least one copy at QoS 1 arrives."""
    sub = broker.client("sub", version)
    sub.subscribe("ov/#", 0)
    sub.subscribe("ov/t", 1)
    broker.client("pub", version).publish("ov/t", b"x", qos=1)
    msgs = [sub.get()] + sub.drain(0.3)
    assert 1 <= len(msgs) <= 2
    assert max(m.qos for m in msgs) == 1


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_retained_set_receive_clear(broker, version):
    pub = broker.client("pub", version)
    pub.publish("ret/a", b"kept", qos=1, retain=True)

    sub = broker.client("sub1", version)
    sub.subscribe("ret/#", 1)
    m = sub.get()
    assert (m.topic, m.payload, m.retain, m.qos) == ("ret/a", b"kept", True, 1)

    # A live message to an existing subscription is not flagged retained (3.1.1: [MQTT-3.3.1-9];
    # v5 default retain-as-published = 0).
    pub.publish("ret/a", b"kept2", qos=1, retain=True)
    m = sub.get()
    assert (m.payload, m.retain) == (b"kept2", False)

    # Empty retained payload clears it [MQTT-3.3.1-10]; the clear itself is delivered live.
    pub.publish("ret/a", b"", qos=1, retain=True)
    assert sub.get().payload == b""

    late = broker.client("sub2", version)
    late.subscribe("ret/#", 1)
    late.expect_nothing(0.5)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_retained_qos_downgraded_to_subscription(broker, version):
    broker.client("pub", version).publish("retq/a", b"r", qos=2, retain=True)
    sub = broker.client("sub", version)
    sub.subscribe("retq/a", 0)
    m = sub.get()
    assert (m.payload, m.qos, m.retain) == (b"r", 0, True)


def test_v5_retain_handling_0_sends_on_every_subscribe(broker):
    broker.client("pub", V5).publish("rh/t", b"r", qos=1, retain=True)
    sub = broker.client("sub", V5)
    sub.subscribe("rh/t", 1, retain_handling=0)
    assert sub.get().retain
    sub.subscribe("rh/t", 1, retain_handling=0)
    assert sub.get().payload == b"r"


def test_v5_retain_handling_1_only_for_new_subscription(broker):
    broker.client("pub", V5).publish("rh/t", b"r", qos=1, retain=True)
    sub = broker.client("sub", V5)
    sub.subscribe("rh/t", 1, retain_handling=1)
    assert sub.get().payload == b"r"
    sub.subscribe("rh/t", 1, retain_handling=1)
    sub.expect_nothing(0.5)


def test_v5_retain_handling_2_never(broker):
    broker.client("pub", V5).publish("rh/t", b"r", qos=1, retain=True)
    sub = broker.client("sub", V5)
    sub.subscribe("rh/t", 1, retain_handling=2)
    sub.expect_nothing(0.5)


@pytest.mark.parametrize("rap", [False, True], ids=["rap0", "rap1"])
def test_v5_retain_as_published(broker, rap):
    sub = broker.client("sub", V5)
    sub.subscribe("rap/t", 1, retain_as_published=rap)
    broker.client("pub", V5).publish("rap/t", b"live", qos=1, retain=True)
    m = sub.get()
    assert (m.payload, m.retain) == (b"live", rap)


def test_v5_no_local(broker):
    me = broker.client("me", V5)
    me.subscribe("nl/t", 1, no_local=True)
    me.publish("nl/t", b"mine", qos=1)
    me.expect_nothing(0.5)
    broker.client("other", V5).publish("nl/t", b"theirs", qos=1)
    assert me.get().payload == b"theirs"


def test_v3_own_messages_are_delivered(broker):
    """No no-local in 3.1.1: a client gets its own publishes."""
    me = broker.client("me", V311)
    me.subscribe("nl/t", 1)
    me.publish("nl/t", b"mine", qos=1)
    assert me.get().payload == b"mine"


def test_v5_request_response_properties_forwarded(broker):
    responder = broker.client("responder", V5)
    responder.subscribe("req/t", 1)
    requester = broker.client("requester", V5)
    requester.subscribe("resp/requester", 1)

    requester.publish("req/t", '{"q":1}', qos=1, properties=props(
        PacketTypes.PUBLISH, ResponseTopic="resp/requester", CorrelationData=b"\x00\x01corr",
        UserProperty=[("k1", "v1"), ("k2", "v2"), ("k1", "again")],
        ContentType="application/json", PayloadFormatIndicator=1))
    req = responder.get()
    assert req.payload == b'{"q":1}'
    assert req.prop("ResponseTopic") == "resp/requester"
    assert req.prop("CorrelationData") == b"\x00\x01corr"
    # Order of user properties is preserved [MQTT-3.3.2-18].
    assert req.prop("UserProperty") == [("k1", "v1"), ("k2", "v2"), ("k1", "again")]
    assert req.prop("ContentType") == "application/json"
    assert req.prop("PayloadFormatIndicator") == 1

    responder.publish(req.prop("ResponseTopic"), b"answer", qos=1, properties=props(
        PacketTypes.PUBLISH, CorrelationData=req.prop("CorrelationData")))
    resp = requester.get()
    assert (resp.topic, resp.payload) == ("resp/requester", b"answer")
    assert resp.prop("CorrelationData") == b"\x00\x01corr"


@pytest.mark.broker_config(topic_alias_maximum=10)
def test_v5_topic_alias_client_to_server(broker):
    sub = broker.client("sub", V5)
    sub.subscribe("alias/#", 1)
    pub = broker.client("pub", V5)
    maximum = pub.connack_props and getattr(pub.connack_props, "TopicAliasMaximum", 0)
    if not maximum:
        pytest.skip("server announced TopicAliasMaximum 0")
    pub.publish("alias/one", b"1", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish("", b"2", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    # Re-binding alias 1 to another topic [MQTT-3.3.2-12].
    pub.publish("alias/two", b"3", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish("", b"4", qos=1, properties=props(PacketTypes.PUBLISH, TopicAlias=1))
    got = [(m.topic, m.payload) for m in sub.get_n(4)]
    assert got == [("alias/one", b"1"), ("alias/one", b"2"), ("alias/two", b"3"),
                   ("alias/two", b"4")]
    for m in sub.drain():
        assert m.prop("TopicAlias") is None  # sub announced no alias maximum


@pytest.mark.broker_config(topic_alias_maximum=10)
def test_v5_topic_alias_server_to_client(broker):
    """The client announces TopicAliasMaximum; whether the server uses aliases is its choice,
    but topics must resolve correctly and aliases stay within the announced maximum."""
    sub = broker.client("sub", V5, connect_props={"TopicAliasMaximum": 2})
    sub.subscribe("sa/#", 1)
    pub = broker.client("pub", V5)
    topics = ["sa/a", "sa/b", "sa/c", "sa/a", "sa/b", "sa/a", "sa/c", "sa/c"]
    for i, t in enumerate(topics):
        pub.publish(t, str(i), qos=1)
    got = sub.get_n(len(topics))
    assert [(m.topic, m.payload) for m in got] == [(t, str(i).encode())
                                                   for i, t in enumerate(topics)]
    for m in got:
        assert m.alias is None or 1 <= m.alias <= 2


@pytest.mark.roost_only
@pytest.mark.broker_config(topic_alias_maximum=10)
def test_v5_topic_alias_server_to_client_is_used(broker):
    """Roost sends aliases when the client allows them: repeated topics travel with an empty
    topic name after the first time."""
    sub = broker.client("sub", V5, connect_props={"TopicAliasMaximum": 5})
    sub.subscribe("sa/#", 1)
    pub = broker.client("pub", V5)
    for i in range(3):
        pub.publish("sa/same", str(i), qos=1)
    got = sub.get_n(3)
    assert [m.topic for m in got] == ["sa/same"] * 3
    assert all(m.alias is not None for m in got), [m.alias for m in got]
