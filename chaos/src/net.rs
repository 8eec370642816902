//! The network: one namespace per node, each with a veth link to a bridge on the host, where
//! the clients are (`10.<a>.<b>.0/24`: node `i` at `.i`, the host at `.254`). A partition is
//! made of blackhole routes inside the nodes' namespaces, so it cuts node-to-node traffic in
//! both directions (packets vanish; nothing is reset) and leaves the clients' links alone.
//! Needs root and iproute2.
//!
//! Nodes name each other, as a StatefulSet's pods do through the headless Service: node `i` is
//! `n<i>.<tag>` in a hosts file per namespace (`/etc/netns/<ns>/hosts`, which `ip netns exec`
//! mounts over `/etc/hosts` for the process it starts). [`Net::move_node`] gives a node a new
//! address (`.i+10`, `.i+20`, ...: a rescheduled pod's new IP) and rewrites every hosts file in
//! place, so the name stays and what it resolves to changes.
//!
//! The shapes of partition ([`Shape`]), as Jepsen names them, each drawn from the seed:
//!
//! ```text
//!  halves (5 nodes)       bridge (5 nodes)            ring (5 nodes)
//!  {a b c} ╳ {d e}        {a b} ── m ── {c d}         a ─ b ─ c ─ d ─ e ─ (a)
//!  majority | minority    m sees both halves;          each node sees its two
//!                         the halves see only m        neighbours only
//! ```

use crate::delay::Delayer;
use crate::rng::Rng;
use anyhow::{bail, Context};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The namespaces, links and bridge of one run; removed by [`Net::close`] (and on drop).
pub struct Net {
    tag: String,
    prefix: String,
    nodes: usize,
    /// Blackholed (from, to) node pairs now in place.
    cut: BTreeSet<(usize, usize)>,
    /// Nodes whose namespace holds the loss table now.
    lossy: BTreeSet<usize>,
    /// The packet delayers now running (one per node namespace).
    delayers: Vec<Delayer>,
    /// Each node's address now, as the last byte (node `i` at index `i - 1`).
    hosts: Vec<usize>,
    closed: bool,
}

