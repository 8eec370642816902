//! The `roost` processes of a run: node `i` runs in its namespace (`ip netns exec`, which execs
//! the binary, so signals reach it), listens on its address, and logs to `OUT/node-i.log`.

use crate::net::Net;
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// MQTT, admin HTTP and cluster ports (every node has its own address).
pub const MQTT: u16 = 1883;
const HTTP: u16 = 8080;
const CLUSTER: u16 = 7946;

/// One node's process and where it keeps things.
pub struct NodeProc {
    pub id: usize,
    pub ns: String,
    pub ip: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// SIGSTOPped and not yet resumed.
    pub paused: bool,
}

/// The cluster's nodes.
pub struct Nodes {
    pub nodes: Vec<NodeProc>,
    binary: PathBuf,
    config: PathBuf,
    seeds: Vec<String>,
    token: String,
}

impl Nodes {
    /// Writes the config and starts every node (not waiting for them: see [`Nodes::wait_ready`]).
    pub fn start(net: &Net, n: usize, binary: &Path, out: &Path) -> anyhow::Result<Nodes> {
        let config = out.join("roost.toml");
        // Fast elections, as the interop suite uses; the default session lease.
        std::fs::write(
            &config,
            "[cluster]\nheartbeat_ms = 50\nelection_timeout_ms = 300\n\
             commit_timeout_ms = 2000\nforward_timeout_ms = 2000\n",
        )?;
        let seeds = (1..=n)
            .map(|i| format!("{i}@{}:{CLUSTER}", net.node_ip(i)))
            .collect();
        let mut nodes = Nodes {
            nodes: Vec::new(),
            binary: binary.to_owned(),
            config,
            seeds,
            token: format!("roost-chaos-admin-{:08}", std::process::id()),
        };
        for i in 1..=n {
            nodes.nodes.push(NodeProc {
                id: i,
                ns: net.ns(i),
                ip: net.node_ip(i),
                data: out.join(format!("node-{i}")),
                log: out.join(format!("node-{i}.log")),
                child: None,
                paused: false,
            });
            nodes.spawn(i)?;
        }
        Ok(nodes)
    }

    fn node(&mut self, i: usize) -> &mut NodeProc {
        &mut self.nodes[i - 1]
    }

    /// Starts node `i` (again, after a kill: it rejoins from its data directory).
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let (binary, config, seeds, token) = (
            self.binary.clone(),
            self.config.clone(),
            self.seeds.clone(),
            self.token.clone(),
        );
        let node = self.node(i);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        writeln!(log, "---- start ----")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.ns])
            .arg(&binary)
            .args(["serve", "--node-id", &i.to_string()])
            .args(["--mqtt", &format!("{}:{MQTT}", node.ip)])
            .args(["--http", &format!("{}:{HTTP}", node.ip)])
            .args(["--cluster", &format!("{}:{CLUSTER}", node.ip)])
            .arg("--data-dir")
            .arg(&node.data)
            .arg("--config")
            .arg(&config);
        for s in &seeds {
            cmd.args(["--seed", s]);
        }
        let child = cmd
            .env("ROOST_HTTP__TOKEN", token)
            // The nodes' log filter: ROOST_CHAOS_NODE_LOG, default info.
            .env(
                "RUST_LOG",
                std::env::var("ROOST_CHAOS_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        let node = self.node(i);
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        node.paused = false;
    }

    /// SIGSTOPs (`true`) or SIGCONTs node `i`.
    pub fn pause(&mut self, i: usize, on: bool) {
        let node = self.node(i);
        if let Some(c) = &node.child {
            let sig = if on { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
            node.paused = on;
        }
    }

    /// Waits until every node's `/readyz` says 200.
    pub fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for n in &self.nodes {
            while !ready(&n.ip) {
                if Instant::now() > deadline {
                    bail!("node {} not ready within {limit:?}", n.id);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Stops every node (SIGCONT first, then SIGTERM, bounded, then SIGKILL).
    pub fn stop(&mut self) {
        for i in 1..=self.nodes.len() {
            self.pause(i, false);
        }
        for n in &mut self.nodes {
            if let Some(c) = &n.child {
                let _ = Command::new("kill").arg(c.id().to_string()).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                while Instant::now() < deadline {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET /readyz` on a node's admin listener answered 200 (probes need no token).
fn ready(ip: &str) -> bool {
    let Ok(addr) = format!("{ip}:{HTTP}").parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.1 200")
}
