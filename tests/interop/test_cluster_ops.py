"""Operating a cluster: membership changes at run time (admin API and `roost ctl join/leave`),
replacing a dead node, `roost ctl status` (text and `--json`), and `roost dev-cluster`."""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from cluster import HOST, _child_env, cluster_factory  # noqa: F401 (fixture)
from conftest import roost_bin
from helpers import Client, V5, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.roost_only]


def uniq(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def cid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(roost_bin()), "ctl", *args], capture_output=True, text=True,
                          timeout=timeout, env=_child_env())


def member_ids(node) -> set[int]:
    return {m["node_id"] for m in node.status()["members"]}


def assert_routes_between(src, dst):
    """A subscriber on `dst` gets a QoS 1 message published on `src`."""
    topic = uniq(f"route/{src.node_id}-{dst.node_id}")
    sub = dst.client(cid("sub"))
    sub.subscribe(topic, 1)
    assert src.client(cid("pub")).publish(topic, b"hop", qos=1) == 0
    m = sub.get()
    assert (m.topic, m.payload) == (topic, b"hop")


# ---- membership ------------------------------------------------------------------------------

def test_add_a_node_at_run_time_use_it_and_remove_it(cluster_factory):
    cluster = cluster_factory(3)
    a = cluster.nodes[0]
    d = cluster.add_node()  # joined through a follower's API
    assert d.node_id == 4
    for n in cluster.nodes:
        entry = {m["node_id"]: m for m in n.status()["members"]}[4]
        assert entry["cluster_addr"] == d.cluster_addr
        assert entry["mqtt_addr"] == d.mqtt_addr
        assert entry["voter"] is True
    # Retained state that predates the join reached it through the log or a snapshot.
    topic = uniq("pre-join")
    a.client(cid("p")).publish(topic, b"old", qos=1, retain=True)
    s = d.client(cid("s"))
    s.subscribe(topic, 1)
    assert s.get().payload == b"old"
    assert_routes_between(d, a)
    assert_routes_between(a, d)

    cluster.remove_node(d)
    for n in cluster.nodes:
        assert member_ids(n) == {1, 2, 3}
    assert_routes_between(cluster.nodes[1], cluster.nodes[2])


def test_replace_a_dead_node(cluster_factory):
    cluster = cluster_factory(3)
    dead = cluster.followers()[0]
    cluster.kill(dead)
    cluster.remove_node(dead)  # the two survivors are a majority of old and new config
    new = cluster.add_node()
    assert member_ids(new) == {n.node_id for n in cluster.nodes}
    assert len(cluster.nodes) == 3
    assert_routes_between(cluster.nodes[0], new)


