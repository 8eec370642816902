//! The network faults on real namespaces (needs root, iproute2, nft and iptables; skipped
//! otherwise): `loss` and `delay` touch node-to-node packets and nothing else, and `heal`
//! ends them. A TCP echo server in node 1's namespace is reached from node 2's namespace (a
//! node-to-node path) and from the host (a client's path).

#![allow(clippy::unwrap_used)]

use roost_chaos::net::Net;
use roost_chaos::rng::Rng;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn can_run() -> bool {
    let root = rustix::process::geteuid().is_root();
    let have = |p: &str| {
        std::process::Command::new(p)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    root && have("nft") && have("iptables") && have("ip")
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap();
}

/// An echo server at `addr` inside namespace `ns`, until `stop`.
fn echo_server(ns: String, addr: SocketAddr, stop: Arc<AtomicBool>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop.load(Ordering::Acquire) {
            match l.accept() {
                Ok((mut s, _)) => {
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let mut b = [0u8; 1];
                        while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv().unwrap();
}

/// The slowest of 5 one-byte round trips to `addr`, from namespace `ns` (the host when
/// `None`); `None` when no connection is made within 1 s.
fn round_trip(ns: Option<String>, addr: SocketAddr) -> Option<Duration> {
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            enter(&ns);
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_nodelay(true).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            let t = Instant::now();
            s.write_all(b"x").ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).ok()?;
            worst = worst.max(t.elapsed());
        }
        Some(worst)
    })
    .join()
    .unwrap()
}

#[test]
fn loss_and_delay_touch_node_to_node_packets_only_until_healed() {
    if !can_run() {
        eprintln!("skipped: needs root, iproute2, nft and iptables");
        return;
    }
    let tag = format!("ct{:04x}", std::process::id() & 0xffff);
    let mut net = Net::new(&tag, 2).unwrap();
    let addr: SocketAddr = format!("{}:7000", net.node_ip(1)).parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    echo_server(net.ns(1), addr, Arc::clone(&stop));
    let ns2 = net.ns(2);
    let peer = || round_trip(Some(ns2.clone()), addr);
    let client = || round_trip(None, addr);

    let clean = peer().expect("a clean link works");
    assert!(clean < Duration::from_millis(40), "{clean:?}");

    net.delay(
        Duration::from_millis(50),
        Duration::from_millis(60),
        &mut Rng::new(1),
    )
    .unwrap();
    let slow = peer().expect("a delayed link works");
    // Each way is held 50-60 ms.
    assert!(slow >= Duration::from_millis(100), "{slow:?}");
    let c = client().unwrap();
    assert!(
        c < Duration::from_millis(40),
        "clients are not delayed: {c:?}"
    );
    let h = net.heal().unwrap();
    assert!(h.delayed >= 10, "{h:?}");
    assert!(peer().unwrap() < Duration::from_millis(40));

    net.loss(100).unwrap();
    assert_eq!(peer(), None, "every node-to-node packet is dropped");
    assert!(client().is_some(), "clients are not touched");
    let h = net.heal().unwrap();
    assert!(h.dropped > 0, "{h:?}");
    assert!(peer().is_some(), "healed");

    stop.store(true, Ordering::Release);
    net.close();
}

/// What `getent hosts NAME` prints in namespace `ns` (through `ip netns exec`, which mounts the
/// namespace's hosts file, as for the nodes), after waiting `after`.
fn resolve_in(ns: &str, name: &str, after: Duration) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c"])
        .arg(format!(
            "sleep {}; getent hosts {name}",
            after.as_secs_f64()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn output(c: std::process::Child) -> String {
    String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
}

#[test]
fn a_moved_node_keeps_its_name_and_answers_at_its_new_address_only() {
    if !can_run() {
        eprintln!("skipped: needs root, iproute2, nft and iptables");
        return;
    }
    let tag = format!("cm{:04x}", std::process::id() & 0xffff);
    let mut net = Net::new(&tag, 2).unwrap();
    let (name, old) = (net.name(1), net.node_ip(1));
    let stop = Arc::new(AtomicBool::new(false));
    echo_server(
        net.ns(1),
        "0.0.0.0:7000".parse().unwrap(),
        Arc::clone(&stop),
    );
    let ns2 = net.ns(2);
    assert_eq!(
        output(resolve_in(&ns2, &name, Duration::ZERO))
            .split_whitespace()
            .next(),
        Some(old.as_str())
    );
    let at = |ip: &str| round_trip(Some(ns2.clone()), format!("{ip}:7000").parse().unwrap());
    assert!(at(&old).is_some());
    // A process that started before the move reads the new address: the file is rewritten
    // in place, under the mount `ip netns exec` made.
    let running = resolve_in(&ns2, &name, Duration::from_secs(1));

    let new = net.move_node(1).unwrap();
    assert_ne!(new, old);
    assert_eq!(net.node_ip(1), new);
    assert_eq!(net.name(1), name, "the name stays");
    assert_eq!(
        output(running).split_whitespace().next(),
        Some(new.as_str())
    );
    assert_eq!(
        output(resolve_in(&ns2, &name, Duration::ZERO))
            .split_whitespace()
            .next(),
        Some(new.as_str())
    );
    assert!(at(&new).is_some(), "reached at the new address");
    assert_eq!(at(&old), None, "nothing at the old one");
    // Another move gives yet another address; every node's stays its own.
    let third = net.move_node(1).unwrap();
    assert!(third != new && third != old && third != net.node_ip(2));

    stop.store(true, Ordering::Release);
    net.close();
    assert!(
        !std::path::Path::new("/etc/netns").join(&ns2).exists(),
        "the hosts files go with the namespaces"
    );
}