/// The nft table of the `loss` nemesis, inside a node's namespace.
const LOSS_TABLE: &str = "roost_chaos";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    /// Builds the network for `nodes` nodes (ids 1..=nodes). `tag` names everything (short:
    /// interface names are at most 15 bytes) and picks the subnet.
    pub fn new(tag: &str, nodes: usize) -> anyhow::Result<Net> {
        let h = tag
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        let prefix = format!("10.{}.{}", 160 + h % 40, (h / 40) % 256);
        let net = Net {
            tag: tag.to_owned(),
            prefix,
            nodes,
            cut: BTreeSet::new(),
            lossy: BTreeSet::new(),
            delayers: Vec::new(),
            hosts: (1..=nodes).collect(),
            closed: false,
        };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.host_ip()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=nodes {
            let ns = net.ns(i);
            let (outer, inner) = (format!("{}h{i}", net.tag), format!("{}n{i}", net.tag));
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &br])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.node_ip(i)),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        }
        net.write_hosts()?;
        Ok(net)
    }

    /// Node `i`'s name, which every node resolves to its address now (see the module docs).
    pub fn name(&self, i: usize) -> String {
        format!("n{i}.{}", self.tag)
    }

    /// Node `i`'s hosts file, mounted over `/etc/hosts` by `ip netns exec`.
    fn hosts_file(&self, i: usize) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns")
            .join(self.ns(i))
            .join("hosts")
    }

    /// Writes every node's hosts file: loopback, then each node's name at its address now.
    /// Written in place (the same file, truncated), so a process that has it mounted reads
    /// the new contents.
    fn write_hosts(&self) -> anyhow::Result<()> {
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for i in 1..=self.nodes {
            text.push_str(&format!("{} {}\n", self.node_ip(i), self.name(i)));
        }
        for i in 1..=self.nodes {
            let file = self.hosts_file(i);
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(())
    }

    /// Gives node `i` its next address (`.i`, `.i+10`, ... `.i+240`, then `.i` again: no two
    /// nodes share one, as long as there are fewer than 10) and points its name at it in every
    /// namespace. Returns the new address. The node should not be running (a pod is
    /// rescheduled with a new IP), and no partition may be in place (its routes name the old
    /// address).
    pub fn move_node(&mut self, i: usize) -> anyhow::Result<String> {
        if !self.cut.is_empty() {
            bail!("moving node {i} while a partition is in place");
        }
        let (old, inner) = (self.node_ip(i), format!("{}n{i}", self.tag));
        let next = self.hosts[i - 1] + 10;
        self.hosts[i - 1] = if next > 250 { i } else { next };
        let new = self.node_ip(i);
        let ns = self.ns(i);
        ip(&[
            "-n",
            &ns,
            "addr",
            "del",
            &format!("{old}/24"),
            "dev",
            &inner,
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{new}/24"),
            "dev",
            &inner,
        ])?;
        self.write_hosts()?;
        Ok(new)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    /// Node `i`'s address now (it changes with [`Net::move_node`]).
    pub fn node_ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, self.hosts[i - 1])
    }

    /// The host's address on the bridge (where the clients are).
    pub fn host_ip(&self) -> String {
        format!("{}.254", self.prefix)
    }

    /// Cuts every node in `side` off from every node not in it (both directions).
    pub fn partition(&mut self, side: &[usize]) -> anyhow::Result<()> {
        let mut links = Vec::new();
        for a in 1..=self.nodes {
            for b in a + 1..=self.nodes {
                if side.contains(&a) != side.contains(&b) {
                    links.push((a, b));
                }
            }
        }
        self.cut_links(&links)
    }

    /// Cuts each link `(a, b)`, both directions.
    pub fn cut_links(&mut self, links: &[(usize, usize)]) -> anyhow::Result<()> {
        for &(a, b) in links {
            for (from, to) in [(a, b), (b, a)] {
                if from != to && self.cut.insert((from, to)) {
                    let dst = format!("{}/32", self.node_ip(to));
                    ip(&["-n", &self.ns(from), "route", "add", "blackhole", &dst])?;
                }
            }
        }
        Ok(())
    }

    /// The (from, to) node pairs cut now.
    pub fn cut(&self) -> Vec<(usize, usize)> {
        self.cut.iter().copied().collect()
    }

    /// The other nodes' addresses, as node `i` sends to them.
    fn peers(&self, i: usize) -> Vec<String> {
        (1..=self.nodes)
            .filter(|&j| j != i)
            .map(|j| self.node_ip(j))
            .collect()
    }

    /// Drops `percent` % of the packets every node sends to another node, at random (an nft
    /// table in each node's namespace: `numgen random mod 100 < percent drop` on output to
    /// the other nodes' addresses; the clients' traffic is not touched).
    pub fn loss(&mut self, percent: u32) -> anyhow::Result<()> {
        for i in 1..=self.nodes {
            let peers = self.peers(i);
            if peers.is_empty() || self.lossy.contains(&i) {
                continue;
            }
            // nft takes `< 100` as out of range for `mod 100`: all is all.
            let pick = if percent >= 100 {
                String::new()
            } else {
                format!("numgen random mod 100 < {percent} ")
            };
            let script = format!(
                "table inet {LOSS_TABLE} {{\n  chain out {{\n    type filter hook output priority 0; \
                 policy accept;\n    ip daddr {{ {} }} {pick}counter drop\n  }}\n}}\n",
                peers.join(", ")
            );
            nft(&self.ns(i), &script)?;
            self.lossy.insert(i);
        }
        Ok(())
    }

    /// Delays every packet a node sends to another node by `min..=max`, each its own time
    /// drawn from `rng`, which reorders them (see [`crate::delay`]).
    pub fn delay(&mut self, min: Duration, max: Duration, rng: &mut Rng) -> anyhow::Result<()> {
        if !self.delayers.is_empty() {
            return Ok(());
        }
        for i in 1..=self.nodes {
            let peers = self.peers(i);
            if peers.is_empty() {
                continue;
            }
            let d = Delayer::start(&self.ns(i), &peers, min, max, Rng::new(rng.next_u64()))?;
            self.delayers.push(d);
        }
        Ok(())
    }

    /// Ends every partition, loss and delay. Returns what the loss and delay did.
    pub fn heal(&mut self) -> anyhow::Result<Healed> {
        for (a, b) in std::mem::take(&mut self.cut) {
            let to = format!("{}/32", self.node_ip(b));
            ip(&["-n", &self.ns(a), "route", "del", "blackhole", &to])?;
        }
        let mut healed = Healed::default();
        for i in std::mem::take(&mut self.lossy) {
            healed.dropped += dropped(&self.ns(i));
            nft(&self.ns(i), &format!("delete table inet {LOSS_TABLE}\n"))?;
        }
        for mut d in std::mem::take(&mut self.delayers) {
            let s = d.stop()?;
            healed.delayed += s.delayed;
            healed.reordered += s.reordered;
        }
        Ok(healed)
    }

    /// Removes the namespaces, links and bridge.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        // The delayers first: their threads live in the namespaces about to go.
        for mut d in std::mem::take(&mut self.delayers) {
            let _ = d.stop();
        }
        for i in 1..=self.nodes {
            let _ = ip(&["link", "del", &format!("{}h{i}", self.tag)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
            if let Some(dir) = self.hosts_file(i).parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// What [`Net::heal`] ended had done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Healed {
    /// Packets the loss rules dropped.
    pub dropped: u64,
    /// Packets the delayers held.
    pub delayed: u64,
    /// Of them, those let go before one that came earlier.
    pub reordered: u64,
}

/// The loss rule's drop counter in namespace `ns` (0 when it cannot be read).
fn dropped(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "list", "table", "inet", LOSS_TABLE,
        ])
        .output();
    let Ok(out) = out else { return 0 };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    0
}

