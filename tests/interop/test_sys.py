"""$SYS topics: published by the broker, hidden from `#`, not writable by clients."""

import time

import pytest

from helpers import V5, VERSION_IDS, VERSIONS

SYS_TOPICS = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
]


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.broker_config(sys_interval_secs=1)
def test_sys_topics_published(broker, version):
    c = broker.client("sys", version)
    c.subscribe("$SYS/#", 0)
    seen = {}
    wanted = set(SYS_TOPICS)
    connected = lambda: int(seen.get("$SYS/broker/clients/connected", b"0").split()[0])
    deadline = time.monotonic() + 3.5
    # The first value of each topic is the retained one and may predate our connection; the
    # next refresh (every second) must count us.
    while not (wanted <= seen.keys() and connected() >= 1):
        try:
            m = c.get(timeout=max(deadline - time.monotonic(), 0.01))
        except AssertionError:
            break
        seen[m.topic] = m.payload
    missing = wanted - seen.keys()
    assert not missing, f"missing {sorted(missing)}; saw {sorted(seen)}"
    assert connected() >= 1
    assert seen["$SYS/broker/version"]


@pytest.mark.broker_config(sys_interval_secs=1)
def test_sys_topics_retained(broker):
    """A late subscriber gets the current values at once (they are retained)."""
    first = broker.client("first", V5)
    first.subscribe("$SYS/broker/uptime", 0)
    first.get(timeout=3.0)
    late = broker.client("late", V5)
    late.subscribe("$SYS/broker/version", 0)
    m = late.get(timeout=1.0)
    assert m.retain


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.broker_config(sys_interval_secs=1)
def test_multilevel_wildcard_does_not_match_sys(broker, version):
    """[MQTT-4.7.2-1]: `#` and `+/...` do not match topics starting with `$`."""
    c = broker.client("all", version)
    c.subscribe("#", 0)
    c.subscribe("+/broker/#", 0)
    broker.client("pub", version).publish("normal/t", b"x", qos=1)
    got = [c.get()] + c.drain(2.2)
    assert [m.topic for m in got if m.topic.startswith("$")] == []
    assert "normal/t" in [m.topic for m in got]


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_client_cannot_publish_to_sys(broker, version):
    watcher = broker.client("watcher", version)
    watcher.subscribe("$SYS/#", 1)
    watcher.drain(0.3)
    pub = broker.client("pub", version)
    pub.publish("$SYS/x", b"q0", qos=0)
    rc = pub.publish("$SYS/x", b"q1", qos=1)
    if version == V5 and broker.is_roost:
        assert rc == 0x90  # Topic Name invalid
    got = [m for m in watcher.drain(0.7) if m.topic == "$SYS/x"]
    assert got == []


@pytest.mark.roost_only
def test_v5_publish_to_dollar_topic_refused(broker):
    pub = broker.client("pub", V5)
    assert pub.publish("$other/x", b"q1", qos=1) == 0x90
