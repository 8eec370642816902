"""CONNECT handling: client identifiers, connection limits, shutdown."""

import signal

import pytest

from helpers import V5, V311, connack_rc


def test_v5_empty_client_id_gets_assigned_identifier(broker):
    c = broker.client("", V5)
    assigned = getattr(c.connack_props, "AssignedClientIdentifier", None)
    assert assigned, "no AssignedClientIdentifier in CONNACK [MQTT-3.2.2-16]"
    c.subscribe("aid/t", 1)
    c.publish("aid/t", b"x", qos=1)
    assert c.get().payload == b"x"


def test_v5_empty_client_ids_are_distinct(broker):
    a = broker.client("", V5)
    b = broker.client("", V5)
    assert a.connack_props.AssignedClientIdentifier != b.connack_props.AssignedClientIdentifier


def test_v311_empty_client_id_with_clean_session_accepted(broker):
    raw = broker.raw()
    connack = raw.connect("", 4, clean=True)
    assert connack_rc(connack) == 0


def test_v311_empty_client_id_without_clean_session_rejected(broker):
    """[MQTT-3.1.3-8]: CONNACK return code 0x02 Identifier rejected, then close."""
    raw = broker.raw()
    connack = raw.connect("", 4, clean=False)
    assert connack.body == bytes([0, 2])
    assert raw.packets_until_close() == []


def test_v311_connack_for_plain_connect(broker):
    raw = broker.raw()
    connack = raw.connect("plain", 4)
    assert connack.body == bytes([0, 0])  # no session present, accepted; exactly 2 bytes


@pytest.mark.roost_only
@pytest.mark.broker_config(max_connections=2)
def test_max_connections(broker):
    broker.client("one", V5)
    broker.client("two", V311)
    raw5 = broker.raw()
    connack = raw5.connect("three", 5)
    assert connack_rc(connack) == 0x97  # Quota exceeded
    assert raw5.packets_until_close() == []
    raw3 = broker.raw()
    connack = raw3.connect("four", 4)
    assert connack.body == bytes([0, 3])  # Server unavailable
    assert raw3.packets_until_close() == []


@pytest.mark.roost_only
@pytest.mark.broker_config(max_connections=1)
def test_max_connections_frees_slot_on_disconnect(broker):
    broker.client("one", V5).disconnect()
    broker.client("two", V5)


@pytest.mark.roost_only
def test_sigterm_disconnects_v5_clients_and_exits_zero(broker):
    v5 = broker.client("v5", V5)
    v3 = broker.client("v3", V311)
    code = broker.stop(signal.SIGTERM, grace=5.0)
    assert v5.wait_disconnected() == 0x8B  # Server shutting down
    v3.wait_disconnected()
    assert code == 0, f"exit code {code}"


def test_v5_connack_properties_sane(broker):
    c = broker.client("props", V5)
    p = c.connack_props
    # Absent means 65535 / unlimited; present must be > 0.
    assert getattr(p, "ReceiveMaximum", 65535) > 0
    assert getattr(p, "MaximumPacketSize", 1) > 0
