"""Transports and identity (issue 9): TLS and mutual TLS with the Mosquitto clients and paho,
WebSocket and secure WebSocket with paho, client certificates as identity, password files
written by `roost passwd`, anonymous access per listener, handshake timeouts, certificate and
password reloads. Certificates are made per test (certs.py), never checked in."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest

from certs import Pki
from conftest import free_port, roost_bin
from helpers import V311, V5, wait_until

pytestmark = [
    pytest.mark.roost_only,
    pytest.mark.skipif(shutil.which("mosquitto_pub") is None,
                       reason="mosquitto-clients not installed (scripts/install-test-deps)"),
]

NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
QUOTA_EXCEEDED = 0x97


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


def listener_toml(kind: str, port: int, pki: Pki | None = None, **opts) -> str:
    lines = ["[[listeners]]", f'kind = "{kind}"', f'listen = "127.0.0.1:{port}"',
             f'name = "{kind}"']
    if pki is not None:
        lines += [f'cert = "{pki.server_cert}"', f'key = "{pki.server_key}"']
    for k, v in opts.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, str):
            v = json.dumps(v)
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def mosq(tool: str, port: int, pki: Pki, *args, cert=None, timeout=10):
    cmd = [tool, "-h", "127.0.0.1", "-p", str(port), "--cafile", str(pki.ca), *args]
    if cert is not None:
        cmd += ["--cert", str(cert[0]), "--key", str(cert[1])]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def labelled(broker, name: str) -> dict[str, float]:
    """{label set: value} of one metric."""
    status, body = broker.http("GET", "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name):]] = float(value)
    return out


def labelled_once(broker, name: str, holds, what: str) -> dict[str, float]:
    """`labelled` once `holds(it)` is true (5 s at most). A refused handshake is counted right
    after its socket is closed, not before (the handshake's future owns the socket and is
    dropped first), so a client that saw the close may scrape a moment before the count."""
    found = {}

    def check():
        found.clear()
        found.update(labelled(broker, name))
        return holds(found)

    try:
        wait_until(check, 5, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}: {found}") from None
    return found


def clients(broker) -> dict[str, dict]:
    return {c["client_id"]: c for c in broker.get_json("/api/v1/clients")}


def test_mosquitto_clients_over_mutual_tls_use_the_certificate_cn(broker_factory, pki):
    port = free_port()
    b = broker_factory(extra_toml=listener_toml("tls", port, pki, client_ca=str(pki.ca)))
    sensor = pki.client("sensor-1")
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "--cafile", str(pki.ca),
         "--cert", str(sensor[0]), "--key", str(sensor[1]), "-i", "sensor-1", "-t", "devices/#",
         "-q", "1", "-C", "1", "-W", "10", "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: "sensor-1" in clients(b), 5, what="sensor-1 connected")
    info = clients(b)["sensor-1"]
    assert info["username"] == "sensor-1"
    assert info["auth"] == "certificate"
    assert info["transport"] == "tls"
    time.sleep(0.3)  # its SUBSCRIBE follows the CONNACK
    pub = mosq("mosquitto_pub", port, pki, "-t", "devices/sensor-1", "-m", "over-tls", "-q", "1",
               cert=pki.client("gateway"))
    assert pub.returncode == 0, pub.stderr
    out, err = sub.communicate(timeout=10)
    assert out.strip() == "devices/sensor-1 over-tls", err


def test_client_certificates_that_do_not_verify_are_refused(broker_factory, pki, tmp_path):
    port = free_port()
    b = broker_factory(extra_toml=listener_toml("tls", port, pki, client_ca=str(pki.ca)))
    rogue = Pki(tmp_path / "rogue", name="Not The Roost CA").client("rogue")
    expired = pki.client("old", expired=True)
    for cert in (None, rogue, expired):
        r = mosq("mosquitto_pub", port, pki, "-t", "x", "-m", "no", "-q", "1", cert=cert)
        assert r.returncode != 0, f"{cert}: {r.stdout} {r.stderr}"
    labelled_once(b, "roost_mqtt_handshake_failed_total", lambda f: sum(f.values()) == 3,
                  "three refused handshakes counted")
    # The listener still serves a client with a good certificate.
    ok = mosq("mosquitto_pub", port, pki, "-t", "x", "-m", "yes", "-q", "1",
              cert=pki.client("good"))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("version", [V311, V5])
def test_the_certificate_cn_must_be_the_client_id_when_required(broker_factory, pki, version):
    port = free_port()
    b = broker_factory(extra_toml=listener_toml(
        "tls", port, pki, client_ca=str(pki.ca), require_client_id_match=True))
    cert, key = pki.client("thing-7")
    tls = {"ca": pki.ca, "cert": cert, "key": key}
    good = b.client("thing-7", version, port=port, tls=tls)
    good.subscribe("t", 1)
    bad = b.client("thing-8", version, port=port, tls=tls, expect_rc=None)
    # paho maps the 3.1.1 return code 5 to 135 (Not authorized) as well.
    assert bad.connack_rc == NOT_AUTHORIZED
    assert clients(b)["thing-7"]["username"] == "thing-7"


def test_paho_over_tls_websocket_and_secure_websocket(broker_factory, pki):
    tls_port, ws_port, wss_port = free_port(), free_port(), free_port()
    b = broker_factory(extra_toml=listener_toml("tls", tls_port, pki)
                       + listener_toml("ws", ws_port)
                       + listener_toml("wss", wss_port, pki))
    ca = {"ca": pki.ca}
    subs = {
        "tcp": b.client("s-tcp", V5),
        "tls": b.client("s-tls", V311, port=tls_port, tls=ca),
        "ws": b.client("s-ws", V5, port=ws_port, transport="websockets"),
        "wss": b.client("s-wss", V311, port=wss_port, transport="websockets", tls=ca),
    }
    for s in subs.values():
        assert s.subscribe("fan/#", 1) == [1]
    pubs = {
        "tls": b.client("p-tls", V5, port=tls_port, tls=ca),
        "ws": b.client("p-ws", V311, port=ws_port, transport="websockets"),
        "wss": b.client("p-wss", V5, port=wss_port, transport="websockets", tls=ca),
    }
    # 200 kB spans many TLS records and WebSocket frames each way.
    big = bytes(range(256)) * 800
    for name, p in pubs.items():
        assert p.publish(f"fan/{name}", big, qos=1) == 0
    for name, s in subs.items():
        got = {m.topic: m.payload for m in s.get_n(3, timeout=10)}
        assert got == {f"fan/{n}": big for n in pubs}, name
    info = clients(b)
    assert {info[f"s-{k}"]["transport"] for k in subs} == {"tcp", "tls", "ws", "wss"}


def test_a_handshake_that_never_completes_is_dropped(broker_factory, pki):
    tls_port, ws_port = free_port(), free_port()
    b = broker_factory(extra_toml=listener_toml("tls", tls_port, pki, handshake_timeout_secs=1)
                       + listener_toml("ws", ws_port, handshake_timeout_secs=1))
    silent = socket.create_connection(("127.0.0.1", tls_port))
    half = socket.create_connection(("127.0.0.1", ws_port))
    half.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    started = time.monotonic()
    # Meanwhile the node serves others on the same listeners.
    c = b.client("busy", V5, port=tls_port, tls={"ca": pki.ca})
    assert c.publish("t", b"x", qos=1) in (0, 0x10)  # 0x10: no matching subscribers
    for s in (silent, half):
        s.settimeout(5)
        assert s.recv(1024) == b"", "the node should close a stalled handshake"
        s.close()
    assert time.monotonic() - started < 4
    labelled_once(b, "roost_mqtt_handshake_failed_total",
                  lambda f: f.get('{listener="tls",reason="timeout"}') == 1
                  and f.get('{listener="ws",reason="timeout"}') == 1,
                  "both stalled handshakes counted as timeouts")


def server_cn(port: int, ca) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject["commonName"]


def test_certificates_reload_on_sighup_and_through_the_admin_api(broker_factory, pki):
    port = free_port()
    b = broker_factory(extra_toml=listener_toml("tls", port, pki))
    kept = b.client("kept", V5, port=port, tls={"ca": pki.ca})
    assert server_cn(port, pki.ca) == "roost-test-server"
    pki.reissue_server("roost-test-server-2")
    b.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: server_cn(port, pki.ca) == "roost-test-server-2", 5,
               what="the new certificate served")
    # A broken file is refused and the old certificate stays in use.
    pki.server_key.write_text("not a key\n")
    status, body = b.http("POST", "/api/v1/reload")
    assert status == 500, body
    assert json.loads(body)[0]["reloaded"] is False
    assert server_cn(port, pki.ca) == "roost-test-server-2"
    # Open connections were not touched.
    assert kept.publish("t", b"still here", qos=1) in (0, 0x10)


def passwd(path, user: str, password: str, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([str(roost_bin()), "passwd", *extra, str(path), user],
                          input=password + "\n", capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("version", [V311, V5])
def test_password_file_written_by_roost_passwd(broker_factory, tmp_path, version):
    pw = tmp_path / "passwords"
    assert passwd(pw, "alice", "correct horse").returncode == 0
    assert passwd(pw, "bob", "battery staple").returncode == 0
    assert "correct horse" not in pw.read_text()
    b = broker_factory(extra_toml=f'[auth]\npassword_file = "{pw}"\n')
    ok = b.client("a1", version, username="alice", password="correct horse")
    assert clients(b)["a1"]["auth"] == "password"
    wrong = b.client("a2", version, username="alice", password="wrong", expect_rc=None)
    # paho reports the 3.1.1 return code 4 as 134 too.
    assert wrong.connack_rc == BAD_CREDENTIALS
    nopass = b.client("a3", version, username="bob", expect_rc=None)
    assert nopass.connack_rc == BAD_CREDENTIALS
    # Change bob's password; the node picks it up on SIGHUP.
    assert passwd(pw, "bob", "new one").returncode == 0
    b.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: b.client("b1", version, username="bob", password="new one",
                                expect_rc=None).connack_rc == 0, 5, what="bob's new password")
    old = b.client("b2", version, username="bob", password="battery staple", expect_rc=None)
    assert old.connack_rc == BAD_CREDENTIALS
    ok.publish("t", b"x", qos=1)


def test_mosquitto_pub_with_a_password_and_anonymous_access_per_listener(broker_factory, tmp_path):
    pw = tmp_path / "passwords"
    assert passwd(pw, "dev", "s3cret").returncode == 0
    ws_port = free_port()
    b = broker_factory(allow_anonymous=False, extra_toml=(
        f'[auth]\npassword_file = "{pw}"\n'
        + listener_toml("ws", ws_port, allow_anonymous=True, max_connections=1)))
    base = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(b.port), "-t", "t", "-m", "m",
            "-q", "1", "-V", "mqttv5"]
    assert subprocess.run(base + ["-u", "dev", "-P", "s3cret"], capture_output=True,
                          timeout=10).returncode == 0
    anon = subprocess.run(base, capture_output=True, text=True, timeout=10)
    assert anon.returncode != 0
    assert "not authorised" in (anon.stderr + anon.stdout).lower() or \
        "not authorized" in (anon.stderr + anon.stdout).lower(), anon
    # Anonymous is allowed on the WebSocket listener only, and it takes one connection.
    first = b.client("anon-ws", V5, port=ws_port, transport="websockets")
    second = b.client("anon-ws-2", V5, port=ws_port, transport="websockets", expect_rc=None)
    assert second.connack_rc == QUOTA_EXCEEDED
    tcp = b.client("anon-tcp", V5, expect_rc=None)
    assert tcp.connack_rc == NOT_AUTHORIZED
    first.publish("t", b"x", qos=1)
    rejected = labelled(b, "roost_mqtt_connections_rejected_total")
    assert rejected.get('{reason="not_authorized"}', 0) >= 2, rejected
    assert rejected.get('{reason="listener_quota"}') == 1, rejected


def test_bad_listener_settings_name_the_key(tmp_path, pki):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[listeners]]\nkind = "tls"\nlisten = "127.0.0.1:18883"\n')
    r = subprocess.run([str(roost_bin()), "check-config", str(cfg)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 64
    assert "listeners[0].cert" in r.stderr, r.stderr
    # A certificate file that does not exist stops the start with the listener named.
    missing = tmp_path / "nope.pem"
    r = subprocess.run([str(roost_bin()), "serve", "--data-dir", str(tmp_path / "d"),
                        "--mqtt", f"127.0.0.1:{free_port()}", "--http",
                        f"127.0.0.1:{free_port()}", "--cluster", f"127.0.0.1:{free_port()}",
                        "--mqtts", f"127.0.0.1:{free_port()}", "--tls-cert", str(missing),
                        "--tls-key", str(pki.server_key)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 64, r.stderr
    assert "listeners[0]" in r.stderr and "nope.pem" in r.stderr, r.stderr
    # --tls-cert without a listener to use it is a usage error.
    r = subprocess.run([str(roost_bin()), "serve", "--tls-cert", str(pki.server_cert)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 64, r.stderr
    assert "--mqtts" in r.stderr


POLICIES = {
    "policies": {
        "device": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "mqtt:Connect", "Resource": "client/${username}-*"},
            {"Effect": "Allow", "Action": "mqtt:Publish",
             "Resource": "topic/devices/${username}/*"},
            {"Effect": "Allow", "Action": "mqtt:Subscribe",
             "Resource": "topicfilter/devices/${username}/*"},
            {"Effect": "Deny", "Action": "mqtt:Publish", "Resource": "topic/devices/*/secret"},
            {"Effect": "Allow", "Action": "mqtt:Subscribe", "Resource": "topicfilter/fleet/#"},
            {"Effect": "Allow", "Action": "mqtt:Receive",
             "Resource": ["topic/fleet/public/*", "topic/devices/${username}/*"]},
        ]},
        "ops": {"Statement": [{"Effect": "Allow", "Action": "mqtt:*", "Resource": "*"}]},
    },
    "attach": {"users": {"ops": ["ops"]}, "all": ["device"]},
}


@pytest.mark.parametrize("version", [V311, V5])
def test_policies_decide_connect_subscribe_and_publish_and_change_at_run_time(
        broker_factory, tmp_path, version):
    pw = tmp_path / "passwords"
    for user in ("alice", "ops"):
        assert passwd(pw, user, f"{user}-pw").returncode == 0
    policy_file = tmp_path / "policies.json"
    policy_file.write_text(json.dumps(POLICIES))
    b = broker_factory(allow_anonymous=False, extra_toml=(
        f'[auth]\npassword_file = "{pw}"\npolicy_file = "{policy_file}"\n'))
    v5 = version == V5
    denied_ack = NOT_AUTHORIZED if v5 else 0  # 3.1.1: acknowledged as usual, then dropped

    ops = b.client("ops-1", version, username="ops", password="ops-pw")
    assert ops.subscribe("#", 1) == [1]
    # Connect: the client id must start with the username.
    wrong_id = b.client("bob-1", version, username="alice", password="alice-pw", expect_rc=None)
    assert wrong_id.connack_rc == NOT_AUTHORIZED
    alice = b.client("alice-1", version, username="alice", password="alice-pw")
    # Subscribe: own subtree only (3.1.1 SUBACK says 0x80).
    assert alice.subscribe("devices/alice/#", 1) == [1]
    assert alice.subscribe("devices/bob/#", 1) == [NOT_AUTHORIZED if v5 else 0x80]
    # Publish: own subtree, except what the explicit Deny covers.
    assert alice.publish("devices/alice/temp", b"21", qos=1) == 0
    assert alice.publish("devices/bob/temp", b"22", qos=1) == denied_ack
    assert alice.publish("devices/alice/secret", b"23", qos=1) == denied_ack
    # Retaining needs mqtt:Retain, which nobody but ops has.
    assert alice.publish("devices/alice/state", b"on", qos=1, retain=True) == denied_ack
    got = [(m.topic, m.payload) for m in ops.get_n(1)]
    assert got == [("devices/alice/temp", b"21")]
    ops.expect_nothing(0.5)
    assert [m.topic for m in alice.get_n(1)] == ["devices/alice/temp"]  # its own, allowed
    dropped = labelled(b, "roost_mqtt_publish_dropped_total")
    assert dropped.get('{reason="not_authorized"}') == 3, dropped
    status, body = b.http("GET", "/api/v1/policies")
    assert status == 200
    assert json.loads(body)["version"] >= 1  # the file, replicated

    # Receive: a subscription may match more than the client may receive; retained messages
    # on subscribe are filtered the same way.
    assert ops.publish("fleet/private/cfg", b"r", qos=1, retain=True) in (0, 0x10)
    assert alice.subscribe("fleet/#", 1) == [1]
    for topic in ("fleet/public/news", "fleet/private/keys", "fleet/public/more"):
        assert ops.publish(topic, topic.encode(), qos=1) == 0
    got = [m.topic for m in alice.get_n(2)]
    assert got == ["fleet/public/news", "fleet/public/more"], got
    alice.expect_nothing(0.5)
    ops.get_n(4)  # its own: the retained one and the three
    denied = b.metrics().get("roost_mqtt_receive_denied_total", 0)
    assert denied == 2, denied  # the retained one and the private one

    # A change through the admin API applies to connected clients without reconnecting.
    changed = json.loads(json.dumps(POLICIES))
    changed["policies"]["device"]["Statement"].append(
        {"Effect": "Allow", "Action": "mqtt:Retain", "Resource": "topic/devices/${username}/*"})
    status, body = b.http("PUT", "/api/v1/policies", changed)
    assert status == 200, body
    assert alice.publish("devices/alice/state", b"on", qos=1, retain=True) == 0
    assert [(m.topic, m.payload) for m in ops.get_n(1)] == [("devices/alice/state", b"on")]
    # An invalid document is refused, naming the statement, and changes nothing.
    bad = json.loads(json.dumps(changed))
    bad["policies"]["device"]["Statement"][1]["Action"] = "mqtt:Publsh"
    status, body = b.http("PUT", "/api/v1/policies", bad)
    assert status == 400
    assert "Statement[1]" in json.loads(body)["error"], body
    assert alice.publish("devices/alice/temp", b"24", qos=1) == 0
    # Removing every policy lets authenticated clients do everything.
    status, _ = b.http("DELETE", "/api/v1/policies")
    assert status == 200
    assert alice.publish("devices/bob/temp", b"25", qos=1) == 0


@pytest.mark.parametrize("version", [V311, V5])
def test_policies_set_after_clients_connected_apply_to_them(broker_factory, tmp_path, version):
    # Without policies a connection and its session hold no policy state (issue 10, memory
    # per connection): both are resolved, with the client's user name, when policies come.
    pw = tmp_path / "passwords"
    for user in ("alice", "ops"):
        assert passwd(pw, user, f"{user}-pw").returncode == 0
    b = broker_factory(allow_anonymous=False, extra_toml=f'[auth]\npassword_file = "{pw}"\n')
    v5 = version == V5
    ops = b.client("ops-1", version, username="ops", password="ops-pw")
    alice = b.client("alice-1", version, username="alice", password="alice-pw")
    # An offline session too: its gate is made from the user name its connection had.
    away = b.client("alice-2", version, username="alice", password="alice-pw",
                    clean=False, session_expiry=300)
    assert away.subscribe("fleet/#", 1) == [1]
    away.disconnect()
    # No policies yet: everything is allowed (v5: "no matching subscribers" for this one).
    no_subscribers = 0x10 if v5 else 0
    assert alice.subscribe("fleet/#", 1) == [1]
    assert alice.publish("devices/bob/temp", b"1", qos=1) == no_subscribers
    assert ops.publish("fleet/private/keys", b"k0", qos=1) == 0
    assert [m.topic for m in alice.get_n(1)] == ["fleet/private/keys"]

    status, body = b.http("PUT", "/api/v1/policies", POLICIES)
    assert status == 200, body
    # Publish and subscribe: the connection resolves its policies with its user name.
    assert alice.publish("devices/bob/temp", b"2", qos=1) == (NOT_AUTHORIZED if v5 else 0)
    assert alice.subscribe("devices/bob/#", 1) == [NOT_AUTHORIZED if v5 else 0x80]
    assert alice.subscribe("devices/alice/#", 1) == [1]
    # Receive: the connected session's gate, and the offline one's.
    # (v5: nobody may receive the private one, so its PUBACK says "no matching subscribers").
    assert ops.publish("fleet/private/keys", b"k", qos=1) == no_subscribers
    assert ops.publish("fleet/public/news", b"n", qos=1) == 0
    assert [m.topic for m in alice.get_n(1)] == ["fleet/public/news"]
    alice.expect_nothing(0.5)
    back = b.client("alice-2", version, username="alice", password="alice-pw", clean=False,
                    session_expiry=300)
    assert back.session_present
    # What it was given before the policies, then only what they allow.
    assert [m.topic for m in back.get_n(2)] == ["fleet/private/keys", "fleet/public/news"]
    back.expect_nothing(0.5)
    assert b.metrics().get("roost_mqtt_receive_denied_total", 0) == 2

    # Removed again: everything is allowed, without reconnecting.
    status, _ = b.http("DELETE", "/api/v1/policies")
    assert status == 200
    assert alice.publish("devices/bob/temp", b"3", qos=1) == no_subscribers
    assert ops.publish("fleet/private/keys", b"k1", qos=1) == 0
    assert [m.topic for m in alice.get_n(1)] == ["fleet/private/keys"]


def test_a_policy_file_that_does_not_parse_stops_the_start(tmp_path):
    bad = tmp_path / "policies.json"
    bad.write_text('{"policies": {"p": {"Statement": [{"Effect": "Maybe", "Action": "*", '
                   '"Resource": "*"}]}}}')
    cfg = tmp_path / "roost.toml"
    cfg.write_text(f'[auth]\npolicy_file = "{bad}"\n')
    r = subprocess.run([str(roost_bin()), "serve", "--config", str(cfg), "--data-dir",
                        str(tmp_path / "d"), "--mqtt", f"127.0.0.1:{free_port()}",
                        "--http", f"127.0.0.1:{free_port()}",
                        "--cluster", f"127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 64, r.stderr
    assert "auth.policy_file" in r.stderr and "Statement[0]" in r.stderr, r.stderr


MESSAGE_RATE_TOO_HIGH = 0x96
CONNECTION_RATE_EXCEEDED = 0x9F


@pytest.mark.parametrize("limit", ["messages", "bytes"])
def test_a_publisher_over_its_rate_is_disconnected_with_0x96(broker_factory, limit):
    settings = {"max_publish_rate": 5} if limit == "messages" else {
        "max_publish_bytes_rate": 1000}
    b = broker_factory(rate_burst_secs=1, **settings)
    sub = b.client("rate-sub", V5)
    sub.subscribe("r/#", 1)
    fast = b.client("fast", V5)
    payload = b"x" * (10 if limit == "messages" else 400)
    for i in range(20):
        if fast.disconnected.is_set():
            break
        # paho can see the socket closed before its callback sets `disconnected`: a local
        # "no connection" is the same disconnect, seen first (it failed CI once that way).
        info = fast.c.publish(f"r/{i}", payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            break
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        time.sleep(0.01)
    wait_until(fast.disconnected.is_set, 5, what="the fast publisher disconnected")
    assert fast.disconnect_rc == MESSAGE_RATE_TOO_HIGH
    got = sub.get_n(1)
    while True:
        try:
            got.append(sub.get(timeout=0.5))
        except AssertionError:
            break
    acked = len(got)
    # Within the burst: 5 messages, or 1000 bytes (two 400-byte payloads), plus what the
    # bucket refilled meanwhile if the machine was slow; never the rest.
    low, high = (5, 7) if limit == "messages" else (2, 3)
    assert low <= acked <= high, [m.topic for m in got]
    limited = labelled(b, "roost_mqtt_rate_limited_total")
    assert limited == {f'{{limit="{limit}"}}': 1.0}, limited
    # A publisher within the rate is not touched.
    slow = b.client("slow", V5)
    assert slow.publish("r/slow", b"ok", qos=1) == 0


def test_a_listener_over_its_connect_rate_answers_0x9f(broker_factory):
    ws_port = free_port()
    b = broker_factory(rate_burst_secs=1, extra_toml=listener_toml(
        "ws", ws_port, max_connect_rate=2))
    first = [b.client(f"c{i}", V5, port=ws_port, transport="websockets") for i in range(2)]
    third = b.client("c3", V5, port=ws_port, transport="websockets", expect_rc=None)
    assert third.connack_rc == CONNECTION_RATE_EXCEEDED
    # Other listeners are not affected, and the bucket refills.
    b.client("tcp", V5)
    time.sleep(1.1)
    b.client("c4", V5, port=ws_port, transport="websockets")
    rejected = labelled(b, "roost_mqtt_connections_rejected_total")
    assert rejected.get('{reason="connect_rate"}') == 1, rejected
    assert all(c.connack_rc == 0 for c in first)


def test_json_web_tokens_as_passwords_and_their_expiry(broker_factory, tmp_path):
    import jwt as pyjwt

    secret = b"a-test-secret-of-at-least-32-bytes!"
    (tmp_path / "jwt-secret").write_bytes(secret + b"\n")
    b = broker_factory(allow_anonymous=False, extra_toml=(
        f'[auth]\njwt_key_file = "{tmp_path / "jwt-secret"}"\njwt_audience = "roost"\n'))

    def token(**claims):
        claims.setdefault("aud", "roost")
        claims.setdefault("exp", int(time.time()) + 600)
        return pyjwt.encode(claims, secret, algorithm="HS256")

    # The CONNECT's username is ignored (SDKs send placeholders): the claim names the client.
    ok = b.client("t1", V5, username="unused", password=token(sub="device-9"))
    info = clients(b)["t1"]
    assert (info["username"], info["auth"]) == ("device-9", "token")
    for bad in (pyjwt.encode({"sub": "x", "aud": "roost", "exp": int(time.time()) + 600},
                             b"some-other-secret-of-32-bytes-or-more", algorithm="HS256"),
                token(sub="x", exp=int(time.time()) - 60),
                token(sub="x", aud="elsewhere")):
        r = b.client("t2", V5, username="x", password=bad, expect_rc=None)
        assert r.connack_rc == BAD_CREDENTIALS
    # A token that expires in 2 s: connected now, disconnected (0x87) when it expires.
    short = b.client("t3", V311, username="device-3",
                     password=token(sub="device-3", exp=int(time.time()) + 2))
    v5short = b.client("t4", V5, username="device-4",
                       password=token(sub="device-4", exp=int(time.time()) + 2))
    wait_until(lambda: short.disconnected.is_set() and v5short.disconnected.is_set(), 8,
               what="expired tokens disconnected")
    assert v5short.disconnect_rc == NOT_AUTHORIZED
    assert ok.connected.is_set()
    rejected = labelled(b, "roost_mqtt_connections_rejected_total")
    assert rejected.get('{reason="bad_token"}') == 3, rejected
    disconnects = labelled(b, "roost_mqtt_disconnects_total")
    assert disconnects.get('{reason="credentials_expired"}') == 2, disconnects


def test_proxy_protocol_headers_carry_the_client_address(broker_factory):
    from helpers import connect_packet

    port = free_port()
    b = broker_factory(extra_toml=listener_toml("tcp", port, proxy_protocol=True))
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"PROXY TCP4 203.0.113.9 127.0.0.1 5555 {port}\r\n".encode()
              + connect_packet("behind-lb", 4))
    s.settimeout(5)
    assert s.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    assert clients(b)["behind-lb"]["peer"] == "203.0.113.9:5555"
    # Without the header: refused before any MQTT, counted.
    direct = socket.create_connection(("127.0.0.1", port))
    direct.sendall(connect_packet("direct", 4))
    direct.settimeout(5)
    try:
        # Closed unread: an RST rather than a FIN is as good.
        assert direct.recv(16) == b""
    except ConnectionResetError:
        pass
    labelled_once(b, "roost_mqtt_handshake_failed_total",
                  lambda f: f.get('{listener="tcp",reason="proxy"}') == 1,
                  "the connection without a PROXY header counted")
    s.close()


def cluster_handshake(port: int, pki: Pki, identity) -> str:
    """A TLS handshake with a node's cluster port as a would-be peer: "accepted" when the
    connection stays open (the server waits for HTTP/2), "refused" when the server ends it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki.ca))
    ctx.set_alpn_protocols(["h2"])
    if identity is not None:
        ctx.load_cert_chain(str(identity[0]), str(identity[1]))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s = ctx.wrap_socket(raw, server_hostname="roost-node-1")
        s.settimeout(1.0)
        try:
            data = s.recv(1)
        except socket.timeout:
            return "accepted"
        # TLS 1.3: the server's verdict on our certificate arrives after our handshake.
        return "refused" if data == b"" else "accepted"
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return "refused"
    finally:
        raw.close()


