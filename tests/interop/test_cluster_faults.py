"""Cluster failures: the leader is killed while messages flow, a member restarts from its disk
state (after SIGTERM and after SIGKILL), and a lone node keeps its retained messages and
sessions across a restart; elections (issue 7 items 21 and 22, docs/rfcs/0004): a follower back
from an 8 s pause does not depose the leader, a killed leader is replaced and CONNECTs are
accepted again within a bound, and steady Raft traffic causes no election. Each test runs its
own cluster (they stop and kill nodes)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import pytest

from cluster import HOST, Cluster, attach_logs, cluster_factory  # noqa: F401 (fixture)
from helpers import CONNACK, V5, RawConn, connack_rc, connect_packet, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.roost_only]


def uniq(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_leader_kill_while_traffic_flows(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    sub_node, pub_node = [n for n in cluster.nodes if n is not leader]
    topic = uniq("lk")
    sub = sub_node.client(cid("sub"))
    sub.subscribe(topic, 1)
    pub = pub_node.client(cid("pub"))

    acked: list[tuple[int, float]] = []     # (sequence number, when its PUBACK arrived)
    refused: list[tuple[int, str]] = []     # no PUBACK, or a failure reason code
    stop = threading.Event()

    def publish_loop():
        seq = 0
        while not stop.is_set():
            try:
                rc = pub.publish(topic, str(seq).encode(), qos=1, timeout=10)
                if rc is not None and rc < 0x80:
                    acked.append((seq, time.monotonic()))
                else:
                    refused.append((seq, f"reason {rc:#x}"))
            except AssertionError as e:
                refused.append((seq, str(e)))
            seq += 1
            time.sleep(0.01)

    publisher = threading.Thread(target=publish_loop, daemon=True)
    publisher.start()
    try:
        wait_until(lambda: len(acked) >= 20, 10, what="traffic flowing before the kill")
        t_kill = time.monotonic()
        cluster.kill(leader)

        def new_leader():
            ids = {n.status().get("leader_id") for n in (sub_node, pub_node)}
            if len(ids) == 1 and None not in ids and leader.node_id not in ids:
                return ids.pop()
            return None

        new_id = wait_until(new_leader, 10, interval=0.05,
                            what=f"a leader other than node {leader.node_id} on both survivors")
        t_new = time.monotonic()
        # Keep publishing for 2 s after the new leader is known.
        wait_until(lambda: any(at > t_new + 2 for _, at in acked), 15,
                   what="publishes acknowledged after the new leader")
    finally:
        stop.set()
        publisher.join(15)

    acked_seqs = {s for s, _ in acked}
    received: set[int] = set()

    def all_in():
        for m in sub.drain():
            received.add(int(m.payload))
        return acked_seqs <= received

    try:
        wait_until(all_in, 10, what="every acknowledged message at the subscriber")
    except AssertionError:
        pass  # the assertions below say which ones are missing
    after = sorted(s for s, at in acked if at > t_new)
    during = sorted(s for s, at in acked if t_kill <= at <= t_new)
    missing_after = sorted(set(after) - received)
    missing_during = sorted(set(during) - received)
    print(f"new leader {new_id} after {t_new - t_kill:.2f}s; acked {len(acked)} "
          f"({len(during)} during the election, {len(after)} after), refused {len(refused)}, "
          f"lost during election {missing_during}")
    assert after, "no publish was acknowledged after the new leader was known"
    assert not missing_after, (
        f"{len(missing_after)} messages acknowledged after the new leader was known never "
        f"arrived: {missing_after[:20]}\n{cluster.describe()}")
    # Publishes between existing subscribers keep flowing during the election (routing reads
    # the local copy of the table): if the election took a while, some were delivered in it.
    if t_new - t_kill > 1.0:
        assert set(during) & received, (
            f"nothing acknowledged during the {t_new - t_kill:.1f}s election arrived")


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_node_restart_rejoins_from_its_data_dir_and_catches_up(cluster_factory, how):
    # Seeds without the node itself: the other accepted form of --seed.
    cluster = cluster_factory(3, seeds_include_self=False)
    node2 = cluster.nodes[1]
    others = [cluster.nodes[0], cluster.nodes[2]]
    pub = others[0].client(cid("pub"))
    pub.publish(uniq("before"), b"before", qos=1, retain=True)

    if how == "sigterm":
        assert cluster.stop(node2) == 0, "SIGTERM must stop a node cleanly (exit 0)"
    else:
        cluster.kill(node2)

    # The other two are a majority: retained publishes still commit.
    topic = uniq("while-down")
    # PUBACK with a success code (0x10 "no matching subscribers" included) once it committed.
    rc = pub.publish(topic, b"published while node 2 was down", qos=1, retain=True)
    assert rc < 0x80, f"retained publish refused with {rc:#x} while a majority is up"
    leader = cluster.leader()
    committed = leader.status()["applied_index"]

    cluster.restart(node2)

    def caught_up():
        mine = node2.status()
        lead = cluster.by_id(mine["leader_id"]).status()
        seen = {m["node_id"]: m for m in lead["members"]}
        return (mine["applied_index"] is not None and mine["applied_index"] >= committed
                and seen.get(node2.node_id, {}).get("healthy") is True)

    wait_until(caught_up, 20, interval=0.1,
               what=f"node 2 healthy and applied up to {committed}")
    s = node2.client(cid("late"))
    s.subscribe(topic, 1)
    m = s.get()
    assert (m.payload, m.retain) == (b"published while node 2 was down", True)

    # And it routes again both ways.
    live = uniq("after")
    s.subscribe(live, 1)
    pub.publish(live, b"to node 2", qos=1)
    assert s.get().payload == b"to node 2"
    back = others[1].client(cid("back"))
    back.subscribe(live, 1)
    s.publish(live, b"from node 2", qos=1)
    assert back.get().payload == b"from node 2"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.mark.parametrize("mode", ["seeded", "plain"])
def test_single_node_restart_keeps_retained_messages_and_sessions(request, tmp_path, mode):
    """A lone node is a cluster of one: the same on-disk state makes retained messages,
    sessions and their subscriptions survive a restart (as Mosquitto's persistence does).
    `seeded`: --node-id 1 --cluster ... --seed 1@itself. `plain`: no cluster flags at all."""
    if mode == "plain" and not _port_free(7946):
        pytest.skip("the default cluster port 127.0.0.1:7946 is in use on this machine")
    cluster = Cluster(1, tmp_path, start=False, cluster_flags=(mode == "seeded"))
    attach_logs(request, cluster)
    try:
        cluster.start()
        node = cluster.nodes[0]
        retained_topic = uniq("keep")
        node.client(cid("p")).publish(retained_topic, b"retained", qos=1, retain=True)
        root = uniq("ps")
        ps_id = cid("persistent")
        ps = node.client(ps_id, V5, clean=False, session_expiry=300)
        ps.subscribe(f"{root}/#", 1)
        ps.disconnect()

        assert cluster.stop(node) == 0
        cluster.restart(node)

        s = node.client(cid("s"))
        s.subscribe(retained_topic, 1)
        m = s.get()
        assert (m.payload, m.retain) == (b"retained", True)

        back = node.client(ps_id, V5, clean=False, session_expiry=300)
        assert back.session_present is True, "the persistent session did not survive"
        node.client(cid("p2")).publish(f"{root}/x", b"routed", qos=1)
        assert back.get().payload == b"routed"
    finally:
        cluster.close()


# ---- Issue 7 items 21 and 22: elections (docs/rfcs/0004-pre-vote-and-failover-timing.md) ----

# How long a follower is stopped (SIGSTOP), as in the report: a GC pause or a short partition.
PAUSE_S = 8.0
# Runs of pause/resume on one cluster (the RFC's measurement is 10 of 10); ~11 s each.
PAUSE_RUNS = int(os.environ.get("ROOST_PAUSE_RUNS", "10"))
# After SIGCONT, how long every node's leader and term are watched. A returning node acts at
# once (its election timer expired while it was stopped): the old code deposed the leader
# within a few hundred ms of the resume.
WATCH_AFTER_RESUME_S = 2.5


def _leader_and_term(node) -> tuple[int | None, int] | None:
    """(leader id, term) from the node's /api/v1/cluster, None when it does not answer."""
    try:
        s = node.status()
    except (OSError, AssertionError):
        return None
    return s.get("leader_id"), s.get("term")


def test_follower_back_from_a_pause_does_not_depose_the_leader(cluster_factory):
    """Item 21: no leader change, and no term change anywhere, when a follower comes back from
    an 8 s SIGSTOP; PAUSE_RUNS times, alternating followers. Without pre-vote the returning
    node stood at a higher term and the leader's next AppendEntries to it was answered with
    that term: the leader stepped down."""
    cluster = cluster_factory(3)
    outcomes = []
    for run in range(PAUSE_RUNS):
        leader_id = cluster.wait_ready()
        leader = cluster.by_id(leader_id)
        term = leader.status()["term"]
        followers = [n for n in cluster.nodes if n is not leader]
        paused = followers[run % 2]
        cluster.pause(paused)
        time.sleep(PAUSE_S)
        cluster.resume(paused)
        seen: set[tuple[int, int | None, int]] = set()
        end = time.monotonic() + WATCH_AFTER_RESUME_S
        while time.monotonic() < end:
            for n in cluster.nodes:
                lt = _leader_and_term(n)
                if lt is not None:
                    seen.add((n.node_id, *lt))
            time.sleep(0.05)
        final = cluster.wait_ready()
        other_leaders = sorted({l for _, l, _ in seen if l not in (None, leader_id)})
        terms = sorted({t for _, _, t in seen})
        changed = final != leader_id or bool(other_leaders) or terms != [term]
        outcomes.append((run, paused.node_id, leader_id, final, other_leaders, term, terms))
        print(f"run {run}: paused node {paused.node_id}; leader {leader_id} -> {final}, "
              f"other leaders seen {other_leaders}, term {term} -> seen {terms}"
              f"{'  LEADER DISRUPTED' if changed else ''}")
    disrupted = [o for o in outcomes
                 if o[3] != o[2] or o[4] or o[6] != [o[5]]]
    assert not disrupted, (
        f"the leader was disrupted in {len(disrupted)} of {len(outcomes)} runs "
        f"(run, paused, leader before, leader after, other leaders seen, term, terms seen): "
        f"{disrupted}\n{cluster.describe()}")


# Kill/measure rounds for item 22; each restarts the killed node (~5 s a round).
FAILOVER_RUNS = int(os.environ.get("ROOST_FAILOVER_RUNS", "3"))
# Generous bound on the median time from SIGKILL of the leader to CONNACK 0x00 on a survivor.
# The defaults give about 1.1-1.5 s on loopback (RFC 0004); the old defaults could not do better
# than 3 s (lease 2 s + election timeout >= 1 s before a follower even stood; measured 3.4-4.6
# s). The median, not every run: one run slowed by a loaded machine is not a regression.
FAILOVER_BOUND_S = float(os.environ.get("ROOST_FAILOVER_BOUND_S", "3.0"))


def _connect_accepted(node, deadline: float) -> float | None:
    """CONNECTs (v5, clean start, fresh client id) to `node` until one gets CONNACK 0x00;
    returns when (time.monotonic()), None at `deadline`."""
    while time.monotonic() < deadline:
        conn = None
        try:
            conn = RawConn(HOST, node.mqtt_port, timeout=2.0)
            conn.send(connect_packet(cid("fo"), V5, clean=True))
            p = conn.read_packet(timeout=max(deadline - time.monotonic(), 0.01))
            if p is not None and p.ptype == CONNACK and connack_rc(p) == 0:
                return time.monotonic()
        except (OSError, TimeoutError):
            pass
        finally:
            if conn is not None:
                conn.close()
        time.sleep(0.02)
    return None


def test_leader_kill_to_accepted_connect_is_quick(cluster_factory):
    """Item 22: SIGKILL the leader; a CONNECT to a survivor gets CONNACK 0x00 (within
    FAILOVER_BOUND_S in the median run), the survivors agree on a new leader, and the killed
    node rejoins."""
    cluster = cluster_factory(3)
    times = []
    for run in range(FAILOVER_RUNS):
        leader = cluster.leader()
        survivors = [n for n in cluster.nodes if n is not leader]
        target = survivors[run % 2]
        assert _connect_accepted(target, time.monotonic() + 5) is not None, \
            "CONNECT not accepted before the kill"
        t_kill = time.monotonic()
        cluster.kill(leader)
        t_ok = _connect_accepted(target, t_kill + 20)
        assert t_ok is not None, f"no CONNACK 0x00 from node {target.node_id} within 20 s\n" \
                                 f"{cluster.describe()}"
        new_id = cluster.wait_ready(survivors)
        assert new_id != leader.node_id
        times.append(t_ok - t_kill)
        print(f"run {run}: killed leader {leader.node_id}; CONNACK 0x00 from node "
              f"{target.node_id} after {t_ok - t_kill:.2f}s; new leader {new_id}")
        cluster.restart(leader)
    print(f"kill -> CONNACK 0x00: {', '.join(f'{t:.2f}s' for t in times)}")
    median = sorted(times)[len(times) // 2]
    assert median <= FAILOVER_BOUND_S, f"median failover over {FAILOVER_BOUND_S}s: {times}"


# How long Raft is kept busy in the no-spurious-election check.
LOAD_S = 6.0


def test_no_election_while_raft_is_busy(cluster_factory):
    """Item 22's other half: the shorter default timeouts cause no election while every node
    commits steadily (each CONNECT claims a session, each SUBSCRIBE to a new filter adds a
    route: both are Raft entries) and forwards QoS 1 traffic."""
    cluster = cluster_factory(3)
    leader_id = cluster.wait_ready()
    term = cluster.by_id(leader_id).status()["term"]
    stop = threading.Event()
    errors: list[str] = []
    done = [0]

    def churn(node):
        while not stop.is_set():
            try:
                c = node.client(cid("load"))
                t = uniq("load")
                c.subscribe(t, 1)
                c.publish(t, b"x" * 512, qos=1)
                c.get()
                c.disconnect()
                done[0] += 1
            except Exception as e:  # noqa: BLE001 (recorded, asserted below)
                errors.append(f"node {node.node_id}: {e}")

    threads = [threading.Thread(target=churn, args=(n,), daemon=True)
               for n in cluster.nodes for _ in range(2)]
    for th in threads:
        th.start()
    seen = set()
    end = time.monotonic() + LOAD_S
    while time.monotonic() < end:
        for n in cluster.nodes:
            lt = _leader_and_term(n)
            if lt is not None:
                seen.add(lt)
        time.sleep(0.05)
    stop.set()
    for th in threads:
        th.join(15)
    print(f"{done[0]} connect/subscribe/publish rounds in {LOAD_S}s; (leader, term) seen: "
          f"{sorted(seen, key=str)}")
    assert done[0] > 0, f"no round completed: {errors[:5]}"
    assert seen == {(leader_id, term)}, f"an election under load: {sorted(seen, key=str)}"
    assert not errors, errors[:5]