def test_ctl_status_join_and_leave(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    follower = cluster.followers()[0]

    # status, human-readable
    r = ctl("--http", follower.http_addr, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"node {follower.node_id}: " in out.splitlines()[0]
    assert f"leader: node {leader.node_id}" in out
    for word in ("routes:", "sessions:", "retained messages:", "log index", "applied index"):
        assert word in out, f"{word!r} missing from:\n{out}"
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line
            for line in out.splitlines()[4:] if line.strip() and not line.startswith("(")}
    for n in cluster.nodes:
        row = rows.get(str(n.node_id))
        assert row is not None, f"node {n.node_id} not listed:\n{out}"
        assert n.cluster_addr in row and n.mqtt_addr in row and "healthy" in row
        assert row.startswith("*") == (n is leader), f"leader mark wrong:\n{out}"

    # status --json: the API's JSON, unchanged
    r = ctl("--http", f"http://{follower.http_addr}/", "status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["node_id"] == follower.node_id
    assert doc["leader_id"] == leader.node_id
    assert {m["node_id"] for m in doc["members"]} == {1, 2, 3}
    for key in ("term", "last_log_index", "applied_index", "state", "routes", "sessions",
                "retained"):
        assert key in doc, f"{key} missing from {doc}"

    # join through ctl, via a follower
    new = cluster.start_unjoined_node()
    r = ctl("--http", follower.http_addr, "join", f"{new.node_id}@{new.cluster_addr}",
            "--mqtt", new.mqtt_addr)
    assert r.returncode == 0, f"join failed: {r.stderr}\n{cluster.describe()}"
    assert f"node {new.node_id}" in r.stdout
    cluster.wait_ready()
    r = ctl("--http", new.http_addr, "status")
    assert r.returncode == 0 and new.cluster_addr in r.stdout, r.stdout + r.stderr
    assert_routes_between(new, leader)

    # leave through ctl, via the leader
    r = ctl("--http", leader.http_addr, "leave", str(new.node_id))
    assert r.returncode == 0, f"leave failed: {r.stderr}\n{cluster.describe()}"
    cluster.forget(new)
    cluster.wait_ready()
    r = ctl("--http", follower.http_addr, "status", "--json")
    assert {m["node_id"] for m in json.loads(r.stdout)["members"]} == {1, 2, 3}


def test_ctl_reports_an_unreachable_node_and_exits_1():
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        r = ctl("--http", f"{HOST}:{port}", "status")
    assert r.returncode == 1
    assert f"cannot reach roost at {HOST}:{port}" in r.stderr
    assert r.stdout == ""


# ---- roost dev-cluster --------------------------------------------------------------------

def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _free_base_port(nodes: int) -> int:
    for _ in range(100):
        base = random.randrange(20000, 60000)
        if all(_port_free(base + off + i) for off in (0, 100, 200) for i in range(nodes)):
            return base
    pytest.skip("no free block of ports for dev-cluster")


READY = re.compile(r"^node (\d+) ready: mqtt 127\.0\.0\.1:(\d+) http 127\.0\.0\.1:(\d+) "
                   r"cluster 127\.0\.0\.1:(\d+)$")


def test_dev_cluster_starts_three_nodes_and_stops_on_sigint(tmp_path):
    base = _free_base_port(3)
    data = tmp_path / "dev"
    proc = subprocess.Popen([str(roost_bin()), "dev-cluster", "--nodes", "3", "--base-port",
                             str(base), "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=_child_env())
    lines: queue.Queue = queue.Queue()
    output: list[str] = []

    def read():
        for line in proc.stdout:
            output.append(line)
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()

    def report() -> str:
        logs = "\n".join(f"---- {p.name} ----\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(Path(data).glob("node-*.log")))
        return "dev-cluster output:\n" + "".join(output) + "\n" + logs

    try:
        ready: dict[int, tuple[int, int, int]] = {}
        deadline = time.monotonic() + 40
        while len(ready) < 3:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"only {len(ready)} ready lines within 40s\n{report()}")
            assert line is not None, f"dev-cluster exited with {proc.wait()}\n{report()}"
            m = READY.match(line)
            if m:
                ready[int(m[1])] = (int(m[2]), int(m[3]), int(m[4]))
        assert ready == {i + 1: (base + i, base + 100 + i, base + 200 + i) for i in range(3)}

        # The three nodes form one cluster, and it carries messages between them.
        def one_cluster():
            r = ctl("--http", f"{HOST}:{base + 100}", "status", "--json", timeout=10)
            if r.returncode != 0:
                return False
            doc = json.loads(r.stdout)
            return doc["leader_id"] is not None and len(doc["members"]) == 3

        wait_until(one_cluster, 10, interval=0.2, what="dev cluster with 3 members and a leader")
        topic = uniq("dev")
        sub = Client(HOST, base + 1, cid("sub"), V5)
        pub = Client(HOST, base + 2, cid("pub"), V5)
        try:
            sub.subscribe(topic, 1)
            pub.publish(topic, b"hello", qos=1)
            assert sub.get().payload == b"hello"
        finally:
            sub.close()
            pub.close()

        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dev-cluster still running 30s after SIGINT\n{report()}")
        assert code == 0, f"exit code {code}\n{report()}"
        for i in range(3):
            for port in (base + i, base + 100 + i, base + 200 + i):
                with pytest.raises(OSError):
                    socket.create_connection((HOST, port), timeout=0.5).close()
        assert (data / "node-1").is_dir() and (data / "node-1.log").is_file()
    finally:
        # The nodes share the dev-cluster's process group: nothing outlives the test.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def test_dev_cluster_reports_a_node_that_dies_and_stops_the_others(tmp_path):
    """A node that exits on its own ends the dev cluster with exit 1 and a report. The node is
    made to die at start-up by taking its MQTT port first."""
    base = _free_base_port(2)
    blocker = socket.socket()
    blocker.bind((HOST, base + 1))
    blocker.listen()
    data = tmp_path / "dev"
    try:
        r = subprocess.run([str(roost_bin()), "dev-cluster", "--nodes", "2", "--base-port",
                            str(base), "--data-dir", str(data)], capture_output=True,
                           text=True, timeout=60, env=_child_env(), start_new_session=True)
    finally:
        blocker.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "node 2 exited unexpectedly" in r.stderr, r.stderr
    for port in (base, base + 100, base + 200):
        with pytest.raises(OSError):
            socket.create_connection((HOST, port), timeout=0.5).close()
