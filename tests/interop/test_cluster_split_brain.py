"""Split brain for sessions under a real network partition (issue 7 item 7; docs/architecture.md,
"Session lease").

Node 3 runs in its own network namespace with two links to the host: one its clients use
(MQTT and admin HTTP) and one its peers use (the cluster listeners of all three nodes are on
that link's subnet). Cutting the peer link (`ip link set ... down` inside the namespace: packets
are lost, nothing is reset) cuts node 3 off from the quorum while its clients still reach it,
which is the partition the issue measured: before the lease, node 3 kept serving its client for
the whole cut while the majority let the same client id connect elsewhere.

Needs root and iproute2 (`ip netns`), as CI has; skipped otherwise, with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid

import pytest

from cluster import WAIT, cluster_factory  # noqa: F401 (fixture)
from helpers import V5, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.roost_only]

# The default lease with the suite's fast elections (conftest: election_timeout_ms 300).
SESSION_LEASE_S = 4.0
TAKEOVER_WAIT_S = SESSION_LEASE_S * 9 / 8
# How late after its lease's end node 3 may close its clients: the last renewal before the
# cut may have started up to a renewal period (lease / 8) before it, plus scheduling.
LEASE_SLACK_S = 2.0
USE_ANOTHER_SERVER = 0x9C


def _ip(*args: str, ns: str | None = None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


class PeerLink:
    """A namespace for node 3 with a client link (subnet `client`) and a peer link (subnet
    `peer`) to the host; `cut()` / `heal()` take the peer link down and up."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        # Two /24s picked from 10.200-239.x from the tag, so parallel runs rarely collide.
        a, b = 200 + int(tag[:2], 16) % 40, int(tag[2:4], 16)
        self.ns = f"roost-sb-{tag}"
        self.client_host, self.client_node = f"10.{a}.{b}.1", f"10.{a}.{b}.2"
        self.peer_host, self.peer_node = f"10.{a}.{(b + 1) % 256}.1", f"10.{a}.{(b + 1) % 256}.2"
        self.links = [(f"rc{tag}", f"nc{tag}", self.client_host, self.client_node),
                      (f"rp{tag}", f"np{tag}", self.peer_host, self.peer_node)]
        _ip("netns", "add", self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        for outer, inner, host_ip, node_ip in self.links:
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", self.ns)
            _ip("addr", "add", f"{host_ip}/24", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("addr", "add", f"{node_ip}/24", "dev", inner, ns=self.ns)
            _ip("link", "set", inner, "up", ns=self.ns)
        self.peer_inner = self.links[1][1]

    def place(self, node):
        """Node 3 in the namespace; the others on the host, their cluster listeners on the
        peer link's subnet."""
        if node.node_id == 3:
            node.host, node.cluster_host = self.client_node, self.peer_node
            node.prefix = ["ip", "netns", "exec", self.ns]
            # Its admin API is on a non-loopback address: a token is required.
            node.token = uuid.uuid4().hex
        else:
            node.cluster_host = self.peer_host

    def cut(self):
        _ip("link", "set", self.peer_inner, "down", ns=self.ns)

    def heal(self):
        _ip("link", "set", self.peer_inner, "up", ns=self.ns)

    def close(self):
        for outer, *_ in self.links:
            subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)


@pytest.fixture
def peer_link():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (ip netns) for a real partition")
    link = PeerLink()
    try:
        yield link
    finally:
        link.close()


def test_a_cut_off_node_stops_serving_before_its_client_is_served_elsewhere(
        cluster_factory, peer_link):
    """A persistent client on node 3 and a publisher beside it; node 3's peer link goes down.
    The same client id connects to node 1: node 3 must have told its client to use another
    server (DISCONNECT 0x9C) before node 1 says CONNACK, must stop accepting its publisher's
    messages, and after the heal the client id is served by node 1 only."""
    cluster = cluster_factory(3, placement=peer_link.place)
    n1, n2, n3 = cluster.nodes
    old = n3.client("sb", V5, clean=False, session_expiry=300)
    assert old.subscribe("sb/t", 1) == [1]
    publisher = n3.client("sb-pub", V5)
    # Node 3's publisher keeps publishing to the old client across the cut; what node 3 still
    # acknowledges and delivers after the takeover would be the split brain.
    acked_after: list[float] = []
    stop = threading.Event()

    def publish():
        i = 0
        while not stop.is_set() and not publisher.disconnected.is_set():
            try:
                rc = publisher.publish("sb/t", f"{i}".encode(), qos=1, timeout=2)
            except AssertionError:
                rc = None
            if rc == 0:
                acked_after.append(time.monotonic())
            i += 1
            time.sleep(0.05)

    feeder = threading.Thread(target=publish, daemon=True)
    feeder.start()
    wait_until(lambda: len(acked_after) >= 5, 10, what="node 3's publisher running")

    peer_link.cut()
    t_cut = time.monotonic()
    new = n1.client("sb", V5, clean=False, session_expiry=300, connect=False)
    rc = new.connect(timeout=TAKEOVER_WAIT_S + 10)
    t_new = time.monotonic()
    assert rc == 0, f"CONNACK {rc:#x} for the client id on the majority side"
    print(f"node 1 accepted the client id {t_new - t_cut:.2f}s after the cut "
          f"(takeover wait {TAKEOVER_WAIT_S}s)")
    assert old.disconnected.is_set(), (
        f"two live sessions: node 1 accepted the client id {t_new - t_cut:.2f}s after the cut "
        f"while node 3 still served it")
    assert old.disconnect_rc == USE_ANOTHER_SERVER, old.disconnect_rc
    # Node 3's publisher was told to go too, no later than its lease allows.
    assert publisher.disconnected.wait(SESSION_LEASE_S + LEASE_SLACK_S), \
        "node 3's publisher still connected after the lease"
    assert publisher.disconnect_rc == USE_ANOTHER_SERVER, publisher.disconnect_rc
    stop.set()
    feeder.join(5)
    late = [t - t_cut for t in acked_after if t > t_new]
    assert not late, f"node 3 acknowledged publishes after the takeover: {late[:5]}"
    # Without the lease node 3 refuses CONNECTs (0x88 Server unavailable).
    refused = n3.client("sb-other", V5, connect=False)
    assert refused.connect(expect_rc=None, timeout=10) == 0x88

    peer_link.heal()
    cluster.wait_ready(cluster.nodes, timeout=WAIT)
    # The client id lives on node 1 alone; node 3 serves again.
    assert n1.is_connected("sb")
    wait_until(lambda: "sb" not in n3.clients(), WAIT,
               what="node 3 dropping its copy of the taken session")
    again = n3.client("sb-after", V5)
    remote = n2.client("sb-remote", V5)
    assert remote.publish("sb/t", b"after the heal", qos=1) == 0
    assert new.get().payload == b"after the heal"
    again.disconnect()
