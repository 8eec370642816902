"""A real Mosquitto broker bridged into Roost (issue 9, "Protocol breadth").

Mosquitto's bridge connects with the protocol level's top bit set (`try_private true`, its
default: 0x84 for 3.1.1, 0x83 for 3.1) and relies on the remote broker not sending back what the
bridge published (else a message crosses back and forth) and keeping retained flags as
published. Roost gives such a client No Local and Retain As Published on its subscriptions. The
bridge here maps `br/#` both ways; each side's subscriber must get each message exactly once.
The Mosquitto broker runs on a free loopback port and stops with the test.
"""

import shutil
import socket
import subprocess
import time
import types
from pathlib import Path

import pytest

from conftest import free_port
from test_mosquitto_clients import MosqSub, mosq_pub

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

pytestmark = [
    pytest.mark.roost_only,
    pytest.mark.skipif(not Path(MOSQUITTO).exists() or shutil.which("mosquitto_sub") is None,
                       reason="mosquitto (broker) or mosquitto-clients not installed "
                              "(scripts/install-test-deps)"),
]


@pytest.fixture(params=["mqttv311", "mqttv31"])
def bridged(request, broker, tmp_path):
    """A Mosquitto broker with a bridge into `broker` (both directions, `br/#`, QoS 1), speaking
    the parametrized protocol; yields (mosquitto as a host/port object, its log path)."""
    port = free_port()
    log = tmp_path / "mosquitto.log"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "log_dest stdout\n"
        "log_type all\n"
        "connection roost\n"
        f"address {broker.host}:{broker.port}\n"
        "topic br/# both 1\n"
        f"bridge_protocol_version {request.param}\n"
        "try_private true\n"
        # Mosquitto's default notification topic is `$SYS/broker/connection/<id>/state`, and it
        # sets it as the bridge's will on the remote side: Roost reserves `$` topics for itself
        # (a will there is refused, CONNACK 0x90 / 3.1.1 return code 3), so a bridge into Roost
        # names another one (docs/operations.md, "Bridging Mosquitto into Roost").
        "notification_topic bridge/roost/state\n"
        "cleansession true\n"
        "restart_timeout 1\n")
    # Its log goes to stdout, into a file this process opens: run as root, Mosquitto switches
    # to its own user and could not open the test's directory itself.
    log_file = open(log, "w")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log_file,
                            stderr=subprocess.STDOUT)
    mosq = types.SimpleNamespace(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"mosquitto exited: {proc.returncode}"
                assert time.monotonic() < deadline, "mosquitto did not listen within 15 s"
                time.sleep(0.05)
        # The bridge is up once a message published on Roost reaches a subscriber on Mosquitto.
        while True:
            probe = MosqSub(mosq, "mqttv311", ["br/probe"], count=1, qos=1, wait=1)
            mosq_pub(broker, "mqttv311", "br/probe", "probe", qos=1)
            if probe.messages():
                break
            assert time.monotonic() < deadline, (
                f"the bridge did not come up: {log.read_text() if log.exists() else ''}")
        yield mosq, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


def test_a_mosquitto_bridge_passes_messages_both_ways_exactly_once(broker, bridged):
    mosq, log = bridged
    on_roost = MosqSub(broker, "mqttv311", ["br/+"], count=3, qos=1, wait=3)
    on_mosq = MosqSub(mosq, "mqttv311", ["br/+"], count=3, qos=1, wait=3)
    mosq_pub(mosq, "mqttv311", "br/from-mosquitto", "m", qos=1)
    mosq_pub(broker, "mqttv311", "br/from-roost", "r", qos=1)
    # `count` 3 with only 2 messages published: a third (a message that came back over the
    # bridge) would be seen; `wait` ends each subscriber after 3 s of silence.
    got_roost = sorted(t for t, *_ in on_roost.messages())
    got_mosq = sorted(t for t, *_ in on_mosq.messages())
    assert got_roost == ["br/from-mosquitto", "br/from-roost"], log.read_text()[-3000:]
    assert got_mosq == ["br/from-mosquitto", "br/from-roost"], log.read_text()[-3000:]


def test_a_retained_message_crosses_the_bridge_retained(broker, bridged):
    """Published retained on Roost, it reaches the bridge live; with Retain As Published its
    flag stays set, so Mosquitto stores it too and a new subscriber there gets it as retained
    (a plain 3.1.1 live delivery clears the flag, [MQTT-3.3.1-9], and Mosquitto would store
    nothing)."""
    mosq, log = bridged
    mosq_pub(broker, "mqttv311", "br/ret", "kept", qos=1, retain=True)
    deadline = time.monotonic() + 10
    while True:
        got = MosqSub(mosq, "mqttv311", ["br/ret"], count=1, qos=1, wait=1).messages()
        if got:
            break
        assert time.monotonic() < deadline, (
            f"no retained message on Mosquitto: {log.read_text()[-3000:]}")
    assert got == [("br/ret", 1, 1, "kept")]
