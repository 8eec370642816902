"""Fixtures for the interop suite: a real broker process per test.

The broker under test is Roost (`ROOST_BIN`, default `<repo>/target/debug/roost`). For checking
the tests themselves, `INTEROP_BROKER=mosquitto` runs Mosquitto 2 instead (never needed by CI);
tests marked `roost_only` are then skipped.

Per-test broker settings:

    @pytest.mark.broker_config(max_queued_messages=3, queue_drop="oldest")
    def test_x(broker): ...

or, for several brokers or settings chosen inside the test, `broker_factory(**settings)`.
Keys are Roost's config keys; `sys_interval_secs` goes to `[node]`, everything else to `[mqtt]`.

Each broker writes stdout/stderr to a log file that is attached to the report of a failing test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import BROKER_KIND, Client, RawConn, V5

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
STOP_GRACE = 5.0

NODE_KEYS = {"sys_interval_secs"}
MQTT_KEYS = {
    "max_queued_messages", "queue_drop", "topic_alias_maximum", "receive_maximum",
    "max_inflight", "max_packet_size", "server_keep_alive", "max_connections",
    "max_session_expiry_interval", "allow_anonymous", "max_publish_rate",
    "max_publish_bytes_rate", "rate_burst_secs",
}

_brokers_key = pytest.StashKey[list]()


def pytest_configure(config):
    config.addinivalue_line("markers", "roost_only: Roost-specific behaviour (HTTP API, metrics, "
                            "exact reason codes); skipped when INTEROP_BROKER=mosquitto")
    config.addinivalue_line("markers", "broker_config(**settings): Roost config for this test")
    config.addinivalue_line("markers", "mosquitto_deviation(reason): standard behaviour that "
                            "Mosquitto 2.0 does not implement; skipped in the reference run")
    config.addinivalue_line("markers", "cluster: multi-process cluster tests (cluster.py harness)")


def pytest_report_header(config):
    if BROKER_KIND == "mosquitto":
        return "interop broker: mosquitto (reference run; roost_only tests skipped)"
    return f"interop broker: roost ({roost_bin()})"


def pytest_collection_modifyitems(config, items):
    if BROKER_KIND == "roost":
        return
    skip = pytest.mark.skip(reason=f"roost_only (INTEROP_BROKER={BROKER_KIND})")
    for item in items:
        if item.get_closest_marker("roost_only"):
            item.add_marker(skip)
        deviation = item.get_closest_marker("mosquitto_deviation")
        if deviation and BROKER_KIND == "mosquitto":
            item.add_marker(pytest.mark.skip(reason=f"mosquitto deviates: {deviation.args[0]}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for b in item.stash.get(_brokers_key, []):
            report.sections.append((f"{b.kind} log ({b.log_path})", b.log_text()))


def roost_bin() -> Path:
    return Path(os.environ.get("ROOST_BIN", REPO / "target" / "debug" / "roost"))


# Ports handed out in this test session. free_port() closes its socket before the broker binds
# the port, and the kernel hands a just-released port out again: without this, one broker could
# be given the same port for two listeners (CI at f8ca110), or two brokers the same one.
_used_ports: set[int] = set()


def free_port() -> int:
    # Bounded, like every wait in the suite: a session that used up the kernel's ports fails
    # here, saying so, instead of hanging.
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError(f"no new port in 1000 tries ({len(_used_ports)} handed out)")


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))


class Broker:
    """One broker process on fresh loopback ports, with helpers to talk to it."""

    host = "127.0.0.1"

    def __init__(self, kind: str, workdir: Path, settings: dict, extra_toml: str = "",
                 extra_args: list[str] | None = None):
        unknown = set(settings) - NODE_KEYS - MQTT_KEYS
        if unknown:
            raise ValueError(f"unknown broker settings {sorted(unknown)}")
        self.kind = kind
        self.settings = settings
        # Raw TOML appended to the config (sections the settings do not cover: [[listeners]],
        # [auth]) and extra `roost serve` flags; Roost only.
        self.extra_toml = extra_toml
        self.extra_args = list(extra_args or [])
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{kind}.log"
        self.port = free_port()
        self.http_port = free_port()
        self.cluster_port = free_port()
        self.proc: subprocess.Popen | None = None
        self._clients: list = []

    @property
    def is_roost(self) -> bool:
        return self.kind == "roost"

    # ---- process ----

    def _roost_cmd(self) -> list[str]:
        binary = roost_bin()
        if not binary.exists():
            pytest.fail(f"roost binary not found at {binary}: run `cargo build` (or set ROOST_BIN)",
                        pytrace=False)
        node = {k: v for k, v in self.settings.items() if k in NODE_KEYS}
        mqtt = {k: v for k, v in self.settings.items() if k in MQTT_KEYS}
        lines = ["[node]"] + [f"{k} = {toml_value(v)}" for k, v in node.items()]
        lines += ["", "[mqtt]"] + [f"{k} = {toml_value(v)}" for k, v in mqtt.items()]
        # A cluster of one with fast elections: tests start in well under a second.
        lines += ["", "[cluster]", "heartbeat_ms = 50", "election_timeout_ms = 300"]
        if self.extra_toml:
            lines += ["", self.extra_toml]
        config = self.workdir / "roost.toml"
        config.write_text("\n".join(lines) + "\n")
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        return [str(binary), "serve", "--mqtt", f"{self.host}:{self.port}",
                "--http", f"{self.host}:{self.http_port}", "--data-dir", str(data_dir),
                "--cluster", f"{self.host}:{self.cluster_port}", "--config", str(config),
                *self.extra_args]

    def _mosquitto_cmd(self) -> list[str]:
        binary = os.environ.get("MOSQUITTO_BIN") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        s = self.settings
        lines = ["per_listener_settings false", "allow_anonymous true", "persistence false",
                 "log_dest stdout", "log_type all", "user root",
                 f"sys_interval {s.get('sys_interval_secs', 10)}"]
        # Only the settings Mosquitto has an equivalent for. Not translated: queue_drop (Mosquitto
        # always drops the newest message), receive_maximum, max_session_expiry_interval.
        if "max_queued_messages" in s:
            lines.append(f"max_queued_messages {s['max_queued_messages']}")
        if "max_inflight" in s:
            lines.append(f"max_inflight_messages {s['max_inflight']}")
        if "max_packet_size" in s:
            lines.append(f"max_packet_size {s['max_packet_size']}")
        if "server_keep_alive" in s:
            lines.append(f"max_keepalive {s['server_keep_alive']}")
        if "topic_alias_maximum" in s:
            lines.append(f"max_topic_alias {s['topic_alias_maximum']}")
        lines += [f"listener {self.port} {self.host}", "protocol mqtt"]
        if "max_connections" in s:
            lines.append(f"max_connections {s['max_connections']}")
        config = self.workdir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return [binary, "-c", str(config)]

    def start(self) -> "Broker":
        cmd = self._roost_cmd() if self.is_roost else self._mosquitto_cmd()
        env = dict(os.environ, RUST_BACKTRACE="1")
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.kind} exited with {self.proc.returncode} during start-up:\n"
                            f"{self.log_text()}", pytrace=False)
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                if self.is_roost and not self._ready():
                    raise OSError("not ready yet (no Raft leader)")
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"{self.kind} did not accept MQTT connections on port "
                                f"{self.port} within {START_TIMEOUT}s", pytrace=False)
                time.sleep(0.02)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/readyz",
                                        timeout=0.5) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE) -> int | None:
        """Signals the process, waits up to `grace` s, then SIGKILLs. Returns the exit code
        (None if it had to be killed). Clients are closed afterwards, so they see the shutdown."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                code = self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        for c in self._clients:
            c.close()
        self._clients.clear()
        return code

    def log_text(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<no log: {e}>"
        return text[-20000:]

    # ---- clients ----

    def client(self, client_id: str = "", version: int = V5, **kw) -> Client:
        """A connected paho `Client` (see helpers.Client), closed at teardown."""
        port = kw.pop("port", self.port)
        c = Client(self.host, port, client_id, version, connect=False, **{
            k: v for k, v in kw.items() if k not in ("connect", "expect_rc")})
        self._clients.append(c)
        if kw.get("connect", True):
            c.connect(expect_rc=kw.get("expect_rc", 0))
        return c

    def raw(self) -> RawConn:
        r = RawConn(self.host, self.port)
        self._clients.append(r)
        return r

    # ---- HTTP (Roost only) ----

    def http(self, method: str, path: str, body: object | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.host}:{self.http_port}{path}", data=data,
                                     method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str):
        status, body = self.http("GET", path)
        assert status == 200, f"GET {path}: {status} {body[:200]!r}"
        return json.loads(body)

    def metrics(self) -> dict[str, float]:
        """Prometheus text -> {metric name: value summed over its label sets}."""
        status, body = self.http("GET", "/metrics")
        assert status == 200, f"GET /metrics: {status}"
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0].strip()
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return out


@pytest.fixture
def broker_factory(request, tmp_path):
    """`broker_factory(**settings)` -> a started Broker, stopped at teardown."""
    brokers: list[Broker] = []
    request.node.stash[_brokers_key] = brokers

    def make(extra_toml: str = "", extra_args: list[str] | None = None, **settings) -> Broker:
        b = Broker(BROKER_KIND, tmp_path / f"broker{len(brokers)}", settings, extra_toml,
                   extra_args)
        brokers.append(b)
        return b.start()

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture
def broker(request, broker_factory) -> Broker:
    """A started broker configured from the test's `broker_config` marker, if any."""
    marker = request.node.get_closest_marker("broker_config")
    settings = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        settings.update(marker.args[0])
    return broker_factory(**settings)
