"""A harness for cluster tests: N real `roost serve` processes on loopback, as an operator runs
them (`--node-id`, `--mqtt`, `--http`, `--cluster`, `--data-dir`, `--seed ID@ADDR`).

    cluster = Cluster(3, tmp_path)          # started; every /readyz is 200, one agreed leader
    a, b, c = cluster.nodes                 # Node: mqtt_port, http_port, cluster_port, node_id
    sub = b.client("sub")                   # helpers.Client on that node, closed at teardown
    cluster.leader()                        # the Node every live member names as leader
    cluster.kill(0); cluster.stop(1)        # SIGKILL / SIGTERM
    cluster.pause(2); cluster.resume(2)     # SIGSTOP / SIGCONT (a node cut off, then back)
    cluster.restart(1)                      # same ports and data dir; waits until it rejoined
    cluster.wait_caught_up(1)               # it applied up to its leader's index
    d = cluster.add_node()                  # fresh node, joined through a member's HTTP API
    cluster.remove_node(d)                  # DELETE through another member, then stopped
    cluster.status(0)                       # GET /api/v1/cluster of that node

Nodes are addressed by index into `cluster.nodes` (0-based; node id = index + 1 for the initial
members) or by the `Node` itself. Every wait is bounded (polls with short sleeps, at most
`WAIT` seconds unless a test asks otherwise).

Fixtures (import them into a test module: `from cluster import cluster_factory`):

* `cluster_factory(n, **kw)`: a fresh cluster for this test, stopped at teardown.

A paused node (SIGSTOP) still runs but answers nothing: `alive_nodes()`, `leader()` and
`wait_ready()` leave it out, `describe()` only says it is paused, and teardown resumes it before
stopping it (a stopped process does not act on SIGTERM).

Every node writes to its own log file; on a failing test the conftest report hook attaches each
node's log tail (the nodes are registered in the item's stash under conftest's key, the same
way `broker_factory` registers brokers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import _brokers_key, free_port, roost_bin
from helpers import Client, RawConn, V5

HOST = "127.0.0.1"
# Upper bound for cluster-level convergence: start-up, election, a rejoin catching up.
WAIT = 20.0
STOP_GRACE = 10.0
POLL = 0.05

# Loopback requests never go through an HTTP proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _child_env() -> dict[str, str]:
    """The test process's environment without ROOST_* settings (they would reconfigure every
    node), plus backtraces."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    env["RUST_BACKTRACE"] = "1"
    return env


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _poll(predicate, timeout: float, what: str, on_timeout=None):
    """Calls `predicate` until truthy (returned) or `timeout` s passed (AssertionError naming
    `what` and, if given, `on_timeout()`'s text)."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except _NodeDied:
            raise
        except (OSError, ValueError, KeyError, AssertionError) as e:
            last_exc = e
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:.1f}s waiting for {what}"
            if last_exc is not None:
                msg += f" (last error: {last_exc!r})"
            if on_timeout is not None:
                msg += "\n" + on_timeout()
            raise AssertionError(msg)
        time.sleep(POLL)


class Node:
    """One `roost serve` process and its fixed ports and data directory.

    `host` (MQTT and admin HTTP) and `cluster_host` default to 127.0.0.1; `prefix` goes before
    the command (e.g. `ip netns exec NS`, which execs the binary: the process, and its
    signals, stay the node's). A `Cluster`'s `placement` sets them before the seeds are made."""

    def __init__(self, node_id: int, workdir: Path, seeds: list[tuple[int, int]] | None,
                 config: dict[str, dict] | None = None, extra_args: list[str] | None = None,
                 cluster_flags: bool = True):
        self.node_id = node_id
        self.host = HOST
        self.cluster_host = HOST
        self.prefix: list[str] = []
        # The admin API token, required when `host` is not a loopback address.
        self.token: str | None = None
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.log_path = workdir / "roost.log"
        self.mqtt_port, self.http_port, self.cluster_port = (
            free_port(), free_port(), free_port())
        # (node id, cluster address) of each initial member to pass as --seed; None: no
        # seeds (a node that waits to be joined).
        self.seeds = seeds
        self.config = config or {}
        self.extra_args = list(extra_args or [])
        # False: start like a plain single node (no --node-id/--cluster/--seed), as users who
        # never heard of clustering do.
        self.cluster_flags = cluster_flags
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # SIGSTOPped by pause() and not yet resumed.
        self.paused = False
        self._clients: list = []

    # the conftest report hook reads these two and log_text()
    @property
    def kind(self) -> str:
        return f"roost node {self.node_id}"

    def __repr__(self):
        state = ("paused" if self.paused else "running") if self.alive else "stopped"
        return (f"Node({self.node_id}, mqtt={self.mqtt_port}, http={self.http_port}, "
                f"cluster={self.cluster_port}, {state})")

    @property
    def mqtt_addr(self) -> str:
        return f"{self.host}:{self.mqtt_port}"

    @property
    def http_addr(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def cluster_addr(self) -> str:
        return f"{self.cluster_host}:{self.cluster_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- process ----

    def command(self) -> list[str]:
        binary = roost_bin()
        if not binary.exists():
            pytest.fail(f"roost binary not found at {binary}: run `cargo build` (or set "
                        f"ROOST_BIN)", pytrace=False)
        cmd = self.prefix + [str(binary), "serve", "--mqtt", self.mqtt_addr, "--http", self.http_addr,
               "--data-dir", str(self.data_dir)]
        if self.cluster_flags:
            cmd += ["--node-id", str(self.node_id), "--cluster", self.cluster_addr]
            for seed_id, seed_addr in self.seeds or []:
                cmd += ["--seed", f"{seed_id}@{seed_addr}"]
        if self.config:
            lines = []
            for section, values in self.config.items():
                lines.append(f"[{section}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
                lines.append("")
            path = self.workdir / "roost.toml"
            path.write_text("\n".join(lines))
            cmd += ["--config", str(path)]
        return cmd + self.extra_args

    def _env(self) -> dict[str, str]:
        env = _child_env()
        if self.token:
            env["ROOST_HTTP__TOKEN"] = self.token
        return env

    def start(self) -> "Node":
        """Starts the process (returns at once; see `Cluster.wait_ready`)."""
        assert not self.alive, f"{self} is already running"
        cmd = self.command()
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ [start {self.starts}] {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self._env(),
                                         cwd=self.workdir)
        return self

    def signal(self, sig: int, grace: float = STOP_GRACE) -> int | None:
        """Sends `sig` and waits up to `grace` s for the exit (then SIGKILL). Returns the exit
        code, None if it had to be killed or was not running."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        if sig != signal.SIGKILL:
            self.resume()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        return self.signal(signal.SIGTERM, grace)

    def kill(self):
        if self.alive:
            self.proc.kill()
            self.proc.wait()
        self.paused = False

    def _proc_state(self) -> str | None:
        """The state letter in /proc/PID/stat ('T' once stopped); None where unreadable."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        return stat.rsplit(")", 1)[1].split()[0]

    def pause(self, timeout: float = 5.0):
        """SIGSTOP: the process keeps its sockets (peers' connects still succeed in the
        kernel) but answers nothing, as a node behind a partition or in a long GC pause.
        Returns once the kernel reports it stopped (where /proc tells)."""
        assert self.alive, f"{self} is not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True
        _poll(lambda: self._proc_state() in ("T", "t", None), timeout,
              f"node {self.node_id} (pid {self.proc.pid}) to stop")

    def resume(self):
        """SIGCONT (a no-op unless paused)."""
        if self.paused and self.alive:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def close_clients(self):
        for c in self._clients:
            c.close()
        self._clients.clear()

    def log_text(self, limit: int = 12000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<no log: {e}>"
        return text[-limit:]

    # ---- HTTP ----

    def http(self, method: str, path: str, body: object | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
        """One request to the admin API; raises OSError when nothing answers."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.http_addr}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with _opener.open(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, timeout: float = 5.0):
        status, body = self.http("GET", path, timeout=timeout)
        assert status == 200, f"node {self.node_id}: GET {path}: {status} {body[:300]!r}"
        return json.loads(body)

    def status(self) -> dict:
        """GET /api/v1/cluster."""
        return self.get_json("/api/v1/cluster")

    def ready(self) -> bool:
        try:
            return self.http("GET", "/readyz", timeout=1.0)[0] == 200
        except OSError:
            return False

    def answering(self) -> bool:
        """The admin listener answers at all (whatever the status)."""
        try:
            self.http("GET", "/healthz", timeout=1.0)
            return True
        except OSError:
            return False

    def clients(self) -> dict[str, dict]:
        """GET /api/v1/clients as {client id: entry}."""
        return {c["client_id"]: c for c in self.get_json("/api/v1/clients")}

    def is_connected(self, client_id: str) -> bool:
        entry = self.clients().get(client_id)
        return bool(entry and entry.get("connected"))

    # ---- MQTT clients ----

    def client(self, client_id: str = "", version: int = V5, **kw) -> Client:
        """A connected `helpers.Client` on this node, closed at teardown."""
        c = Client(self.host, self.mqtt_port, client_id, version, connect=False, **{
            k: v for k, v in kw.items() if k not in ("connect", "expect_rc")})
        self._clients.append(c)
        if kw.get("connect", True):
            c.connect(expect_rc=kw.get("expect_rc", 0))
        return c

    def raw(self) -> RawConn:
        r = RawConn(self.host, self.mqtt_port)
        self._clients.append(r)
        return r


class Cluster:
    """N nodes started with seeds; see the module doc."""

    def __init__(self, n: int, workdir: Path, *, seeds_include_self: bool = True,
                 config: dict[str, dict] | None = None, start: bool = True,
                 wait: float = WAIT, cluster_flags: bool = True, placement=None):
        """`config`: TOML sections for every node, e.g. {"cluster": {"forward_timeout_ms":
        2000}}. `seeds_include_self`: each node also names itself among its seeds (both forms
        must work). `cluster_flags=False` (n=1 only): start the node as a plain single node,
        without --node-id, --cluster or --seed; its node id is then whatever the default is,
        so member sets are not checked. `placement(node)`, if given, sets a node's hosts and
        command prefix (see `Node`) before the seeds are made."""
        assert cluster_flags or n == 1, "plain nodes cannot form a cluster"
        self.workdir = workdir
        self.config = config
        self.cluster_flags = cluster_flags
        self.nodes: list[Node] = []
        # Nodes taken out by remove_node: stopped, kept for their logs.
        self.removed: list[Node] = []
        for i in range(n):
            self.nodes.append(Node(i + 1, workdir / f"node-{i + 1}", seeds=None, config=config,
                                   cluster_flags=cluster_flags))
        for node in self.nodes:
            if placement is not None:
                placement(node)
        for node in self.nodes:
            node.seeds = [(m.node_id, m.cluster_addr) for m in self.nodes
                          if seeds_include_self or m is not node]
        if start:
            self.start(wait)

    # ---- lookup ----

    def node(self, which: int | Node) -> Node:
        return which if isinstance(which, Node) else self.nodes[which]

    def by_id(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node with id {node_id} in {self.nodes}")

    def alive_nodes(self) -> list[Node]:
        """Running nodes that are not paused (those are the ones that can answer)."""
        return [n for n in self.nodes if n.alive and not n.paused]

    def status(self, which: int | Node) -> dict:
        return self.node(which).status()

    # ---- start and convergence ----

    def start(self, wait: float = WAIT):
        for node in self.nodes:
            node.start()
        self.wait_ready(self.nodes, timeout=wait)

    def _check_alive(self, nodes):
        for n in nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise _NodeDied(f"node {n.node_id} exited with {n.proc.returncode}:\n"
                                f"{n.log_text(4000)}")

    def agreed_leader(self, nodes: list[Node] | None = None,
                      members: set[int] | None = None) -> int | None:
        """The leader id every node in `nodes` (default: the live ones) reports, if they all
        report the same one and (when given) list exactly `members`; else None."""
        nodes = nodes if nodes is not None else self.alive_nodes()
        self._check_alive(nodes)
        leaders = set()
        for n in nodes:
            if not n.ready():
                return None
            s = n.status()
            leaders.add(s.get("leader_id"))
            if members is not None:
                ids = {m["node_id"] for m in s.get("members", [])}
                if ids != members:
                    return None
        if len(leaders) == 1 and None not in leaders:
            return leaders.pop()
        return None

    def wait_ready(self, nodes: list[Node] | None = None, timeout: float = WAIT,
                   members: set[int] | None = None) -> int:
        """Waits until every node in `nodes` (default: the live ones) answers /readyz 200 and
        all name one leader (and, if given, the same member set: default the ids of every
        node of this cluster that is configured). Returns the leader id."""
        nodes = nodes if nodes is not None else self.alive_nodes()
        if members is None:
            members = self.member_ids()
        try:
            return _poll(lambda: self.agreed_leader(nodes, members), timeout,
                         f"nodes {[n.node_id for n in nodes]} to be ready and agree on a "
                         f"leader with members {sorted(members or [])}", self._diagnosis)
        except _NodeDied as e:
            pytest.fail(str(e), pytrace=False)

    def leader(self, timeout: float = WAIT) -> Node:
        """The node all live nodes name as leader (waits for agreement)."""
        leader_id = _poll(lambda: self.agreed_leader(members=None), timeout,
                          "the live nodes to agree on a leader", self._diagnosis)
        return self.by_id(leader_id)

    def followers(self) -> list[Node]:
        leader = self.leader()
        return [n for n in self.alive_nodes() if n is not leader]

    def _diagnosis(self) -> str:
        return self.describe() + "\n" + self.log_tails(3000)

    def describe(self) -> str:
        """One line per node: process state and its view of the cluster (for failures)."""
        lines = []
        for n in self.nodes:
            if not n.alive:
                code = None if n.proc is None else n.proc.returncode
                lines.append(f"  node {n.node_id}: not running (exit {code})")
                continue
            if n.paused:
                lines.append(f"  node {n.node_id}: paused (SIGSTOP, pid {n.proc.pid})")
                continue
            try:
                s = n.status()
                members = [(m.get("node_id"), m.get("healthy"), m.get("matched_index"))
                           for m in s.get("members", [])]
                lines.append(f"  node {n.node_id}: ready={n.ready()} state={s.get('state')} "
                             f"leader={s.get('leader_id')} term={s.get('term')} "
                             f"log={s.get('last_log_index')} applied={s.get('applied_index')} "
                             f"members(id, healthy, matched)={members}")
            except (OSError, ValueError, AssertionError) as e:
                lines.append(f"  node {n.node_id}: running, status unavailable: {e}")
        return "cluster state:\n" + "\n".join(lines)

    # ---- faults ----

    def kill(self, which: int | Node):
        """SIGKILL: no drain, no goodbye to peers."""
        self.node(which).kill()

    def stop(self, which: int | Node) -> int | None:
        """SIGTERM and wait (bounded) for the exit; returns the exit code."""
        return self.node(which).stop()

    def restart(self, which: int | Node, timeout: float = WAIT) -> Node:
        """Stops the node if it runs, starts it again with the same ports and data dir, and
        waits until it is ready and agrees with the others on the leader."""
        node = self.node(which)
        if node.alive:
            node.stop()
        node.close_clients()
        node.start()
        self.wait_ready(timeout=timeout, members=self.member_ids())
        return node

    def wait_caught_up(self, which: int | Node, timeout: float = WAIT) -> int:
        """Waits until `which` and the node it names as leader agree on that leader, the
        leader reports it healthy, and its applied index reached the leader's (e.g. after a
        restart or a resume). Returns the leader's applied index."""
        node = self.node(which)

        def check():
            mine = node.status()
            leader_id = mine.get("leader_id")
            if leader_id is None:
                return None
            lead = self.by_id(leader_id).status()
            if lead.get("leader_id") != leader_id:
                return None
            seen = {m["node_id"]: m for m in lead.get("members", [])}
            if seen.get(node.node_id, {}).get("healthy") is not True:
                return None
            applied = mine.get("applied_index")
            if applied is None or applied < lead["applied_index"]:
                return None
            return (lead["applied_index"],)

        try:
            return _poll(check, timeout, f"node {node.node_id} healthy and applied up to its "
                         f"leader's index", self._diagnosis)[0]
        except _NodeDied as e:
            pytest.fail(str(e), pytrace=False)

    def member_ids(self) -> set[int] | None:
        """The ids every node should list as members; None (do not check) for a plain node."""
        if not self.cluster_flags:
            return None
        return {n.node_id for n in self.nodes}

    def pause(self, which: int | Node) -> Node:
        """SIGSTOP (see `Node.pause`); the node is left out of waits until resumed."""
        node = self.node(which)
        node.pause()
        return node

    def resume(self, which: int | Node) -> Node:
        """SIGCONT; returns at once (wait_ready() to see the cluster heal)."""
        node = self.node(which)
        node.resume()
        return node

    # ---- membership ----

    def add_node(self, via: int | Node | None = None, timeout: float = WAIT) -> Node:
        """Starts a fresh node seeded with a running member (it waits to be joined) and joins it through the
        HTTP API of `via` (default: a follower, so the forwarding to the leader is used too).
        Returns it once every live node lists it and it is ready."""
        # Pick the member first: the new node is not ready (no leader known) until joined.
        member = self.node(via) if via is not None else self.followers()[0]
        node = self.start_unjoined_node(timeout)
        node_id = node.node_id
        status, body = member.http("POST", "/api/v1/cluster/members", {
            "node_id": node_id, "cluster_addr": node.cluster_addr,
            "mqtt_addr": node.mqtt_addr}, timeout=timeout)
        assert status == 200, (f"join of node {node_id} via node {member.node_id}: {status} "
                               f"{body[:300]!r}\n{self.describe()}")
        assert json.loads(body).get("ok") is True, body
        self.wait_ready(timeout=timeout, members=self.member_ids())
        return node

    def start_unjoined_node(self, timeout: float = WAIT) -> Node:
        """Starts a fresh node (next free id) that waits to be joined, and returns it once its
        admin API answers. It is given one running member as its seed: a lower id than its
        own, so it does not initialise a cluster of its own (a node with no seeds at all is a
        cluster of one). It is counted as a member from now on (`member_ids`), so join it
        before waiting for the cluster to be ready."""
        node_id = max(n.node_id for n in self.all_nodes()) + 1
        alive = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        seed = min(alive, key=lambda n: n.node_id)
        node = Node(node_id, self.workdir / f"node-{node_id}",
                    seeds=[(seed.node_id, seed.cluster_addr)], config=self.config)
        # Listed in its own seeds, so it waits (a node not listed asks a seed to add it by
        # itself: docs/deploy.md, scale up); these tests join it through the admin API.
        node.seeds.append((node_id, node.cluster_addr))
        self.nodes.append(node)
        node.start()
        try:
            _poll(lambda: self._alive_or_fail(node) and node.answering(), timeout,
                  f"new node {node_id}'s admin API", self._diagnosis)
        except _NodeDied as e:
            pytest.fail(str(e), pytrace=False)
        return node

    def forget(self, which: int | Node):
        """Stops a node removed by other means (e.g. `roost ctl leave`) and stops counting
        it as a member."""
        node = self.node(which)
        node.stop()
        node.close_clients()
        self.nodes.remove(node)
        self.removed.append(node)

    def _alive_or_fail(self, node: Node) -> bool:
        self._check_alive([node])
        return True

    def remove_node(self, which: int | Node, via: int | Node | None = None,
                    timeout: float = WAIT):
        """Removes the node through another member's API (`DELETE /api/v1/cluster/members/
        ID`), stops its process, and waits until no live node lists it."""
        node = self.node(which)
        if via is not None:
            member = self.node(via)
        else:
            member = next(n for n in self.alive_nodes() if n is not node)
        status, body = member.http("DELETE", f"/api/v1/cluster/members/{node.node_id}",
                                   timeout=timeout)
        assert status == 200, (f"removal of node {node.node_id} via node {member.node_id}: "
                               f"{status} {body[:300]!r}\n{self.describe()}")
        self.forget(node)
        self.wait_ready(timeout=timeout, members=self.member_ids())

    # ---- teardown ----

    def all_nodes(self) -> list[Node]:
        """Current and removed nodes (the latter still have logs worth reading)."""
        return self.nodes + self.removed

    def close_clients(self):
        for n in self.all_nodes():
            n.close_clients()

    def close(self):
        """Stops every process: SIGCONT to paused ones (a stopped process leaves SIGTERM
        pending), SIGTERM to all at once, then a bounded wait, then SIGKILL."""
        for n in self.all_nodes():
            n.resume()
        for n in self.all_nodes():
            if n.alive:
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for n in self.all_nodes():
            if n.proc is None:
                continue
            try:
                n.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
        self.close_clients()

    def log_tails(self, limit: int = 4000) -> str:
        return "\n".join(f"---- node {n.node_id} ({n.log_path}) ----\n{n.log_text(limit)}"
                         for n in self.all_nodes())


class _NodeDied(Exception):
    pass


class LogSource:
    """Adapter so the conftest report hook can attach a cluster's logs: it iterates the stash
    list and reads `kind`, `log_path`, `log_text()` of each entry; one entry per node, looked
    up when the report is made (so nodes added during the test are included)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def __iter__(self):
        return iter(self.cluster.all_nodes())


def attach_logs(request, cluster: Cluster):
    """Registers the cluster's nodes so a failing test's report carries each node's log.

    conftest's hook reads `item.stash[_brokers_key]`; a list-like view of the cluster keeps
    nodes added later (add_node) in it."""
    existing = request.node.stash.get(_brokers_key, None)
    if existing is None:
        request.node.stash[_brokers_key] = _Chain([LogSource(cluster)])
    elif isinstance(existing, _Chain):
        existing.sources.append(LogSource(cluster))
    else:
        request.node.stash[_brokers_key] = _Chain([existing, LogSource(cluster)])


class _Chain:
    def __init__(self, sources):
        self.sources = list(sources)

    def __iter__(self):
        for s in self.sources:
            yield from s


@pytest.fixture
def cluster_factory(request, tmp_path):
    """`cluster_factory(n, **kw)` -> a started `Cluster` in this test's tmp dir, stopped at
    teardown even when the test (or the start) fails."""
    made: list[Cluster] = []

    def make(n: int, **kw) -> Cluster:
        c = Cluster(n, tmp_path / f"cluster{len(made)}", start=False, **kw)
        made.append(c)
        attach_logs(request, c)
        c.start(kw.get("wait", WAIT))
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture(scope="module")
def module_cluster3(tmp_path_factory):
    """One 3-node cluster shared by the tests of a module that do not disturb it (use the
    function-scoped `cluster3` in tests, which attaches logs and closes the test's clients)."""
    c = Cluster(3, tmp_path_factory.mktemp("cluster3"), start=False)
    try:
        c.start()
    except BaseException:
        c.close()
        raise
    yield c
    c.close()


@pytest.fixture
def cluster3(request, module_cluster3):
    """The module's shared 3-node cluster; this test's clients are closed afterwards."""
    attach_logs(request, module_cluster3)
    try:
        module_cluster3._check_alive(module_cluster3.nodes)
    except _NodeDied as e:
        pytest.fail(f"the shared cluster lost a node in an earlier test: {e}", pytrace=False)
    yield module_cluster3
    module_cluster3.close_clients()
