"""Roost's admin HTTP API on --http (health, readiness, metrics, clients, subscriptions,
log level)."""

import json

import pytest

from helpers import V5, V311, wait_until

pytestmark = pytest.mark.roost_only

COUNTERS = [
    "roost_mqtt_messages_received_total",
    "roost_mqtt_messages_sent_total",
    "roost_mqtt_connections",
    "roost_session_queue_dropped_total",
]


def test_healthz(broker):
    status, _ = broker.http("GET", "/healthz")
    assert status == 200


def test_readyz(broker):
    wait_until(lambda: broker.http("GET", "/readyz")[0] == 200, 5.0, what="/readyz 200")


def test_metrics_names_and_counts(broker):
    sub = broker.client("sub", V5)
    sub.subscribe("m/t", 1)
    broker.client("pub", V311).publish("m/t", b"x", qos=1)
    sub.get()
    status, body = broker.http("GET", "/metrics")
    assert status == 200
    text = body.decode()
    for name in COUNTERS:
        assert name in text, f"{name} missing from /metrics"
    m = wait_until(lambda: (lambda m: m if m.get("roost_mqtt_messages_sent_total", 0) >= 1
                            else None)(broker.metrics()), 3.0, what="messages_sent >= 1")
    assert m["roost_mqtt_messages_received_total"] >= 1
    assert m["roost_mqtt_connections"] >= 2


def test_clients_list(broker):
    broker.client("c5", V5)
    broker.client("c3", V311)
    clients = {c["client_id"]: c for c in broker.get_json("/api/v1/clients")}
    assert clients["c5"]["protocol"] == "5.0" and clients["c5"]["connected"] is True
    assert clients["c3"]["protocol"] == "3.1.1" and clients["c3"]["connected"] is True


def test_offline_persistent_session_listed_as_disconnected(broker):
    c = broker.client("gone", V5, clean=False, session_expiry=60)
    c.disconnect()

    def offline():
        by_id = {x["client_id"]: x for x in broker.get_json("/api/v1/clients")}
        return "gone" in by_id and by_id["gone"]["connected"] is False
    wait_until(offline, 3.0, what="'gone' listed with connected=false")


def test_kick_client(broker):
    victim = broker.client("victim", V5)
    status, _ = broker.http("DELETE", "/api/v1/clients/victim")
    assert status == 204
    assert victim.wait_disconnected() == 0x98  # Administrative action


def test_kick_unknown_client_404(broker):
    status, _ = broker.http("DELETE", "/api/v1/clients/nobody")
    assert status == 404


def test_subscriptions_list(broker):
    c = broker.client("s", V5)
    c.subscribe("a/+/b", 1)
    c.subscribe("x/#", 2)
    subs = broker.get_json("/api/v1/subscriptions")
    mine = sorted((s["filter"], s["qos"]) for s in subs if s["client_id"] == "s")
    assert mine == [("a/+/b", 1), ("x/#", 2)]


def test_stats(broker):
    status, body = broker.http("GET", "/api/v1/stats")
    assert status == 200
    json.loads(body)


def test_log_level_get_put(broker):
    status, body = broker.http("GET", "/api/v1/log-level")
    assert status == 200
    status, _ = broker.http("PUT", "/api/v1/log-level", {"level": "debug"})
    assert status in (200, 204)
    status, body = broker.http("GET", "/api/v1/log-level")
    assert status == 200 and b"debug" in body
    status, _ = broker.http("PUT", "/api/v1/log-level", {"level": "not-a-level"})
    assert status == 400