@pytest.mark.cluster
def test_a_cluster_over_mutual_tls_and_a_node_without_a_certificate(tmp_path, request):
    from cluster import Cluster, Node, attach_logs

    pki = Pki(tmp_path / "cluster-pki", name="Roost Cluster CA")

    def placement(node):
        cert, key = pki.node(node.node_id)
        node.config = {"cluster": {"heartbeat_ms": 50, "election_timeout_ms": 300,
                                   "tls_cert": str(cert), "tls_key": str(key),
                                   "tls_ca": str(pki.ca)}}

    cluster = Cluster(3, tmp_path / "c", placement=placement, start=False)
    attach_logs(request, cluster)
    try:
        cluster.start()
        a, b, c = cluster.nodes
        sub = c.client("tls-sub")
        sub.subscribe("mtls/#", 1)
        time.sleep(0.5)  # the route commits before the SUBACK; give peers a moment to apply
        pub = a.client("tls-pub")
        assert pub.publish("mtls/x", b"across nodes", qos=1) == 0
        assert sub.get().payload == b"across nodes"
        # The cluster port refuses a peer without a certificate from the cluster CA (and
        # accepts one with a member's certificate), in the TLS handshake.
        rogue = Pki(tmp_path / "rogue-pki", name="Rogue CA").node(9)
        assert cluster_handshake(a.cluster_port, pki, pki.node(2)) == "accepted"
        assert cluster_handshake(a.cluster_port, pki, rogue) == "refused"
        assert cluster_handshake(a.cluster_port, pki, None) == "refused"
    finally:
        cluster.close()