/// Runs an nft script inside namespace `ns`.
fn nft(ns: &str, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (is nftables installed?)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Drop for Net {
    fn drop(&mut self) {
        self.close();
    }
}

/// A partition's shape (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A majority and a minority (3|2 of 5, 3|1 of 4, 2|1 of 3; at least 3 nodes).
    Halves,
    /// Two halves that both see one node in the middle (at least 3 nodes).
    Bridge,
    /// Each node sees only its two neighbours on a ring (at least 4 nodes: with 3, everyone is
    /// a neighbour).
    Ring,
}

impl Shape {
    /// The fewest nodes the shape cuts anything in.
    pub fn min_nodes(self) -> usize {
        match self {
            Shape::Halves | Shape::Bridge => 3,
            Shape::Ring => 4,
        }
    }

    /// The links to cut among nodes `1..=n`, in an order drawn from `rng`, and the shape in
    /// words (for the nemesis log).
    pub fn draw(self, n: usize, rng: &mut crate::rng::Rng) -> (Vec<(usize, usize)>, String) {
        let order = shuffled(n, rng);
        let mut links = Vec::new();
        let linked = |links: &mut Vec<(usize, usize)>, a: &[usize], b: &[usize]| {
            for &x in a {
                for &y in b {
                    links.push((x.min(y), x.max(y)));
                }
            }
        };
        let what = match self {
            Shape::Halves => {
                let (minority, majority) = order.split_at((n - 1) / 2);
                linked(&mut links, minority, majority);
                format!("{majority:?} | {minority:?}")
            }
            Shape::Bridge => {
                let (middle, rest) = order.split_at(1.min(n));
                let (left, right) = rest.split_at(rest.len() / 2);
                linked(&mut links, left, right);
                format!("{left:?} - {middle:?} - {right:?}")
            }
            Shape::Ring => {
                for i in 0..n {
                    for j in i + 1..n {
                        let adjacent = j == i + 1 || (i == 0 && j == n - 1);
                        if !adjacent {
                            linked(&mut links, &order[i..=i], &order[j..=j]);
                        }
                    }
                }
                let names: Vec<String> = order.iter().map(|i| i.to_string()).collect();
                format!("{}-({})", names.join("-"), order[0])
            }
        };
        links.sort();
        (links, what)
    }
}

/// Nodes `1..=n` in an order drawn from `rng` (Fisher-Yates).
fn shuffled(n: usize, rng: &mut crate::rng::Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::Shape;
    use crate::rng::Rng;
    use std::collections::BTreeSet;

    /// Who node `a` still reaches directly.
    fn sees(n: usize, cut: &[(usize, usize)], a: usize) -> BTreeSet<usize> {
        (1..=n)
            .filter(|&b| b != a && !cut.contains(&(a.min(b), a.max(b))))
            .collect()
    }

    #[test]
    fn halves_leave_a_majority_and_a_minority() {
        for (n, minority) in [(5, 2), (3, 1), (4, 1)] {
            for seed in 0..20 {
                let (cut, _) = Shape::Halves.draw(n, &mut Rng::new(seed));
                let small: Vec<usize> = (1..=n)
                    .filter(|&a| sees(n, &cut, a).len() + 1 == minority)
                    .collect();
                assert_eq!(small.len(), minority, "n {n} seed {seed}: {cut:?}");
                assert_eq!(cut.len(), minority * (n - minority));
            }
        }
    }

    #[test]
    fn a_bridge_has_one_node_seeing_everyone_and_two_halves_seeing_it() {
        for seed in 0..20 {
            let (cut, what) = Shape::Bridge.draw(5, &mut Rng::new(seed));
            let middle: Vec<usize> = (1..=5).filter(|&a| sees(5, &cut, a).len() == 4).collect();
            assert_eq!(middle.len(), 1, "{what}");
            for a in (1..=5).filter(|a| *a != middle[0]) {
                assert_eq!(sees(5, &cut, a).len(), 2, "{what}: node {a}");
                assert!(sees(5, &cut, a).contains(&middle[0]));
            }
        }
    }

    #[test]
    fn a_ring_leaves_each_node_its_two_neighbours() {
        for n in [4, 5] {
            for seed in 0..20 {
                let (cut, what) = Shape::Ring.draw(n, &mut Rng::new(seed));
                for a in 1..=n {
                    assert_eq!(sees(n, &cut, a).len(), 2, "{what}: node {a}");
                }
            }
        }
    }
}
