//! The `roost` processes of a run: node `i` runs in its namespace (`ip netns exec`, which execs
//! the binary, so signals reach it, and mounts the namespace's hosts file), listens on every
//! address there, names itself and its peers by name (`n<i>.<tag>`, [`Net::name`]) as pods do,
//! and logs to `OUT/node-i.log`.

use crate::net::Net;
use anyhow::{bail, Context};
use rustix::process::Signal;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// MQTT, admin HTTP and cluster ports (every node has its own address).
pub const MQTT: u16 = 1883;
pub const HTTP: u16 = 8080;
const CLUSTER: u16 = 7946;

/// One node's process and where it keeps things.
pub struct NodeProc {
    pub id: usize,
    pub ns: String,
    /// Its address now (it changes when the node is moved: [`Nodes::moved`]).
    pub ip: String,
    /// Its name, which the nodes resolve (the address behind it may change).
    pub name: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// SIGSTOPped and not yet resumed.
    pub paused: bool,
}

impl NodeProc {
    /// Node `i` in its namespace of `net`, its data directory and log under `out`; not started.
    fn new(net: &Net, i: usize, out: &Path) -> NodeProc {
        NodeProc {
            id: i,
            ns: net.ns(i),
            ip: net.node_ip(i),
            name: net.name(i),
            data: out.join(format!("node-{i}")),
            log: out.join(format!("node-{i}.log")),
            child: None,
            paused: false,
        }
    }
}

/// The cluster's nodes.
pub struct Nodes {
    pub nodes: Vec<NodeProc>,
    binary: PathBuf,
    config: PathBuf,
    seeds: Vec<String>,
    token: String,
    /// `ROOST_FAILPOINTS` for the nodes (a binary built with the `testing` feature reads it).
    failpoints: Option<String>,
}

impl Nodes {
    /// Writes the config and starts every node (not waiting for them: see [`wait_ready`]).
    pub fn start(
        net: &Net,
        n: usize,
        binary: &Path,
        out: &Path,
        failpoints: Option<String>,
    ) -> anyhow::Result<Nodes> {
        let config = out.join("roost.toml");
        // Fast elections, as the interop suite uses; the default session lease.
        std::fs::write(
            &config,
            "[cluster]\nheartbeat_ms = 50\nelection_timeout_ms = 300\n\
             commit_timeout_ms = 2000\nforward_timeout_ms = 2000\n",
        )?;
        let seeds = (1..=n)
            .map(|i| format!("{i}@{}:{CLUSTER}", net.name(i)))
            .collect();
        let mut nodes = Nodes {
            nodes: Vec::new(),
            binary: binary.to_owned(),
            config,
            seeds,
            token: format!("roost-chaos-admin-{:08}", std::process::id()),
            failpoints,
        };
        for i in 1..=n {
            nodes.nodes.push(NodeProc::new(net, i, out));
            nodes.spawn(i)?;
        }
        Ok(nodes)
    }

    /// Adds node `net`'s namespace `i` as a spare, not started and not among the seeds (the
    /// `membership` nemesis starts it and joins it with `roost ctl`).
    pub fn add_spare(&mut self, net: &Net, i: usize, out: &Path) {
        self.nodes.push(NodeProc::new(net, i, out));
    }

    /// Starts node `i` as a new node: its data directory removed first (a node that left
    /// the cluster comes back as a new one).
    pub fn spawn_fresh(&mut self, i: usize) -> anyhow::Result<()> {
        let data = self.node(i).data.clone();
        match std::fs::remove_dir_all(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", data.display())),
        }
        self.spawn(i)
    }

