"""Interop with the Mosquitto command-line clients (mosquitto_pub / mosquitto_sub), for both
protocol versions. Every mosquitto_sub runs with `-C n -W secs` so it stops by itself."""

import queue
import shutil
import signal
import subprocess
import threading

import pytest

from helpers import TIMEOUT

# MQTT 3.1 ("MQIsdp") too: older devices still speak it (issue 9).
PROTOCOLS = ["mqttv31", "mqttv311", "mqttv5"]

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_sub") is None,
                                reason="mosquitto-clients not installed "
                                       "(scripts/install-test-deps)")

FORMAT = "MSG|%t|%q|%r|%p"


class MosqSub:
    """mosquitto_sub in debug mode; `start` returns once its SUBACK has arrived."""

    def __init__(self, broker, protocol, topics, *, count, qos=0, wait=5, extra=()):
        # stdbuf: mosquitto_sub block-buffers a piped stdout, hiding the SUBACK line.
        cmd = ["stdbuf", "-oL", "mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", protocol,
               "-q", str(qos), "-C", str(count), "-W", str(wait), "-d", "-F", FORMAT, *extra]
        for t in topics:
            cmd += ["-t", t]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self._wait_for("received SUBACK")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _wait_for(self, needle):
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub: no {needle!r}; output {self.output}") from None
            if line is None:
                raise AssertionError(f"mosquitto_sub exited before {needle!r}: {self.output}")
            self.output.append(line)
            if needle in line:
                return

    def messages(self, timeout=8.0):
        """Waits for exit; returns [(topic, qos, retain, payload)] in arrival order."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"mosquitto_sub did not stop: {self.output}") from None
        while True:
            line = self.lines.get(timeout=2)
            if line is None:
                break
            self.output.append(line)
        out = []
        for line in self.output:
            if line.startswith("MSG|"):
                _, topic, q, r, payload = line.split("|", 4)
                out.append((topic, int(q), int(r), payload))
        return out

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)


def mosq_pub(broker, protocol, topic, message, *, qos=0, retain=False, extra=()):
    cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", protocol,
           "-t", topic, "-m", message, "-q", str(qos), *extra]
    if retain:
        cmd.append("-r")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, f"{cmd}: {r.returncode} {r.stdout} {r.stderr}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_pub_sub_qos(broker, protocol, qos):
    sub = MosqSub(broker, protocol, ["mq/t"], count=3, qos=qos)
    for i in range(3):
        mosq_pub(broker, protocol, "mq/t", f"hello {i}", qos=qos)
    assert sub.messages() == [("mq/t", qos, 0, f"hello {i}") for i in range(3)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mosquitto_qos_downgrade(broker, protocol):
    sub = MosqSub(broker, protocol, ["mq/t"], count=1, qos=1)
    mosq_pub(broker, protocol, "mq/t", "x", qos=2)
    assert sub.messages() == [("mq/t", 1, 0, "x")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mosquitto_retained(broker, protocol):
    mosq_pub(broker, protocol, "mq/ret", "kept", qos=1, retain=True)
    sub = MosqSub(broker, protocol, ["mq/ret"], count=1, qos=1)
    assert sub.messages() == [("mq/ret", 1, 1, "kept")]
    # Clear with an empty retained message; a new subscriber then times out with nothing.
    mosq_pub(broker, protocol, "mq/ret", "", qos=1, retain=True)
    late = MosqSub(broker, protocol, ["mq/ret"], count=1, qos=1, wait=1)
    assert late.messages() == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mosquitto_wildcards(broker, protocol):
    sub = MosqSub(broker, protocol, ["wc/+/x", "wc/deep/#"], count=3, qos=1)
    for topic in ["wc/a/x", "wc/a/y", "wc/deep", "wc/deep/1/2", "other/t"]:
        mosq_pub(broker, protocol, topic, topic, qos=1)
    got = sub.messages()
    assert [t for t, *_ in got] == ["wc/a/x", "wc/deep", "wc/deep/1/2"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mosquitto_sub_will_on_kill(broker, protocol):
    watcher = MosqSub(broker, protocol, ["mq/will"], count=1, qos=1)
    dying = MosqSub(broker, protocol, ["mq/unused"], count=1, wait=30, extra=[
        "--will-topic", "mq/will", "--will-payload", "bye", "--will-qos", "1"])
    dying.kill()
    assert watcher.messages() == [("mq/will", 1, 0, "bye")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.broker_config(sys_interval_secs=1)
def test_mosquitto_sub_sys(broker, protocol):
    r = subprocess.run(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", protocol,
                        "-t", "$SYS/#", "-C", "1", "-W", "5", "-v"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.startswith("$SYS/"), r.stdout


def test_mosquitto_v5_user_property(broker):
    sub = MosqSub(broker, "mqttv5", ["mq/p"], count=1, qos=1, extra=["-F", "MSG|%t|%q|%r|%P"])
    mosq_pub(broker, "mqttv5", "mq/p", "x", qos=1,
             extra=["-D", "publish", "user-property", "k", "v"])
    got = sub.messages()
    assert len(got) == 1 and "k:v" in got[0][3], got
