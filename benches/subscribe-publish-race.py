#!/usr/bin/env python3
"""How often a PUBLISH sent right after another client's SUBSCRIBE (no gap, two raw sockets)
misses that subscriber (issue 7 item 10). Usage, against a running node:

    python3 benches/subscribe-publish-race.py PORT [TRIES=30] [GAP_SECONDS=0]

Loopback only; stops by itself. Prints "missed N of TRIES"."""
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))
from helpers import connect_packet, publish_packet, subscribe_packet  # noqa: E402

port = int(sys.argv[1])
tries = int(sys.argv[2]) if len(sys.argv) > 2 else 30
gap = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
missed = 0
for i in range(tries):
    b = socket.create_connection(("127.0.0.1", port))
    a = socket.create_connection(("127.0.0.1", port))
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Connected one after the other, and used at once (as the interop test does): the harder
    # case, where a connection may still be running when its PUBLISH arrives.
    b.sendall(connect_packet(f"race-b{i}", 5))
    b.recv(100)
    a.sendall(connect_packet(f"race-a{i}", 5))
    a.recv(100)
    topic = f"race/{i}"
    b.sendall(subscribe_packet(1, [(topic, 0)], version=5))
    if gap:
        time.sleep(gap)
    a.sendall(publish_packet(topic, b"x", qos=0, version=5))
    b.settimeout(0.5)
    data = b""
    try:
        while True:
            d = b.recv(1000)
            if not d:
                break
            data += d
    except socket.timeout:
        pass
    missed += topic.encode() not in data
    a.close()
    b.close()
print(f"missed {missed} of {tries}")
