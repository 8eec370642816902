"""Cluster behaviour seen by MQTT clients on different nodes of one 3-node cluster: QoS across
nodes, wildcards, `$share` groups spanning nodes, retained and will messages, subscribe-then-
publish ordering (SUBACK after the route commits), session takeover between nodes and
simultaneous connects with one client id.

These tests share one cluster (`cluster3`, module scoped) and never stop a node; each uses its
own topics and client ids. Destructive tests (leader kill, restarts, membership) are in
test_cluster_faults.py and test_cluster_ops.py.
"""

from __future__ import annotations

import struct
import threading
import time
import uuid

import pytest

from cluster import (Cluster, attach_logs, cluster3, cluster_factory,  # noqa: F401 (fixtures)
                     module_cluster3)
from helpers import (CONNACK, DISCONNECT, PROP_SESSION_EXPIRY, PUBACK, SUBACK, V311, V5,
                     VERSION_IDS, VERSIONS, connack_rc, connect_packet, prop, publish_packet,
                     subscribe_packet, wait_until)

pytestmark = [pytest.mark.cluster, pytest.mark.roost_only]


def uniq(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---- publish on one node, receive on the others ---------------------------------------------

@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_qos_across_nodes(cluster3, pub_qos, sub_qos):
    a, b, c = cluster3.nodes
    topic = uniq("q")
    subs = [b.client(cid("sub-b")), c.client(cid("sub-c"))]
    for s in subs:
        assert s.subscribe(topic, sub_qos) == [sub_qos]
    pub = a.client(cid("pub-a"))
    payloads = [f"m{i}".encode() for i in range(10)]
    for p in payloads:
        rc = pub.publish(topic, p, qos=pub_qos)
        if pub_qos:
            assert rc == 0, f"PUBACK/PUBCOMP reason {rc:#x}"
    for s in subs:
        got = s.get_n(len(payloads))
        assert [m.payload for m in got] == payloads, "lost, duplicated or reordered"
        assert {m.qos for m in got} == {min(pub_qos, sub_qos)}
        assert all(m.topic == topic and not m.retain for m in got)
        s.expect_nothing(0.2)


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_subscriber_on_publisher_node_and_remote_nodes_each_get_one_copy(cluster3, version):
    a, b, c = cluster3.nodes
    topic = uniq("fan")
    subs = [n.client(cid(f"s{n.node_id}"), version) for n in (a, b, c)]
    for s in subs:
        s.subscribe(topic, 1)
    a.client(cid("p"), version).publish(topic, b"x", qos=1)
    for s in subs:
        assert s.get().payload == b"x"
        s.expect_nothing(0.3)


def test_wildcards_across_nodes(cluster3):
    a, b, c = cluster3.nodes
    root = uniq("w")
    plus = b.client(cid("plus"))
    plus.subscribe(f"{root}/+/temp", 1)
    hash_ = c.client(cid("hash"))
    hash_.subscribe(f"{root}/#", 1)
    deep = b.client(cid("deep"))
    deep.subscribe(f"{root}/a/#", 1)
    other = c.client(cid("other"))
    other.subscribe(f"{root}/+/humidity", 1)

    pub = a.client(cid("pub"))
    topics = [f"{root}/x/temp", f"{root}/a/temp", f"{root}/a/b/c", f"{root}", f"{root}/y/z"]
    for t in topics:
        pub.publish(t, t.encode(), qos=1)

    def received(client, n):
        return sorted(m.topic for m in client.get_n(n))

    assert received(plus, 2) == sorted([f"{root}/x/temp", f"{root}/a/temp"])
    # `#` also matches the parent level itself [MQTT-4.7.1-2].
    assert received(hash_, 5) == sorted(topics)
    assert received(deep, 2) == sorted([f"{root}/a/temp", f"{root}/a/b/c"])
    for s in (plus, hash_, deep, other):
        s.expect_nothing(0.2)


def test_unsubscribe_on_remote_node_stops_forwarding(cluster3):
    a, b, _ = cluster3.nodes
    topic = uniq("unsub")
    sub = b.client(cid("sub"))
    sub.subscribe(topic, 1)
    pub = a.client(cid("pub"))
    pub.publish(topic, b"1", qos=1)
    assert sub.get().payload == b"1"
    sub.unsubscribe(topic)
    pub.publish(topic, b"2", qos=1)
    sub.expect_nothing(0.5)


# ---- shared subscriptions ---------------------------------------------------------------

@pytest.mark.parametrize("qos", [0, 1])
def test_shared_group_spanning_nodes_delivers_each_message_once(cluster3, qos):
    a, b, c = cluster3.nodes
    topic = uniq("sh")
    group = f"$share/g{uuid.uuid4().hex[:6]}/{topic}"
    members = [b.client(cid("m-b")), c.client(cid("m-c"))]
    for m in members:
        m.subscribe(group, 1)
    plain = c.client(cid("plain"))
    plain.subscribe(topic, 1)

    pub = a.client(cid("pub"))
    sent = [f"{i}".encode() for i in range(20)]
    for p in sent:
        pub.publish(topic, p, qos=qos)

    # Every message reaches exactly one member; the plain subscriber gets all of them.
    assert sorted(m.payload for m in plain.get_n(20)) == sorted(sent)
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 20 and time.monotonic() < deadline:
        for m in members:
            got += [x.payload for x in m.drain()]
        time.sleep(0.05)
    for m in members:
        got += [x.payload for x in m.drain(settle=0.3)]
    assert sorted(got) == sorted(sent), (
        f"group got {len(got)} deliveries for 20 messages: "
        f"missing {sorted(set(sent) - set(got))}, "
        f"duplicated {sorted(p for p in set(got) if got.count(p) > 1)}")


# ---- retained and will messages ---------------------------------------------------------

@pytest.mark.parametrize("qos", [0, 1])
def test_retained_published_on_one_node_seen_by_subscribers_on_others(cluster3, qos):
    a, b, c = cluster3.nodes
    topic = uniq("ret")
    pub = a.client(cid("pub"))
    pub.publish(topic, b"kept", qos=1, retain=True)  # acked after SetRetained commits
    for node in (b, c, a):
        s = node.client(cid(f"s{node.node_id}"))
        s.subscribe(topic, qos)
        m = s.get()
        assert (m.topic, m.payload, m.retain) == (topic, b"kept", True)
        assert m.qos == qos

    # A newer retained message replaces it everywhere; an empty one clears it.
    pub.publish(topic, b"newer", qos=1, retain=True)
    s = c.client(cid("s-newer"))
    s.subscribe(topic, 1)
    assert s.get().payload == b"newer"
    pub.publish(topic, b"", qos=1, retain=True)
    s = b.client(cid("s-cleared"))
    s.subscribe(topic, 1)
    s.expect_nothing(0.5)


def test_retained_wildcard_subscription_on_another_node(cluster3):
    a, b, _ = cluster3.nodes
    root = uniq("retw")
    pub = a.client(cid("pub"))
    for leaf in ("one", "two", "three"):
        pub.publish(f"{root}/{leaf}", leaf.encode(), qos=1, retain=True)
    s = b.client(cid("s"))
    s.subscribe(f"{root}/+", 1)
    got = {m.topic: (m.payload, m.retain) for m in s.get_n(3)}
    assert got == {f"{root}/{x}": (x.encode(), True) for x in ("one", "two", "three")}


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_will_of_a_client_on_one_node_reaches_a_subscriber_on_another(cluster3, version):
    a, b, _ = cluster3.nodes
    topic = uniq("will")
    watcher = b.client(cid("watcher"), version)
    watcher.subscribe(topic, 1)
    dying = a.client(cid("dying"), version,
                     will={"topic": topic, "payload": b"gone", "qos": 1, "retain": False})
    dying.drop()
    m = watcher.get(timeout=10)
    assert (m.topic, m.payload, m.qos) == (topic, b"gone", 1)


# ---- SUBACK after commit: subscribe-then-publish never loses the first message ----------

def test_publish_right_after_suback_on_another_node_is_never_lost(cluster3):
    nodes = cluster3.nodes
    pairs = [(s, p) for s in nodes for p in nodes if s is not p]
    subs = {n.node_id: n.client(cid(f"sub{n.node_id}")) for n in nodes}
    pubs = {n.node_id: n.client(cid(f"pub{n.node_id}")) for n in nodes}
    lost = []
    for i in range(20):
        sub_node, pub_node = pairs[i % len(pairs)]
        topic = uniq(f"stp/{i}")
        qos = 1 if i % 2 == 0 else 0
        assert subs[sub_node.node_id].subscribe(topic, 1) == [1]
        # No sleep: the publish follows the SUBACK as closely as the test can make it.
        pubs[pub_node.node_id].publish(topic, f"first-{i}".encode(), qos=qos)
        try:
            m = subs[sub_node.node_id].get(timeout=5)
            assert (m.topic, m.payload) == (topic, f"first-{i}".encode())
        except AssertionError as e:
            lost.append(f"#{i} sub on node {sub_node.node_id}, pub on node "
                        f"{pub_node.node_id}, qos {qos}: {e}")
    assert not lost, "first message after SUBACK lost:\n" + "\n".join(lost)


def test_second_subscriber_to_a_route_in_flight_waits_for_it_too(cluster3):
    """Two clients on one node subscribe to the same new filter at nearly the same time: the
    second SUBACK must also wait for the route, so a publish on another node right after it
    is delivered (found by benches' subscribe-latency --shared-filter-fraction)."""
    sub_node, pub_node = cluster3.nodes[1], cluster3.nodes[2]
    pub = pub_node.client(cid("pub2nd"))
    lost = []
    for i in range(10):
        topic = uniq(f"second/{i}")
        first = sub_node.client(cid("first"))
        second = sub_node.client(cid("second"))
        t = threading.Thread(target=first.subscribe, args=(topic, 1))
        t.start()
        assert second.subscribe(topic, 1) == [1]
        pub.publish(topic, f"m{i}".encode(), qos=1)
        try:
            m = second.get(timeout=5)
            assert m.payload == f"m{i}".encode()
        except AssertionError as e:
            lost.append(f"#{i}: {e}")
        t.join(10)
        first.disconnect()
        second.disconnect()
    assert not lost, "publish after the second SUBACK lost:\n" + "\n".join(lost)


def test_pubacks_stay_in_publish_order_while_peers_are_waited_for(cluster3):
    """PUBACKs for messages forwarded to another node wait for that node, PUBACKs for local
    ones do not need to: sent in one burst, all must still come back in PUBLISH order, and the
    remote subscriber gets its messages in order ([MQTT-4.6.0-2]). The burst stays within our
    Receive Maximum (32): one more unacknowledged PUBLISH is DISCONNECT 0x93 ([MQTT-3.3.4-9])."""
    pub_node, sub_node = cluster3.nodes[0], cluster3.nodes[1]
    remote_topic, local_topic = uniq("order/remote"), uniq("order/nobody")
    sub = sub_node.client(cid("ordsub"))
    assert sub.subscribe(remote_topic, 1) == [1]
    raw = pub_node.raw()
    raw.connect(cid("ordpub"))
    burst = b""
    for pid in range(1, 31):
        topic = remote_topic if pid % 2 else local_topic
        burst += publish_packet(topic, f"m{pid}".encode(), qos=1, pid=pid)
    raw.send(burst)
    acked = []
    while len(acked) < 30:
        p = raw.read_packet()
        assert p is not None, f"closed after {len(acked)} PUBACKs"
        if p.ptype == PUBACK:
            acked.append(struct.unpack("!H", p.body[:2])[0])
    assert acked == list(range(1, 31))
    got = [sub.get(timeout=5).payload for _ in range(15)]
    assert got == [f"m{pid}".encode() for pid in range(1, 31, 2)]


# ---- session takeover between nodes --------------------------------------------------------

def test_takeover_moves_queued_messages_to_the_new_node_once_in_order(cluster3):
    a, b, c = cluster3.nodes
    topic = uniq("tk")
    client_id = cid("mover")
    first = a.client(client_id, V5, clean=False, session_expiry=300)
    first.subscribe(topic, 1)
    first.disconnect()

    pub = c.client(cid("pub"))
    sent = [f"queued-{i}".encode() for i in range(5)]
    for p in sent:
        assert pub.publish(topic, p, qos=1) == 0

    second = b.client(client_id, V5, clean=False, session_expiry=300)
    assert second.session_present is True, "session present must be 1 after takeover"
    got = second.get_n(5, timeout=10)
    assert [m.payload for m in got] == sent
    second.expect_nothing(1.0)

    # The subscription moved with the session: B serves it now, A no longer does.
    pub.publish(topic, b"after", qos=1)
    assert second.get().payload == b"after"
    second.expect_nothing(0.5)
    wait_until(lambda: b.is_connected(client_id), 5, what="client listed connected on B")
    assert not a.is_connected(client_id)


def test_live_takeover_disconnects_the_old_connection_with_0x8e(cluster3):
    a, b, _ = cluster3.nodes
    client_id = cid("live")
    topic = uniq("live")
    old = a.raw()
    ack = old.connect(client_id, 5, clean=False,
                      properties=prop(PROP_SESSION_EXPIRY, struct.pack("!I", 300)))
    assert connack_rc(ack) == 0

    new = b.client(client_id, V5, clean=False, session_expiry=300)
    assert new.session_present is True
    packets = old.packets_until_close(timeout=10)
    disconnects = [p for p in packets if p.ptype == DISCONNECT]
    assert disconnects, f"old connection closed without DISCONNECT: {packets}"
    assert disconnects[-1].reason() == 0x8E, (
        f"DISCONNECT reason {disconnects[-1].reason():#x}, expected 0x8E session taken over")

    new.subscribe(topic, 1)
    a.client(cid("pub")).publish(topic, b"to the new owner", qos=1)
    assert new.get().payload == b"to the new owner"
    wait_until(lambda: b.is_connected(client_id) and not a.is_connected(client_id), 5,
               what="client connected on B only")


def test_v311_takeover_across_nodes_closes_the_old_connection(cluster3):
    a, b, _ = cluster3.nodes
    client_id = cid("v3")
    old = a.client(client_id, V311, clean=False)
    new = b.client(client_id, V311, clean=False)
    old.wait_disconnected(timeout=10)
    assert new.session_present is True


@pytest.mark.parametrize("round_", range(5))
def test_simultaneous_connects_with_one_id_leave_exactly_one_session(cluster3, round_):
    a, b, _ = cluster3.nodes
    client_id = cid(f"twin{round_}")
    conns = {a.node_id: a.raw(), b.node_id: b.raw()}
    barrier = threading.Barrier(2)
    connacks: dict[int, object] = {}

    def connect(node_id):
        barrier.wait(5)
        conns[node_id].send(connect_packet(client_id, 5, clean=True))
        try:
            connacks[node_id] = conns[node_id].read_packet(timeout=10)
        except TimeoutError:
            connacks[node_id] = "timeout"

    threads = [threading.Thread(target=connect, args=(n,)) for n in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)

    def connected_on():
        return [n.node_id for n in (a, b) if n.is_connected(client_id)]

    def exactly_one():
        return len(connected_on()) == 1

    wait_until(exactly_one, 10, interval=0.1,
               what=f"{client_id!r} connected on exactly one node (connacks {connacks})")
    # ... and it stays that way: never two live sessions for one id.
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        on = connected_on()
        assert len(on) == 1, f"{client_id!r} connected on nodes {on}"
        time.sleep(0.1)
    winner = connected_on()[0]
    loser = b.node_id if winner == a.node_id else a.node_id
    ack = connacks.get(winner)
    assert getattr(ack, "ptype", None) == CONNACK and connack_rc(ack) == 0, (
        f"winner on node {winner} got {ack}")
    # The loser's socket is closed (after CONNACK + DISCONNECT 0x8E, or a refusing CONNACK).
    conns[loser].packets_until_close(timeout=10)
    # The winner's socket is still open: no packet and no close within a short wait.
    with pytest.raises(TimeoutError):
        conns[winner].read_packet(timeout=0.3)


# ---- issue 7, item 8: claim races -----------------------------------------------------------

def _persistent_connect(client_id: str) -> bytes:
    return connect_packet(client_id, 5, clean=False,
                          properties=prop(PROP_SESSION_EXPIRY, struct.pack("!I", 300)))


def test_item8_the_node_that_loses_a_simultaneous_claim_keeps_no_copy_and_no_route(
        cluster_factory):
    """Issue 7 item 8: a persistent session with a subscription is connected on C; its client
    connects to A and B at the same moment. The later claim wins; the node whose claim lost
    kicks its connection and keeps nothing: no session (not even offline), no index entry, no
    route. To make the old code's window wide and the test deterministic, the connection on C
    is held in backpressure (it published to a subscriber that acknowledges nothing), so C's
    hand-over to the first claimer waits for it (half the forward timeout); meanwhile the
    second claim commits and its TakeSession finds nothing on the first claimer yet. The old
    code then built the first claimer's copy anyway (subscription, route) and only kicked the
    connection: the copy stayed until it expired."""
    cluster = cluster_factory(3, config={
        "mqtt": {"max_queued_messages": 4, "backpressure_timeout_ms": 4000},
        "cluster": {"forward_timeout_ms": 3000},
    })
    a, b, c = cluster.nodes
    client_id = cid("i8race")
    topic = uniq("i8race")
    slow_topic = uniq("i8slow")

    # A subscriber on C that takes one message in flight (Receive Maximum 1) and acks nothing.
    slow = c.raw()
    ack = slow.connect(cid("slow"), 5, properties=prop(0x21, struct.pack("!H", 1)))
    assert connack_rc(ack) == 0
    slow.send(subscribe_packet(1, [(slow_topic, 1)]))
    assert slow.read_packet().ptype == SUBACK

    # The persistent session on C: subscribed, then stuck publishing to the slow subscriber.
    owner = c.raw()
    assert connack_rc(owner.connect(client_id, 5, clean=False, properties=prop(
        PROP_SESSION_EXPIRY, struct.pack("!I", 300)))) == 0
    owner.send(subscribe_packet(1, [(topic, 1)]))
    assert owner.read_packet().ptype == SUBACK
    owner.send(b"".join(publish_packet(slow_topic, b"p", qos=1, pid=i) for i in range(2, 7)))
    time.sleep(0.3)

    conns = {a.node_id: a.raw(), b.node_id: b.raw()}
    barrier = threading.Barrier(2)
    connacks: dict[int, object] = {}

    def connect(node_id):
        barrier.wait(5)
        conns[node_id].send(_persistent_connect(client_id))
        try:
            connacks[node_id] = conns[node_id].read_packet(timeout=15)
        except TimeoutError:
            connacks[node_id] = "timeout"

    threads = [threading.Thread(target=connect, args=(n,)) for n in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert all(getattr(p, "ptype", None) == CONNACK for p in connacks.values()), connacks

    def connected_on():
        return [n for n in (a, b) if n.is_connected(client_id)]

    wait_until(lambda: len(connected_on()) == 1, 10, interval=0.1,
               what=f"{client_id!r} connected on exactly one node (connacks {connacks})")
    winner = connected_on()[0]
    loser = b if winner is a else a
    conns[loser.node_id].packets_until_close(timeout=10)

    def loser_keeps_nothing():
        return (client_id not in loser.clients()
                and not [s for s in loser.get_json("/api/v1/subscriptions")
                         if s["client_id"] == client_id]
                and loser.get_json("/api/v1/stats")["subscriptions"] == 0)

    # Well within the old code's stale-copy timer (twice the forward timeout).
    wait_until(loser_keeps_nothing, 3, interval=0.1,
               what=f"node {loser.node_id} (lost the claim) dropped its copy of {client_id!r}: "
                    f"{loser.clients().get(client_id)}, stats {loser.get_json('/api/v1/stats')}")
    # Two routes: the winner's for the session's topic, C's for the slow subscriber. (C also
    # keeps one for the session's topic while its tombstone of the handed-over session lives,
    # commit + lease + forward timeouts = 12 s here, docs/rfcs/0006; the loser never has one.)
    wait_until(lambda: all(n.status()["routes"] <= 3 for n in cluster.nodes), 5, interval=0.1,
               what=f"at most three route entries, {[n.status()['routes'] for n in cluster.nodes]}")
    wait_until(lambda: all(n.status()["routes"] == 2 for n in cluster.nodes), 20, interval=0.2,
               what=f"two route entries, {[n.status()['routes'] for n in cluster.nodes]}")
    assert winner.get_json("/api/v1/stats")["subscriptions"] == 1
    for conn in [slow, owner, *conns.values()]:
        conn.close()


def claims_given_up_on_leave_the_session(request, tmp_path, tag, attempts):
    """Node B waits 1 ms for commits (`cluster.commit_timeout_ms`), so `attempts` CONNECTs
    that reach it at once each hear CONNACK 0x88 while their claims still commit a moment
    later. A (the owner until then) must keep the session and its queued message."""
    fast = {"cluster": {"forward_timeout_ms": 500}}
    cluster = Cluster(3, tmp_path / "cluster", config=fast, start=False)
    a, b, c = cluster.nodes
    b.config = {"cluster": {"forward_timeout_ms": 500, "commit_timeout_ms": 1}}
    attach_logs(request, cluster)
    try:
        cluster.start()
        client_id = cid(tag)
        topic = uniq(tag)
        first = a.client(client_id, V5, clean=False, session_expiry=300)
        first.subscribe(topic, 1)
        first.disconnect()
        pub = c.client(cid("pub"))
        assert pub.publish(topic, b"queued", qos=1) == 0

        acks = {}

        def try_b(i):
            late = b.raw()
            acks[i] = late.connect(client_id, 5, clean=False,
                                   properties=prop(PROP_SESSION_EXPIRY, struct.pack("!I", 300)))
            late.close()

        threads = [threading.Thread(target=try_b, args=(i,)) for i in range(attempts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        rcs = [connack_rc(acks.get(i)) for i in range(attempts)]
        assert rcs == [0x88] * attempts, f"expected CONNACK 0x88 from B each time, got {acks}"
        # Past A's stale-copy timer (2 x 500 ms) for the late claims.
        time.sleep(2.5)

        back = a.client(client_id, V5, clean=False, session_expiry=300)
        assert back.session_present is True
        assert back.get(timeout=5).payload == b"queued"
        back.expect_nothing(0.5)
        assert pub.publish(topic, b"live", qos=1) == 0
        assert back.get(timeout=5).payload == b"live"
    finally:
        cluster.close()


def test_two_claims_given_up_on_in_a_row_do_not_take_the_session_when_they_commit_later(
        request, tmp_path):
    """Issue 8 (chaos `takeover` workload, seed 21): a client that tries a cut-off node twice
    leaves two claims there that time out (CONNACK 0x88) and commit in a row once the node is
    back. The first was handed back to the owner, but that hand-back names the first claim's
    generation and the second claim superseded it, so it was ignored; the second was not
    handed back at all (its entry was used up): the owner's copy was dropped as stale, with
    its queued messages."""
    claims_given_up_on_leave_the_session(request, tmp_path, "twolate", attempts=2)


def test_item8_a_claim_given_up_on_does_not_take_the_session_when_it_commits_later(
        request, tmp_path):
    """Issue 7 item 8: B hands the late claim back, A keeps the session and its queued
    message. The old code let the late claim stand: A dropped its copy (stale-copy timer,
    twice the forward timeout) and the queued message with it."""
    claims_given_up_on_leave_the_session(request, tmp_path, "i8late", attempts=1)
