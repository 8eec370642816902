"""The `roost` binary's command line: config validation exit codes and messages, layering
(file < environment < flags), and start-up refusals. These run the binary directly."""
import os
import socket
import subprocess
import time

import pytest

from conftest import REPO, free_port, roost_bin

pytestmark = pytest.mark.roost_only

EX_CONFIG = 64


def run(args, env=None, timeout=20):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_") or k == "ROOST_BIN"}
    full_env.update(env or {})
    return subprocess.run([str(roost_bin()), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def test_check_config_accepts_the_sample(tmp_path):
    sample = REPO / "deploy" / "roost.toml"
    r = run(["check-config", str(sample)])
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


@pytest.mark.parametrize("text,needle", [
    ("[mqtt]\nlisen = \"127.0.0.1:1883\"\n", "lisen"),
    ("[mqtt]\nmax_packet_size = 0\n", "mqtt.max_packet_size"),
    ("[mqtt]\nqueue_drop = \"sideways\"\n", "queue_drop"),
    ("[log]\nlevel = \"inof\"\n", "log.level"),
    ("[mqtt\n", "line 1"),
])
def test_check_config_rejects_with_the_key_named(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    r = run(["check-config", str(f)])
    assert r.returncode == EX_CONFIG
    assert needle in r.stderr


def test_check_config_missing_file(tmp_path):
    r = run(["check-config", str(tmp_path / "nope.toml")])
    assert r.returncode == EX_CONFIG
    assert "nope.toml" in r.stderr


def test_serve_with_bad_env_exits_64_naming_the_variable(tmp_path):
    r = run(["serve", "--data-dir", str(tmp_path / "d"), "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0",
            "--cluster", "127.0.0.1:0"],
            env={"ROOST_MQTT__MAX_CONECTIONS": "5"})
    assert r.returncode == EX_CONFIG
    assert "ROOST_MQTT__MAX_CONECTIONS" in r.stderr


def test_serve_with_bad_value_binds_nothing(tmp_path):
    port = free_port()
    cfg = tmp_path / "roost.toml"
    cfg.write_text(f"[mqtt]\nlisten = \"127.0.0.1:{port}\"\nreceive_maximum = 0\n")
    r = run(["serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"), "--http", "127.0.0.1:0"])
    assert r.returncode == EX_CONFIG
    assert "mqtt.receive_maximum" in r.stderr
    assert not (tmp_path / "d").exists(), "nothing may be created before the config is valid"


def wait_port(port, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def test_layering_flag_beats_env_beats_file(tmp_path):
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    cfg = tmp_path / "roost.toml"
    cfg.write_text(f"[mqtt]\nlisten = \"127.0.0.1:{file_port}\"\n[http]\nlisten = \"127.0.0.1:0\"\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    env["ROOST_MQTT__LISTEN"] = f"127.0.0.1:{env_port}"
    cmd = [str(roost_bin()), "serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"),
           "--cluster", "127.0.0.1:0"]
    # env beats file
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port(env_port, p)
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0
    # flag beats env
    p = subprocess.Popen(cmd + ["--mqtt", f"127.0.0.1:{flag_port}"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port(flag_port, p)
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0


def thp_enabled(pid) -> int | None:
    """The `THP_enabled` line of /proc/PID/status (Linux 5.0+), if the kernel has one."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("THP_enabled:"):
                return int(line.split()[1])
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/status") or thp_enabled("self") is None,
                    reason="needs Linux with THP_enabled in /proc/PID/status")
def test_transparent_huge_pages_are_off_unless_allowed(tmp_path):
    # node.transparent_huge_pages = false (the default) turns them off for the process;
    # true leaves what the process inherits (this test's own setting).
    inherited = thp_enabled("self")
    for allowed, expected in ((None, 0), ("true", inherited)):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
        if allowed is not None:
            env["ROOST_NODE__TRANSPARENT_HUGE_PAGES"] = allowed
        p = subprocess.Popen([str(roost_bin()), "serve", "--data-dir", str(tmp_path / f"d{port}"),
                              "--mqtt", f"127.0.0.1:{port}", "--http", "127.0.0.1:0",
                              "--cluster", "127.0.0.1:0"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert wait_port(port, p)
            assert thp_enabled(p.pid) == expected, (allowed, inherited)
        finally:
            p.terminate()
            assert p.wait(timeout=10) == 0


def test_second_node_on_the_same_data_dir_is_refused(tmp_path):
    data = tmp_path / "shared"
    port = free_port()
    first = subprocess.Popen([str(roost_bin()), "serve", "--data-dir", str(data), "--mqtt", f"127.0.0.1:{port}",
                              "--http", "127.0.0.1:0", "--cluster", "127.0.0.1:0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port(port, first)
        r = run(["serve", "--data-dir", str(data), "--mqtt", "127.0.0.1:0", "--http", "127.0.0.1:0",
            "--cluster", "127.0.0.1:0"])
        assert r.returncode == 1
        assert "in use by another roost process" in r.stderr
    finally:
        first.terminate()
        assert first.wait(timeout=10) == 0


# ---- item 23 (issue 7): admin token and Host check --------------------------------------

TOKEN = "item23-interop-token-0123456789"


def test_item23_non_loopback_http_without_token_exits_64_naming_the_key(tmp_path):
    r = run(["serve", "--data-dir", str(tmp_path / "d"), "--mqtt", "127.0.0.1:0", "--http", "0.0.0.0:0",
             "--cluster", "127.0.0.1:0"])
    assert r.returncode == EX_CONFIG, r.stderr
    assert "http.token_file" in r.stderr
    assert "ROOST_HTTP__TOKEN" in r.stderr
    assert not (tmp_path / "d").exists(), "nothing may be created before the config is valid"


def test_item23_missing_token_file_exits_64_naming_the_key(tmp_path):
    cfg = tmp_path / "roost.toml"
    cfg.write_text(f"[http]\ntoken_file = \"{tmp_path / 'nope'}\"\n")
    r = run(["serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"), "--mqtt", "127.0.0.1:0",
             "--http", "127.0.0.1:0", "--cluster", "127.0.0.1:0"])
    assert r.returncode == EX_CONFIG, r.stderr
    assert "http.token_file" in r.stderr and "cannot read it" in r.stderr


def http_status(port, path, headers):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_item23_ctl_sends_the_token(tmp_path):
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    node_env = dict(env, ROOST_HTTP__TOKEN=TOKEN)
    p = subprocess.Popen([str(roost_bin()), "serve", "--data-dir", str(tmp_path / "d"), "--mqtt", "127.0.0.1:0",
                          "--http", f"127.0.0.1:{http_port}", "--cluster", "127.0.0.1:0"],
                         env=node_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port(http_port, p)
        ctl = [str(roost_bin()), "ctl", "--http", f"127.0.0.1:{http_port}", "--timeout-secs", "10"]
        deadline = time.monotonic() + 20
        while http_status(http_port, "/readyz", {}) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)

        r = subprocess.run(ctl + ["status"], capture_output=True, text=True, timeout=20, env=env)
        assert r.returncode == 1, r.stdout
        assert "401" in r.stderr and "--token-file" in r.stderr, r.stderr

        r = subprocess.run(ctl + ["status"], capture_output=True, text=True, timeout=20,
                           env=dict(env, ROOST_HTTP__TOKEN="wrong-token-0123456789"))
        assert r.returncode == 1 and "401" in r.stderr, r.stderr

        r = subprocess.run(ctl + ["status"], capture_output=True, text=True, timeout=20,
                           env=dict(env, ROOST_HTTP__TOKEN=TOKEN))
        assert r.returncode == 0, r.stderr
        assert "leader: node 1" in r.stdout, r.stdout

        token_file = tmp_path / "admin-token"
        token_file.write_text(TOKEN + "\n")
        r = subprocess.run(ctl + ["--token-file", str(token_file), "status", "--json"], capture_output=True,
                           text=True, timeout=20, env=env)
        assert r.returncode == 0, r.stderr
        assert '"node_id":1' in r.stdout.replace(" ", ""), r.stdout

        # The API itself: a foreign Host is refused even with the token; probes stay open.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http_status(http_port, "/api/v1/clients", auth) == 200
        assert http_status(http_port, "/api/v1/clients", {}) == 401
        assert http_status(http_port, "/api/v1/clients", dict(auth, Host="evil.example")) == 403
        assert http_status(http_port, "/healthz", {"Host": "evil.example"}) == 200
    finally:
        p.terminate()
        assert p.wait(timeout=10) == 0


def test_default_log_is_readable_without_raft_internals(tmp_path):
    """Issue 10, readable logs: at the default filter a start prints Roost's own events (one
    line per listener, the start line) and nothing of openraft's INFO internals (its
    `RaftState` dump, engine lines); raising `openraft` brings them back."""
    def start_and_stop(extra):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
        p = subprocess.Popen([str(roost_bin()), "serve", "--data-dir", str(tmp_path / f"d{port}"),
                              "--mqtt", f"127.0.0.1:{port}", "--http", "127.0.0.1:0",
                              "--cluster", "127.0.0.1:0", *extra],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert wait_port(port, p)
            time.sleep(1)  # the first election and the lease
        finally:
            p.terminate()
        out, _ = p.communicate(timeout=10)
        assert p.returncode == 0, out
        return out

    out = start_and_stop([])
    assert "listening for MQTT clients" in out and "roost node started" in out, out
    assert " INFO openraft" not in out, out
    assert len(out.splitlines()) < 15, out
    raised = start_and_stop(["--log-level", "info,openraft=info"])
    assert " INFO openraft" in raised, raised
