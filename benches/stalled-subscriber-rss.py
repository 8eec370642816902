#!/usr/bin/env python3
"""Broker memory held for a subscriber that stops reading (issue 7 item 16): starts
`ROOST_BIN serve` on 127.0.0.1:PORT, subscribes a client to big/# that never reads, publishes
600 QoS 0 messages of ~1 MiB, and prints the broker's RSS before and 3 s after. Usage:

    python3 benches/stalled-subscriber-rss.py ROOST_BIN PORT

Loopback only; stops the broker and itself."""
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))
from helpers import connect_packet, publish_packet, subscribe_packet  # noqa: E402

binp, port = sys.argv[1], int(sys.argv[2])
env = dict(os.environ, ROOST_LOG__LEVEL="warn", ROOST_NODE__SYS_INTERVAL_SECS="0")
with tempfile.TemporaryDirectory() as d:
    p = subprocess.Popen(
        [binp, "serve", "--mqtt", f"127.0.0.1:{port}", "--http", "127.0.0.1:0", "--data-dir", d],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)

        def rss():
            with open(f"/proc/{p.pid}/status") as f:
                return int(next(l for l in f if l.startswith("VmRSS")).split()[1])

        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(connect_packet("stalled", 5))
        time.sleep(0.2)
        s.recv(100)
        s.sendall(subscribe_packet(1, [("big/#", 0)], version=5))
        time.sleep(0.2)
        s.recv(100)
        before = rss()
        pub = socket.create_connection(("127.0.0.1", port))
        pub.sendall(connect_packet("pub", 5))
        time.sleep(0.2)
        pub.recv(100)
        payload = b"x" * (1024 * 1024 - 100)
        for i in range(600):
            pub.sendall(publish_packet(f"big/{i}", payload, qos=0, version=5))
        time.sleep(3)
        after = rss()
        print(f"RSS {before} KiB -> {after} KiB (+{(after - before) // 1024} MiB)")
    finally:
        p.terminate()
        p.wait()