    /// Runs `roost ctl --http ADMIN(via) ARGS...` with the admin token; bounded by `ctl`'s own
    /// `--timeout-secs`. Returns its output line, or why it failed.
    pub fn ctl(&self, via: usize, args: &[&str]) -> anyhow::Result<String> {
        let (http, _) = self.admin(via);
        let out = Command::new(&self.binary)
            .args(["ctl", "--http", &http, "--timeout-secs", "30"])
            .args(args)
            .env("ROOST_HTTP__TOKEN", &self.token)
            .env_remove("ROOST_HTTP__TOKEN_FILE")
            .output()
            .context("running roost ctl")?;
        if !out.status.success() {
            bail!(
                "roost ctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Node `i`'s cluster address (`ID@NAME:PORT`, as `roost ctl join` takes it) and MQTT
    /// address (`NAME:PORT`).
    pub fn member_spec(&self, i: usize) -> (String, String) {
        let name = &self.nodes[i - 1].name;
        (format!("{i}@{name}:{CLUSTER}"), format!("{name}:{MQTT}"))
    }

    /// Node `i` has a new address (after [`Net::move_node`]; it is not running).
    pub fn moved(&mut self, i: usize, ip: String) {
        self.node(i).ip = ip;
    }

    /// Whether node `i` is running (started and not stopped since; a paused node runs).
    pub fn running(&self, i: usize) -> bool {
        self.nodes[i - 1].child.is_some()
    }

    fn node(&mut self, i: usize) -> &mut NodeProc {
        &mut self.nodes[i - 1]
    }

    /// Starts node `i` (again, after a kill: it rejoins from its data directory).
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let (binary, config, seeds, token, failpoints) = (
            self.binary.clone(),
            self.config.clone(),
            self.seeds.clone(),
            self.token.clone(),
            self.failpoints.clone(),
        );
        let node = self.node(i);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        writeln!(log, "---- start ----")?;
        let mut cmd = Command::new("ip");
        // Listening on every address of the namespace, advertised by name: the address may
        // change between two starts, as a rescheduled pod's does.
        cmd.args(["netns", "exec", &node.ns])
            .arg(&binary)
            .args(["serve", "--node-id", &i.to_string()])
            .args(["--mqtt", &format!("0.0.0.0:{MQTT}")])
            .args(["--http", &format!("0.0.0.0:{HTTP}")])
            .args(["--cluster", &format!("0.0.0.0:{CLUSTER}")])
            .env(
                "ROOST_CLUSTER__ADVERTISE",
                format!("{}:{CLUSTER}", node.name),
            )
            .env("ROOST_MQTT__ADVERTISE", format!("{}:{MQTT}", node.name))
            .arg("--data-dir")
            .arg(&node.data)
            .arg("--config")
            .arg(&config);
        for s in &seeds {
            cmd.args(["--seed", s]);
        }
        match failpoints {
            Some(fp) => cmd.env("ROOST_FAILPOINTS", fp),
            None => cmd.env_remove("ROOST_FAILPOINTS"),
        };
        let child = cmd
            .env("ROOST_HTTP__TOKEN", token)
            // The nodes' log filter (their `log.level`): ROOST_CHAOS_NODE_LOG, default info.
            .env(
                "ROOST_LOG__LEVEL",
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

    /// SIGTERMs node `i` (what a rolling restart does to a pod) and waits for it to exit, at
    /// most `limit`, then SIGKILLs it. Returns whether it exited by itself.
    pub fn terminate(&mut self, i: usize, limit: Duration) -> bool {
        let node = self.node(i);
        let Some(mut c) = node.child.take() else {
            return true;
        };
        signal(&c, Signal::TERM);
        let deadline = Instant::now() + limit;
        let mut exited = false;
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            let _ = c.kill();
        }
        let _ = c.wait();
        node.paused = false;
        exited
    }

    /// Node `i`'s admin API address and the `authorization` header it wants.
    pub fn admin(&self, i: usize) -> (String, String) {
        (
            format!("{}:{HTTP}", self.nodes[i - 1].ip),
            format!("Bearer {}", self.token),
        )
    }

    /// SIGSTOPs (`true`) or SIGCONTs node `i`.
    pub fn pause(&mut self, i: usize, on: bool) {
        let node = self.node(i);
        if let Some(c) = &node.child {
            signal(c, if on { Signal::STOP } else { Signal::CONT });
            node.paused = on;
        }
    }

    /// The admin HTTP addresses of the nodes running now, with their ids (their addresses
    /// now: a moved node's new one).
    pub fn running_admin(&self) -> anyhow::Result<Vec<(usize, SocketAddr)>> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| Ok((n.id, format!("{}:{HTTP}", n.ip).parse()?)))
            .collect()
    }

    /// Stops every node (SIGCONT first, then SIGTERM, bounded, then SIGKILL).
    pub fn stop(&mut self) {
        for i in 1..=self.nodes.len() {
            self.pause(i, false);
        }
        for n in &mut self.nodes {
            if let Some(c) = &n.child {
                signal(c, Signal::TERM);
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

/// Sends `sig` to a node's process (it may have exited: then nothing happens).
fn signal(child: &Child, sig: Signal) {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Waits until every node of `admin` (id, admin address) says 200 on `/readyz` (probes need
/// no token).
pub async fn wait_ready(admin: Vec<(usize, SocketAddr)>, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    for (id, addr) in admin {
        loop {
            let r = roost_testkit::http_at(addr, "GET", "/readyz", None).await;
            if r.is_ok_and(|r| r.status == 200) {
                break;
            }
            if Instant::now() > deadline {
                bail!("node {id} not ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The leader (a node id from 1 to `n`) as the node behind `admin` sees it
/// (`GET /api/v1/cluster`); `None` when it does not answer or knows none.
pub async fn leader_seen_by((addr, auth): (String, String), n: usize) -> Option<usize> {
    let addr: SocketAddr = addr.parse().ok()?;
    let r = roost_testkit::http_with(
        addr,
        "GET",
        "/api/v1/cluster",
        None,
        &[("authorization", &auth)],
    )
    .await
    .ok()?;
    let id = r.json().get("leader_id")?.as_u64()?;
    usize::try_from(id).ok().filter(|id| (1..=n).contains(id))
}