def _served_cn(port: int, ctx: ssl.SSLContext) -> str:
    """The CN of the certificate the admin listener presents in a new handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            subject = tls.getpeercert()["subject"]
    return dict(rdn[0] for rdn in subject)["commonName"]


def test_admin_api_over_https(tmp_path, pki):
    """`[http] tls_cert/tls_key`: the admin API answers over HTTPS only, `roost ctl --ca` talks
    to it, and SIGHUP reloads its certificate. The node is started by hand: the harness polls
    /readyz over plain HTTP."""
    import urllib.error
    import urllib.request

    http_port = free_port()
    cfg = tmp_path / "https.toml"
    cfg.write_text(
        f'[mqtt]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
        f'tls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
        f'[cluster]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'heartbeat_ms = 50\nelection_timeout_ms = 300\n'
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    # A key file that does not load stops the start, exit 64, naming the key.
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace(str(pki.server_key), str(tmp_path / "nope.key")))
    r = subprocess.run([str(roost_bin()), "serve", "--config", str(bad)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 64 and "http.tls_key" in r.stderr, r.stderr

    log = open(tmp_path / "roost.log", "w")
    proc = subprocess.Popen([str(roost_bin()), "serve", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    url = f"https://127.0.0.1:{http_port}"

    def get(path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(url + path, context=ctx, timeout=5) as r:
            return r.status, r.read()

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "roost.log").read_text()
        try:
            return get("/readyz")[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    try:
        wait_until(ready, timeout=20, what="/readyz over https")
        assert get("/healthz") == (200, b"ok\n")
        # Plain HTTP on that port gets no HTTP answer.
        with pytest.raises(Exception) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5)
        assert not isinstance(refused.value, urllib.error.HTTPError), refused.value

        # roost ctl: HTTPS with --ca; without it, no answer (exit 1, one line).
        ctl = [str(roost_bin()), "ctl", "--timeout-secs", "5"]
        r = subprocess.run([*ctl, "--ca", str(pki.ca), "--http", f"127.0.0.1:{http_port}",
                            "status", "--json"], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["node_id"] == 1
        r = subprocess.run([*ctl, "--ca", str(pki.ca), "--http",
                            f"https://localhost:{http_port}", "status"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([*ctl, "--http", f"127.0.0.1:{http_port}", "status"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 1 and r.stderr.startswith("roost ctl: "), r.stderr
        # A CA that did not sign the certificate: the handshake fails.
        other = Pki(tmp_path / "other-pki", name="Other CA")
        r = subprocess.run([*ctl, "--ca", str(other.ca), "--http", f"127.0.0.1:{http_port}",
                            "status"], capture_output=True, text=True, timeout=20)
        assert r.returncode == 1 and "TLS handshake" in r.stderr, r.stderr

        # SIGHUP re-reads the certificate: new handshakes get the new one.
        assert _served_cn(http_port, ctx) == "roost-test-server"
        pki.reissue_server()
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: _served_cn(http_port, ctx) == "roost-test-server-2",
                   timeout=10, what="the reissued admin certificate")
        assert get("/healthz") == (200, b"ok\n")
        # A graceful stop ends the HTTPS listener too.
        proc.terminate()
        assert proc.wait(timeout=15) == 0, (tmp_path / "roost.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def hs256_by_hand(claims: dict, secret: bytes) -> str:
    """An HS256 token made without PyJWT (which refuses a PEM public key as an HMAC secret):
    the algorithm-confusion attack on servers that take the algorithm from the token."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_json_web_tokens_signed_with_a_public_key(broker_factory, tmp_path, algorithm):
    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if algorithm == "ES256":
        key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "jwt-public.pem"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    b = broker_factory(allow_anonymous=False, extra_toml=(
        f'[auth]\njwt_key_file = "{public}"\njwt_algorithm = "{algorithm}"\n'
        'jwt_issuer = "https://auth.example"\n'))

    def token(signer, **claims):
        claims = {"sub": "car-7", "iss": "https://auth.example",
                  "exp": int(time.time()) + 600, **claims}
        return pyjwt.encode(claims, signer, algorithm=algorithm)

    ok = b.client("car-7", V5, username="x", password=token(key))
    assert clients(b)["car-7"]["auth"] == "token"
    # Another key, another issuer, and an HS256 token made with the public key as its secret
    # (the algorithm-confusion attack) are all refused.
    for bad in (token(other), token(key, iss="https://evil.example"),
                hs256_by_hand({"sub": "car-7", "exp": int(time.time()) + 600,
                               "iss": "https://auth.example"}, public.read_bytes())):
        r = b.client("car-8", V5, username="x", password=bad, expect_rc=None)
        assert r.connack_rc == BAD_CREDENTIALS
    ok.publish("t", b"x", qos=1)
